//! Arbitrary bytes fed to the incremental framer in arbitrary chunk sizes
//! (taken from the input): never a panic, never more than msize buffered,
//! every frame handed out has a size field that matches its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoutvm_net::p9::{wire, FrameReader};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = chunk as usize % 64 + 1;
    let msize = 8192;
    let mut reader = FrameReader::new(msize);
    let mut rest = stream;
    'outer: while !rest.is_empty() {
        let n = reader.feed(&rest[..rest.len().min(chunk)]);
        rest = &rest[n..];
        assert!(reader.buffered() <= msize as usize);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    assert_eq!(wire::frame_len(&frame), Ok(Some(frame.len())));
                    assert!(frame.len() <= msize as usize);
                    let _ = wire::decode_request(&frame);
                }
                Ok(None) => {
                    if n == 0 {
                        // No room and no frame: only possible with a frame
                        // larger than msize, which next_frame reports.
                        unreachable!("framer stalled");
                    }
                    break;
                }
                Err(_) => break 'outer,
            }
        }
    }
});
