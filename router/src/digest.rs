//! SHA-256 and hex, in one place: certificate fingerprints (`spki:sha256:…`) and node-id
//! prefixes (`acl/identity.rs`), pre-shared token hashes (`[[acl.token]] sha256`, `hypha acl
//! token`), and the HTTP gateway's bearer-token digests (`http.tokens_sha256`).

/// The SHA-256 of `data` (ring's).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `bytes` as lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A SHA-256 written as 64 hex digits (either case); `None` for anything else.
pub(crate) fn sha256_from_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_its_hex_round_trip() {
        // FIPS 180-2's "abc".
        let h = sha256(b"abc");
        let text = to_hex(&h);
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_from_hex(&text), Some(h));
        assert_eq!(sha256_from_hex(&text.to_uppercase()), Some(h));
        assert_eq!(sha256_from_hex(&text[..62]), None);
        assert_eq!(sha256_from_hex(&format!("{text}00")), None);
        assert_eq!(sha256_from_hex(&text.replace('b', "g")), None);
        // A multi-byte character where a digit pair should be: an error, not a panic.
        assert_eq!(sha256_from_hex(&format!("é{}", &text[2..])), None);
    }
}
