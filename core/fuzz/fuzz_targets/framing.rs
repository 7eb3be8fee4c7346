//! Any line noise into the serial deframer, fed in pieces of any size: it never panics, and a
//! good frame sent after the noise (and a delimiter) is always recovered intact (resync).
#![no_main]
use hypha_core::framing::{Deframer, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cut, noise) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c).max(1), rest),
        None => (1, data),
    };
    let mut d = Deframer::new([0u8; 300]);
    let good = b"a good batch after the noise";
    let mut framed = [0u8; 400];
    let n = encode(good, &mut framed).expect("fits");
    let mut input = noise.to_vec();
    input.push(0); // the noise ends at a delimiter
    input.extend_from_slice(&framed[..n]);
    let mut recovered = false;
    for piece in input.chunks(cut) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (used, frame) = d.push(rest);
            if let Some(len) = frame {
                let f = d.frame(len);
                if f == good {
                    recovered = true;
                }
            }
            rest = &rest[used..];
        }
    }
    assert!(recovered, "the good frame after the noise was lost");
});
