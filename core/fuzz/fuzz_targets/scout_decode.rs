//! Any bytes: decoding a scouting message never panics and round-trips.
#![no_main]
use hypha_core::wire::ScoutMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ScoutMessage::decode(data) {
        let mut out = vec![0u8; data.len() + 16];
        let n = m.encode(&mut out).expect("re-encode");
        assert_eq!(ScoutMessage::decode(&out[..n]).expect("decode re-encoded"), m);
        let _ = m.locators().count();
    }
});
