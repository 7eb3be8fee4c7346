//! Key expressions on the device: validation of the device's own expressions and intersection
//! with what the std side sends, byte loops only (no `str` searchers, no recursion, O(1)
//! stack). Same language and answers as `hypha_core::keyexpr` (`tests.rs` checks both
//! against core's on random expressions); smaller because the device only ever needs
//! `intersects(own, received)`.
//!
//! The intersection runs the device's expression as an automaton over the received one's
//! chunks: a set (one bit per position, hence [`MAX_CHUNKS`]) of how many of the device's
//! chunks have been matched so far.

/// Most chunks of an expression the device subscribes to or answers queries on.
pub(crate) const MAX_CHUNKS: usize = 31;

/// Splits at `/`. `next` is `None` once the input is used up (an empty input has no chunk).
struct Chunks<'a> {
    rest: Option<&'a [u8]>,
}

fn chunks(s: &[u8]) -> Chunks<'_> {
    Chunks {
        rest: (!s.is_empty()).then_some(s),
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut i = 0;
        while let Some(&b) = s.get(i) {
            if b == b'/' {
                self.rest = s.get(i + 1..);
                return s.get(..i);
            }
            i += 1;
        }
        self.rest = None;
        Some(s)
    }
}

/// Whether `s` is a valid canonical key expression (`hypha_core::keyexpr::KeyExpr::new`'s
/// rules).
pub(crate) fn valid(s: &str) -> bool {
    let s = s.as_bytes();
    // A trailing `/` leaves no empty last chunk in `chunks`: check it here.
    if s.is_empty() || s.last() == Some(&b'/') {
        return false;
    }
    let mut previous_double = false;
    for c in chunks(s) {
        let (starry, double) = match c {
            b"*" => (true, false),
            b"**" => (true, true),
            _ => {
                let mut only_dollar_stars = true;
                let mut i = 0;
                while let Some(&b) = c.get(i) {
                    match b {
                        b'#' | b'?' | b'*' => return false,
                        b'$' => {
                            // `$` starts `$*`, and `$*$*` is not canonical.
                            if c.get(i + 1) != Some(&b'*') || c.get(i + 2) == Some(&b'$') {
                                return false;
                            }
                            i += 1;
                        }
                        _ => only_dollar_stars = false,
                    }
                    i += 1;
                }
                if c.is_empty() || only_dollar_stars {
                    return false;
                }
                (false, false)
            }
        };
        if previous_double && starry {
            return false;
        }
        previous_double = double;
    }
    true
}

/// Whether a valid expression has at most [`MAX_CHUNKS`] chunks.
pub(crate) fn short_enough(s: &str) -> bool {
    chunks(s.as_bytes()).count() <= MAX_CHUNKS
}

fn verbatim(c: &[u8]) -> bool {
    c.first() == Some(&b'@')
}

/// Whether `own` (valid, at most [`MAX_CHUNKS`] chunks) and `other` (any string: a key or an
/// expression from the wire) have a key in common.
pub(crate) fn intersects(own: &str, other: &str) -> bool {
    let (own, other) = (own.as_bytes(), other.as_bytes());
    if own == other {
        return true;
    }
    let mut set = closure(own, 1);
    for b in chunks(other) {
        let mut next = 0u32;
        for (i, a) in chunks(own).enumerate().take(MAX_CHUNKS) {
            let bit = 1u32 << i;
            if b == b"**" {
                // The other side's `**` stands for any run of non-verbatim chunks: from any
                // position held, this side may advance over its own non-verbatim chunks.
                next |= set & bit;
                if next & bit != 0 && !verbatim(a) {
                    next |= bit << 1;
                }
            } else if set & bit != 0 {
                if a == b"**" {
                    // This side's `**` takes the other's chunk and stays.
                    if !verbatim(b) {
                        next |= bit;
                    }
                } else if chunk_intersects(a, b) {
                    next |= bit << 1;
                }
            }
        }
        if b == b"**" {
            // The end position has no chunk of its own to visit above.
            next |= set & (1 << chunks(own).count().min(MAX_CHUNKS));
        }
        set = closure(own, next);
        if set == 0 {
            return false;
        }
    }
    let m = chunks(own).count();
    m <= MAX_CHUNKS && set & (1 << m) != 0
}

/// Adds, for each position at a `**`, the position after it (`**` matches zero chunks).
fn closure(own: &[u8], mut set: u32) -> u32 {
    for (i, a) in chunks(own).enumerate().take(MAX_CHUNKS) {
        if a == b"**" && set & (1 << i) != 0 {
            set |= 1 << (i + 1);
        }
    }
    set
}

fn has_dsl(c: &[u8]) -> bool {
    c.contains(&b'$')
}

/// Whether two single chunks (neither `**`) have a common value.
fn chunk_intersects(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    if verbatim(a) || verbatim(b) {
        return false;
    }
    if a == b"*" || b == b"*" {
        return true;
    }
    match (has_dsl(a), has_dsl(b)) {
        (false, false) => false,
        (true, false) => glob(a, b),
        (false, true) => glob(b, a),
        // Both have `$*`: a common value exists iff the literal heads are prefix-compatible
        // and the literal tails suffix-compatible.
        (true, true) => {
            let (ha, hb) = (head(a), head(b));
            let (ta, tb) = (tail(a), tail(b));
            (ha.starts_with(hb) || hb.starts_with(ha)) && (ta.ends_with(tb) || tb.ends_with(ta))
        }
    }
}

/// What comes before the first `$*`.
fn head(c: &[u8]) -> &[u8] {
    let n = c.iter().position(|&x| x == b'$').unwrap_or(c.len());
    c.get(..n).unwrap_or(c)
}

/// What comes after the last `$*`.
fn tail(c: &[u8]) -> &[u8] {
    let n = c.iter().rposition(|&x| x == b'$').map_or(0, |p| p + 2);
    c.get(n..).unwrap_or(&[])
}

/// Whether the chunk pattern `p` (with `$*`s) matches the literal chunk `t`: the classic
/// wildcard match, going back to the last `$*` on a mismatch.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = t.get(j) {
        match p.get(i) {
            Some(b'$') => {
                i += 2;
                star = Some((i, j));
            }
            Some(&x) if x == c => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    while p.get(i) == Some(&b'$') {
        i += 2;
    }
    i >= p.len()
}
