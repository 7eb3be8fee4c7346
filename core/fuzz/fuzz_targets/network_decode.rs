//! Any bytes: decoding network messages never panics; each decoded message re-encodes and
//! decodes to itself.
#![no_main]
use hypha_core::wire::{Messages, NetworkMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in Messages::new(data) {
        let Ok(m) = m else { break };
        let mut out = vec![0u8; data.len() + 64];
        let n = m.encode(&mut out).expect("re-encode");
        assert_eq!(NetworkMessage::decode(&out[..n]).expect("decode re-encoded"), m);
        let n = m.encode_last(&mut out).expect("re-encode last");
        assert_eq!(NetworkMessage::decode(&out[..n]).expect("decode tail form"), m);
    }
});
