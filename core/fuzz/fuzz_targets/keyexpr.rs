//! Any text: validation and canonization never panic; canon forms validate and are fixed points;
//! intersects is symmetric and implied by includes.
#![no_main]
use hypha_core::keyexpr::{KeyExpr, canonize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (a, b) = s.split_once('|').unwrap_or((s, "a/b"));
    let _ = KeyExpr::new(a);
    if let Ok(c) = canonize(a) {
        let k = KeyExpr::new(&c).expect("canon form validates");
        assert_eq!(canonize(&c).expect("idempotent"), c);
        if let Ok(cb) = canonize(b) {
            let kb = KeyExpr::new(&cb).expect("canon form validates");
            assert_eq!(k.intersects(&kb), kb.intersects(&k));
            if k.includes(&kb) {
                assert!(k.intersects(&kb));
            }
        }
    }
});
