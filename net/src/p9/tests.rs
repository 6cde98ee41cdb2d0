//! Codec and framing tests: known byte layouts, round trips of every
//! message, random and mutated input (never a panic, always a typed error),
//! and framing of split, merged and oversized streams.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::frame::FrameReader;
use super::wire::*;

fn t_encode(tag: u16, msg: &Tmsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let len = msg.encode(tag, &mut out).expect("encodable");
    assert_eq!(len, out.len());
    out
}

fn r_encode(tag: u16, msg: &Rmsg<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let len = msg.encode(tag, &mut out).expect("encodable");
    assert_eq!(len, out.len());
    out
}

// ---------------------------------------------------------------------------
// Known layouts, written out by hand from the protocol description.

#[test]
fn tversion_bytes() {
    let frame = t_encode(
        NOTAG,
        &Tmsg::Version {
            msize: 524288,
            version: VERSION_9P2000_L,
        },
    );
    let want: &[u8] = &[
        21, 0, 0, 0,   // size
        100, // Tversion
        0xff, 0xff, // NOTAG
        0x00, 0x00, 0x08, 0x00, // msize 512 KiB
        8, 0, b'9', b'P', b'2', b'0', b'0', b'0', b'.', b'L',
    ];
    assert_eq!(frame, want);
}

#[test]
fn twalk_and_rwalk_bytes() {
    let frame = t_encode(
        3,
        &Tmsg::Walk {
            fid: 1,
            newfid: 2,
            wnames: vec![b"a", b"bc"],
        },
    );
    let want: &[u8] = &[
        24, 0, 0, 0, 110, 3, 0, // header
        1, 0, 0, 0, 2, 0, 0, 0, // fid newfid
        2, 0, 1, 0, b'a', 2, 0, b'b', b'c',
    ];
    assert_eq!(frame, want);
    let frame = r_encode(
        3,
        &Rmsg::Walk {
            qids: vec![Qid {
                ty: QidType::DIR,
                version: 0x0403_0201,
                path: 0x0c0b_0a09_0807_0605,
            }],
        },
    );
    let want: &[u8] = &[
        22, 0, 0, 0, 111, 3, 0, 1, 0, // one qid
        0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    assert_eq!(frame, want);
}

#[test]
fn rlerror_and_empty_replies() {
    let frame = r_encode(9, &Rmsg::lerror(scoutvm_fs::errno::Errno::ENOENT));
    assert_eq!(frame, [11, 0, 0, 0, 7, 9, 0, 2, 0, 0, 0]);
    assert_eq!(r_encode(9, &Rmsg::Clunk {}), [7, 0, 0, 0, 121, 9, 0]);
}

#[test]
fn fixed_sizes_match_linux() {
    // Rgetattr: valid[8] qid[13] mode uid gid [4 each] then 15 u64 fields.
    let getattr = Rmsg::arbitrary_of(25, &mut Gen::new(&[])).unwrap();
    assert_eq!(getattr.encoded_len(), HEADER_LEN + 8 + 13 + 12 + 15 * 8);
    // Tsetattr: fid valid mode uid gid [4 each] then size and 4 time fields.
    let setattr = Tmsg::arbitrary_of(26, &mut Gen::new(&[])).unwrap();
    assert_eq!(setattr.encoded_len(), HEADER_LEN + 20 + 5 * 8);
    // Rstatfs: type bsize, six u64, namelen.
    let statfs = Rmsg::arbitrary_of(9, &mut Gen::new(&[])).unwrap();
    assert_eq!(statfs.encoded_len(), HEADER_LEN + 8 + 6 * 8 + 4);
    // Tlock: fid type flags start length proc_id client_id.
    let lock = Tmsg::Lock {
        fid: 1,
        ty: LockType::Write,
        flags: LOCK_FLAGS_BLOCK,
        start: 0,
        length: 0,
        proc_id: 42,
        client_id: b"guest",
    };
    assert_eq!(
        lock.encoded_len(),
        HEADER_LEN + 4 + 1 + 4 + 8 + 8 + 4 + 2 + 5
    );
    // Read/write headers are what Linux subtracts from msize for iounit.
    let read = Rmsg::Read { data: Data(&[]) };
    assert!(read.encoded_len() <= IOHDRSZ as usize);
    let write = Tmsg::Write {
        fid: 0,
        offset: 0,
        data: Data(&[]),
    };
    assert!(write.encoded_len() <= IOHDRSZ as usize);
}

#[test]
fn every_linux_message_type_is_known() {
    let t: &[u8] = &[
        100, 102, 104, 108, 110, 116, 118, 120, 122, 8, 12, 14, 16, 18, 20, 22, 24, 26, 30, 32, 40,
        50, 52, 54, 70, 72, 74, 76,
    ];
    let mut codes = Tmsg::TYPE_CODES.to_vec();
    codes.sort_unstable();
    let mut want = t.to_vec();
    want.sort_unstable();
    assert_eq!(codes, want);
    // Every request has its reply one code up, plus Rlerror.
    let mut r: Vec<u8> = t.iter().map(|c| c + 1).collect();
    r.push(7);
    r.sort_unstable();
    let mut codes = Rmsg::TYPE_CODES.to_vec();
    codes.sort_unstable();
    assert_eq!(codes, r);
    for &c in Tmsg::TYPE_CODES.iter().chain(Rmsg::TYPE_CODES) {
        assert_ne!(type_name(c), "unknown message");
    }
}

#[test]
fn bit_sets_and_qid_types() {
    assert!(GetattrMask::BASIC.contains(GetattrMask::MODE | GetattrMask::BLOCKS));
    assert!(!GetattrMask::BASIC.contains(GetattrMask::BTIME));
    assert!(GetattrMask::ALL.contains(GetattrMask::DATA_VERSION));
    assert!(SetattrValid(0x90).contains(SetattrValid::ATIME | SetattrValid::ATIME_SET));
    assert_eq!(
        format!("{:?}", SetattrValid(0x9)),
        "SetattrValid(0x9 MODE SIZE)"
    );
    assert_eq!(QidType::of_mode(0o040755), QidType::DIR);
    assert_eq!(QidType::of_mode(0o120777), QidType::SYMLINK);
    assert_eq!(QidType::of_mode(0o100644), QidType::FILE);
}

// ---------------------------------------------------------------------------
// Decode errors.

#[test]
fn short_and_bad_frames_are_typed_errors() {
    assert_eq!(
        decode(&[1, 0]),
        Err(DecodeError::Incomplete { have: 2, need: 7 })
    );
    assert_eq!(
        decode(&[6, 0, 0, 0, 100, 0, 0]),
        Err(DecodeError::BadSize { size: 6 })
    );
    assert_eq!(
        decode(&[11, 0, 0, 0, 120, 1, 0, 5]),
        Err(DecodeError::Incomplete { have: 8, need: 11 })
    );
    // Tclunk with a 2-byte fid.
    let err = decode(&[9, 0, 0, 0, 120, 1, 0, 5, 0]).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::Malformed {
            ty: 120,
            tag: 1,
            ..
        }
    ));
    assert_eq!(err.tag(), Some(1));
    assert_eq!(err.reply_errno(), Some(scoutvm_fs::errno::Errno::EPROTO));
    // Tclunk with trailing bytes.
    let err = decode(&[12, 0, 0, 0, 120, 1, 0, 5, 0, 0, 0, 9]).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { ty: 120, .. }));
    // Unknown type (legacy Tstat of 9P2000).
    let err = decode(&[11, 0, 0, 0, 124, 4, 0, 5, 0, 0, 0]).unwrap_err();
    assert_eq!(err, DecodeError::UnknownType { ty: 124, tag: 4 });
    assert_eq!(
        err.reply_errno(),
        Some(scoutvm_fs::errno::Errno::EOPNOTSUPP)
    );
    // A string longer than the frame.
    let mut f = t_encode(
        1,
        &Tmsg::Mkdir {
            dfid: 1,
            name: b"abc",
            mode: 0o755,
            gid: 0,
        },
    );
    f[HEADER_LEN + 4] = 200;
    assert!(matches!(
        decode(&f),
        Err(DecodeError::Malformed { ty: 72, .. })
    ));
    // Seventeen walk names.
    let mut f = vec![0, 0, 0, 0, 110, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 17, 0];
    for _ in 0..17 {
        f.extend_from_slice(&[1, 0, b'x']);
    }
    let len = f.len() as u32;
    f[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        decode(&f),
        Err(DecodeError::Malformed { ty: 110, .. })
    ));
    // Lock type out of range.
    let mut f = t_encode(
        1,
        &Tmsg::Getlock {
            fid: 1,
            ty: LockType::Read,
            start: 0,
            length: 0,
            proc_id: 1,
            client_id: b"",
        },
    );
    f[HEADER_LEN + 4] = 3;
    assert!(matches!(
        decode(&f),
        Err(DecodeError::Malformed { ty: 54, .. })
    ));
}

#[test]
fn direction_is_checked() {
    let f = r_encode(5, &Rmsg::Flush {});
    assert_eq!(
        decode_request(&f),
        Err(DecodeError::WrongDirection { ty: 109, tag: 5 })
    );
    assert_eq!(decode_reply(&f), Ok((5, Rmsg::Flush {})));
    let f = t_encode(5, &Tmsg::Flush { oldtag: 4 });
    assert!(decode_reply(&f).is_err());
    // decode_request wants exactly one frame.
    let mut two = f.clone();
    two.extend_from_slice(&f);
    assert!(matches!(
        decode_request(&two),
        Err(DecodeError::Malformed { ty: 108, .. })
    ));
}

#[test]
fn encode_errors() {
    let long = vec![b'x'; 70_000];
    let mut out = Vec::new();
    assert_eq!(
        Tmsg::Readlink { fid: 1 }.encode(0, &mut out).map(|_| ()),
        Ok(())
    );
    let before = out.len();
    assert_eq!(
        Rmsg::Readlink { target: &long }.encode(0, &mut out),
        Err(EncodeError::StringTooLong { len: 70_000 })
    );
    let names: Vec<&[u8]> = (0..17).map(|_| &b"n"[..]).collect();
    assert_eq!(
        Tmsg::Walk {
            fid: 0,
            newfid: 1,
            wnames: names
        }
        .encode(0, &mut out),
        Err(EncodeError::TooManyWalkElements { count: 17 })
    );
    // A failed encode appends nothing.
    assert_eq!(out.len(), before);
}

// ---------------------------------------------------------------------------
// Payload helpers and readdir entries.

#[test]
fn in_place_payloads_match_plain_encoding() {
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut a = Vec::new();
    encode_rread_with(77, &mut a, |out| out.extend_from_slice(&data)).unwrap();
    assert_eq!(a, r_encode(77, &Rmsg::Read { data: Data(&data) }));
    let mut b = vec![1, 2, 3];
    encode_rreaddir_with(78, &mut b, |_| {}).unwrap();
    assert_eq!(&b[3..], r_encode(78, &Rmsg::Readdir { data: Data(&[]) }));
}

#[test]
fn dirents_round_trip_and_truncation() {
    let names: [&[u8]; 3] = [b".", b"..", b"a file"];
    let mut payload = Vec::new();
    let mut want = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let d = Dirent {
            qid: Qid {
                ty: QidType::FILE,
                version: i as u32,
                path: 100 + i as u64,
            },
            offset: i as u64 + 1,
            ty: 8,
            name,
        };
        let before = payload.len();
        d.encode(&mut payload).unwrap();
        assert_eq!(payload.len() - before, d.encoded_len());
        want.push(d);
    }
    let got: Result<Vec<_>, _> = Dirents::new(&payload).collect();
    assert_eq!(got.unwrap(), want);
    let cut = &payload[..payload.len() - 1];
    let got: Vec<_> = Dirents::new(cut).collect();
    assert_eq!(got.len(), 3);
    assert!(got[2].is_err());
}

// ---------------------------------------------------------------------------
// Property tests.

/// Every message of both directions, fields drawn from random bytes.
fn arb_frame() -> impl Strategy<Value = (u8, u16, Vec<u8>)> {
    let codes: Vec<u8> = Tmsg::TYPE_CODES
        .iter()
        .chain(Rmsg::TYPE_CODES)
        .copied()
        .collect();
    (
        proptest::sample::select(codes),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
}

fn build(code: u8, seed: &[u8]) -> Msg<'_> {
    let mut g = Gen::new(seed);
    match Tmsg::arbitrary_of(code, &mut g) {
        Some(t) => Msg::T(t),
        None => Msg::R(Rmsg::arbitrary_of(code, &mut g).expect("known code")),
    }
}

#[test]
fn every_message_round_trips_once() {
    let seed: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
    for &code in Tmsg::TYPE_CODES.iter().chain(Rmsg::TYPE_CODES) {
        let call = Fcall {
            tag: code as u16,
            msg: build(code, &seed),
        };
        let mut out = Vec::new();
        encode(&call, &mut out).unwrap();
        assert_eq!(out[4], code);
        assert_eq!(decode(&out), Ok((call, out.len())), "{}", type_name(code));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip((code, tag, seed) in arb_frame()) {
        let call = Fcall { tag, msg: build(code, &seed) };
        let mut out = vec![0xAA; 3]; // encode appends
        let len = encode(&call, &mut out).unwrap();
        prop_assert_eq!(len, out.len() - 3);
        prop_assert_eq!(len, call.msg.encoded_len());
        let (back, used) = decode(&out[3..]).unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!(&back, &call);
        // Every strict prefix is incomplete, never an error or a panic.
        for cut in [0, 1, 4, 6, 7, len / 2, len - 1] {
            if cut < len {
                let incomplete = matches!(decode(&out[3..3 + cut]), Err(DecodeError::Incomplete { .. }));
                prop_assert!(incomplete);
            }
        }
    }

    /// Random bytes: never a panic; whatever decodes re-encodes to the same
    /// bytes (the codec is canonical).
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), ty in any::<u8>()) {
        let mut f = bytes.clone();
        // Half the time give it a plausible header.
        if f.len() >= HEADER_LEN && ty & 1 == 0 {
            let len = f.len() as u32;
            f[..4].copy_from_slice(&len.to_le_bytes());
            f[4] = ty;
        }
        check_decode(&f)?;
    }

    /// Valid frames with bytes flipped, truncated or extended.
    #[test]
    fn mutated_frames_never_panic(
        (code, tag, seed) in arb_frame(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        fix_size in any::<bool>(),
    ) {
        let call = Fcall { tag, msg: build(code, &seed) };
        let mut f = Vec::new();
        encode(&call, &mut f).unwrap();
        for (at, v) in flips {
            let at = at % f.len();
            f[at] ^= v;
        }
        if cut % 3 == 0 {
            f.truncate(cut % (f.len() + 1));
        }
        if fix_size && f.len() >= 4 {
            let len = f.len() as u32;
            f[..4].copy_from_slice(&len.to_le_bytes());
        }
        check_decode(&f)?;
    }

    #[test]
    fn dirents_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut total = 0;
        for d in Dirents::new(&bytes) {
            match d {
                Ok(d) => {
                    let mut out = Vec::new();
                    d.encode(&mut out).unwrap();
                    prop_assert_eq!(&out[..], &bytes[total..total + out.len()]);
                    total += out.len();
                }
                Err(DecodeError::BadDirent { offset }) => prop_assert_eq!(offset, total),
                Err(e) => prop_assert!(false, "unexpected {:?}", e),
            }
        }
    }

    /// A stream of frames cut at random points comes out whole and in order.
    #[test]
    fn framing_split_and_merged(
        frames in proptest::collection::vec(arb_frame(), 1..12),
        cuts in proptest::collection::vec(1usize..700, 1..40),
    ) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (code, tag, seed) in &frames {
            let start = stream.len();
            encode(&Fcall { tag: *tag, msg: build(*code, seed) }, &mut stream).unwrap();
            want.push(stream[start..].to_vec());
        }
        let mut reader = FrameReader::new(MSIZE_MAX);
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < stream.len() {
            let end = (pos + cut.next().unwrap()).min(stream.len());
            let mut chunk = &stream[pos..end];
            while !chunk.is_empty() {
                let n = reader.feed(chunk);
                chunk = &chunk[n..];
                while let Some(f) = reader.next_frame().unwrap() {
                    got.push(f);
                }
            }
            pos = end;
        }
        prop_assert_eq!(reader.buffered(), 0);
        prop_assert_eq!(got, want);
    }
}

fn check_decode(f: &[u8]) -> Result<(), TestCaseError> {
    match decode(f) {
        Ok((call, used)) => {
            prop_assert!(used <= f.len());
            let mut out = Vec::new();
            encode(&call, &mut out).unwrap();
            prop_assert_eq!(&out[..], &f[..used]);
        }
        Err(DecodeError::Incomplete { have, need }) => {
            prop_assert_eq!(have, f.len());
            prop_assert!(need > have);
        }
        Err(DecodeError::BadSize { size }) => prop_assert!((size as usize) < HEADER_LEN),
        Err(e @ (DecodeError::UnknownType { .. } | DecodeError::Malformed { .. })) => {
            prop_assert_eq!(e.tag(), Some(u16::from_le_bytes([f[5], f[6]])));
            prop_assert!(e.reply_errno().is_some());
        }
        Err(e) => prop_assert!(false, "decode gave {:?}", e),
    }
    // The framer agrees with decode on where the frame ends.
    let mut reader = FrameReader::new(MSIZE_MAX);
    reader.feed(f);
    match reader.next_frame() {
        Ok(Some(frame)) => prop_assert_eq!(frame_len(f), Ok(Some(frame.len()))),
        Ok(None) => {
            let short =
                matches!(frame_len(f), Ok(None)) || frame_len(f).unwrap().unwrap() > f.len();
            prop_assert!(short);
        }
        Err(e) => {
            let framing = matches!(e, DecodeError::BadSize { .. } | DecodeError::TooBig { .. });
            prop_assert!(framing, "framer gave {:?}", e);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Framing limits.

#[test]
fn framing_rejects_oversized_and_undersized() {
    let mut reader = FrameReader::new(4096);
    reader.feed(&[0x01, 0x10, 0, 0, 118, 0, 0]); // 4097 bytes announced
    assert_eq!(
        reader.next_frame(),
        Err(DecodeError::TooBig {
            size: 4097,
            max: 4096
        })
    );
    // The stream stays failed.
    assert!(reader.next_frame().is_err());

    let mut reader = FrameReader::new(4096);
    reader.feed(&[3, 0, 0, 0]);
    assert_eq!(reader.next_frame(), Err(DecodeError::BadSize { size: 3 }));

    // A frame of exactly msize is fine; msize can shrink after Tversion.
    let mut reader = FrameReader::new(MSIZE_MAX);
    let payload = vec![7u8; 4096 - 23];
    let mut f = Vec::new();
    Tmsg::Write {
        fid: 1,
        offset: 0,
        data: Data(&payload),
    }
    .encode(1, &mut f)
    .unwrap();
    assert_eq!(f.len(), 4096);
    reader.set_msize(4096);
    assert_eq!(reader.feed(&f), 4096);
    assert_eq!(reader.next_frame().unwrap().unwrap(), f);
}

#[test]
fn framing_is_bounded_by_msize() {
    let mut reader = FrameReader::new(64);
    let junk = [0u8; 200];
    // Frames that are all zeros have size 0: an error, but feeding itself
    // never takes more than msize.
    assert_eq!(reader.feed(&junk), 64);
    assert_eq!(reader.room(), 0);
    assert_eq!(reader.feed(&junk), 0);

    // Back-pressure: a reader full of complete frames frees room as they
    // are taken.
    let mut reader = FrameReader::new(64);
    let clunk = t_encode(1, &Tmsg::Clunk { fid: 9 });
    let stream: Vec<u8> = clunk.iter().copied().cycle().take(11 * 20).collect();
    let mut fed = 0;
    let mut frames = 0;
    while fed < stream.len() {
        fed += reader.feed(&stream[fed..]);
        assert!(reader.buffered() <= 64);
        while let Some(f) = reader.next_frame().unwrap() {
            assert_eq!(f, clunk);
            frames += 1;
        }
    }
    assert_eq!(frames, 20);
}

#[test]
fn large_msize_frames() {
    // 1 MiB msize: a full-size write and read reply pass through.
    let msize = MSIZE_MAX;
    let data: Vec<u8> = (0..msize - IOHDRSZ).map(|i| (i % 251) as u8).collect();
    let f = t_encode(
        2,
        &Tmsg::Write {
            fid: 3,
            offset: 1 << 40,
            data: Data(&data),
        },
    );
    assert!(f.len() <= msize as usize);
    let mut reader = FrameReader::new(msize);
    let mut fed = 0;
    let mut got = None;
    while fed < f.len() {
        fed += reader.feed(&f[fed..(fed + 65536).min(f.len())]);
        if let Some(frame) = reader.next_frame().unwrap() {
            got = Some(frame);
        }
    }
    let frame = got.expect("frame");
    match decode_request(&frame).unwrap() {
        (
            2,
            Tmsg::Write {
                fid: 3,
                offset,
                data: d,
            },
        ) => {
            assert_eq!(offset, 1 << 40);
            assert_eq!(&*d, &data[..]);
            // Zero copy: the payload points into the frame.
            let base = frame.as_ptr() as usize;
            let p = d.as_ptr() as usize;
            assert!(p >= base && p < base + frame.len());
        }
        other => panic!("decoded {other:?}"),
    }
}
