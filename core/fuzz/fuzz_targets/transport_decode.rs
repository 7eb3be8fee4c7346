//! Any bytes: decoding a batch never panics, and what decodes re-encodes to the same bytes.
#![no_main]
use hypha_core::wire::TransportMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = TransportMessage::decode(data) {
        let mut out = vec![0u8; data.len() + 16];
        let n = m.encode(&mut out).expect("re-encode");
        // Varints are canonical in the encoder, so compare by decoding both.
        let again = TransportMessage::decode(&out[..n]).expect("decode re-encoded");
        assert_eq!(again, m);
        if let TransportMessage::Frame(f) = m {
            for msg in f.messages() {
                if msg.is_err() {
                    break;
                }
            }
        }
    }
});
