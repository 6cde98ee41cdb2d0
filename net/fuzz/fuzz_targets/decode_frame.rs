//! Arbitrary bytes into the frame decoder: never a panic; whatever decodes
//! re-encodes to exactly the bytes it came from; readdir payloads decode or
//! fail cleanly too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoutvm_net::p9::wire::{self, DecodeError, Dirents, Msg, Rmsg};

fuzz_target!(|data: &[u8]| {
    match wire::decode(data) {
        Ok((call, used)) => {
            assert!(used <= data.len());
            let mut out = Vec::new();
            wire::encode(&call, &mut out).expect("a decoded message encodes");
            assert_eq!(&out[..], &data[..used], "decode/encode is not canonical");
            if let Msg::R(Rmsg::Readdir { data: payload }) = &call.msg {
                for entry in Dirents::new(payload) {
                    if entry.is_err() {
                        break;
                    }
                }
            }
        }
        Err(DecodeError::Incomplete { have, need }) => assert!(have == data.len() && need > have),
        Err(e) => {
            // Errors that carry a tag came from a well-framed message.
            if e.tag().is_some() {
                assert!(e.reply_errno().is_some());
            }
        }
    }
});
