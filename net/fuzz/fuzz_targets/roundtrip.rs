//! Structured fuzzing: the first byte picks a message type, the rest fills
//! its fields; encode then decode must give the same message back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoutvm_net::p9::wire::{self, Fcall, Gen, Msg, Rmsg, Tmsg};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let codes: Vec<u8> = Tmsg::TYPE_CODES.iter().chain(Rmsg::TYPE_CODES).copied().collect();
    let code = codes[pick as usize % codes.len()];
    let mut g = Gen::new(rest);
    let msg = match Tmsg::arbitrary_of(code, &mut g) {
        Some(t) => Msg::T(t),
        None => Msg::R(Rmsg::arbitrary_of(code, &mut g).expect("known code")),
    };
    let call = Fcall { tag: code as u16, msg };
    let mut out = Vec::new();
    let len = wire::encode(&call, &mut out).expect("generated messages encode");
    assert_eq!(len, out.len());
    let (back, used) = wire::decode(&out).expect("encoded messages decode");
    assert_eq!(used, len);
    assert_eq!(back, call);
});
