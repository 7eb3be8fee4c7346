//! The node core (`net::Node`) fed a neighbour's network messages from arbitrary bytes, after
//! the face is up, as a link's reader hands them on (`hypha::fuzz::node_input`): it never
//! panics, and when the faces go nothing of theirs stays behind.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hypha::fuzz::node_input(data);
});
