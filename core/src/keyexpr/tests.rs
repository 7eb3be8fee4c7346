//! Tests for key expressions and `KeTree`.
//!
//! Besides tables, everything is checked against reference implementations written here
//! independently of the module: a naive recursive matcher for concrete keys, and naive
//! backtracking versions of `intersects` and `includes` whose chunk-level relations are decided
//! by brute force over a small universe of chunks.

extern crate std;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use proptest::prelude::*;

use super::*;

fn ke(s: &str) -> KeyExpr<'_> {
    match KeyExpr::new(s) {
        Ok(k) => k,
        Err(e) => panic!("{s:?} should be valid: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reference implementations
// ---------------------------------------------------------------------------------------------

/// `$*`-glob over bytes, by plain recursion.
fn ref_glob(p: &[u8], t: &[u8]) -> bool {
    if let Some(rest) = p.strip_prefix(b"$*") {
        return ref_glob(rest, t) || (!t.is_empty() && ref_glob(p, &t[1..]));
    }
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => ref_glob(&p[1..], &t[1..]),
        _ => false,
    }
}

/// Does pattern chunk `p` (not `**`) match concrete chunk `k`?
fn ref_chunk_match(p: &str, k: &str) -> bool {
    if p.starts_with('@') || k.starts_with('@') {
        return p == k;
    }
    p == "*" || ref_glob(p.as_bytes(), k.as_bytes())
}

/// Does pattern `p` (any valid expression, canonical or not) match concrete key `k`?
fn ref_match(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"**", prest)) => {
            ref_match(prest, k)
                || matches!(k.split_first(), Some((k0, krest)) if !k0.starts_with('@') && ref_match(p, krest))
        }
        Some((p0, prest)) => match k.split_first() {
            Some((k0, krest)) => ref_chunk_match(p0, k0) && ref_match(prest, krest),
            None => false,
        },
    }
}

fn split(s: &str) -> Vec<&str> {
    s.split('/').collect()
}

fn ref_match_str(p: &str, k: &str) -> bool {
    ref_match(&split(p), &split(k))
}

/// Every string of 1 to `max_len` characters from `letters`.
fn strings_over(letters: &[char], max_len: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut layer = vec![String::new()];
    for _ in 0..max_len {
        let mut next = Vec::new();
        for prefix in &layer {
            for l in letters {
                next.push(format!("{prefix}{l}"));
            }
        }
        out.extend(next.iter().cloned());
        layer = next;
    }
    out
}

/// Chunk-level relations decided by brute force over a finite universe of concrete chunks.
struct Reference {
    universe: Vec<String>,
    /// Memo of chunk-level answers: `(p, q, is_inclusion) -> answer`.
    memo: RefCell<HashMap<(String, String, bool), bool>>,
}

impl Reference {
    /// Universe for the small alphabets of the exhaustive and property tests: every string of
    /// 1 to 3 letters over {a, b, c}, plus verbatim chunks.
    fn new() -> Self {
        let mut universe = strings_over(&['a', 'b', 'c'], 3);
        universe.extend(["@x", "@y", "@x$*"].map(String::from));
        Self {
            universe,
            memo: RefCell::default(),
        }
    }

    /// Universe for arbitrary expressions: every string of 1 to 4 of their letters (plus a
    /// fresh one), and their own chunks.
    fn for_exprs(exprs: &[&str]) -> Self {
        let mut letters: BTreeSet<char> = exprs
            .iter()
            .flat_map(|e| e.chars())
            .filter(|c| !"$*/@".contains(*c))
            .collect();
        letters.insert('~');
        let letters: Vec<char> = letters.into_iter().collect();
        let mut universe = strings_over(&letters, 4);
        universe.extend(["@x", "@y"].map(String::from));
        universe.extend(exprs.iter().flat_map(|e| e.split('/')).map(String::from));
        Self {
            universe,
            memo: RefCell::default(),
        }
    }

    fn memoized(&self, p: &str, q: &str, inclusion: bool, f: impl Fn() -> bool) -> bool {
        let key = (String::from(p), String::from(q), inclusion);
        if let Some(&answer) = self.memo.borrow().get(&key) {
            return answer;
        }
        let answer = f();
        self.memo.borrow_mut().insert(key, answer);
        answer
    }

    fn chunk_intersects(&self, p: &str, q: &str) -> bool {
        self.memoized(p, q, false, || {
            p == q
                || self
                    .universe
                    .iter()
                    .any(|u| ref_chunk_match(p, u) && ref_chunk_match(q, u))
        })
    }

    fn chunk_includes(&self, p: &str, q: &str) -> bool {
        self.memoized(p, q, true, || {
            p == q
                || self
                    .universe
                    .iter()
                    .all(|u| !ref_chunk_match(q, u) || ref_chunk_match(p, u))
        })
    }

    /// Naive backtracking intersection on chunk sequences.
    fn intersects(&self, p: &[&str], q: &[&str]) -> bool {
        let verbatim = |c: &&str| c.starts_with('@');
        match (p.split_first(), q.split_first()) {
            (None, None) => true,
            (Some((&"**", prest)), _) if self.intersects(prest, q) => true,
            (Some((&"**", _)), Some((q0, qrest))) if !verbatim(q0) && self.intersects(p, qrest) => {
                true
            }
            (_, Some((&"**", qrest))) if self.intersects(p, qrest) => true,
            (Some((p0, prest)), Some((&"**", _))) if !verbatim(p0) && self.intersects(prest, q) => {
                true
            }
            (Some((p0, prest)), Some((q0, qrest))) if *p0 != "**" && *q0 != "**" => {
                self.chunk_intersects(p0, q0) && self.intersects(prest, qrest)
            }
            _ => false,
        }
    }

    /// Naive backtracking inclusion (`p ⊇ q`) on chunk sequences, chunk by chunk.
    fn includes(&self, p: &[&str], q: &[&str]) -> bool {
        match (p.split_first(), q.split_first()) {
            (None, None) => true,
            (Some((&"**", prest)), _) => {
                self.includes(prest, q)
                    || matches!(q.split_first(), Some((q0, qrest)) if !q0.starts_with('@') && self.includes(p, qrest))
            }
            (Some((p0, prest)), Some((q0, qrest))) if *q0 != "**" => {
                self.chunk_includes(p0, q0) && self.includes(prest, qrest)
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grammar
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_expressions() {
    for s in [
        "a",
        "a/b/c",
        "*",
        "**",
        "a/*",
        "*/a",
        "*/*/**",
        "a/**/b",
        "**/a/**",
        "a$*",
        "$*a",
        "a$*b$*c",
        "$*a$*",
        "a/b$*/c",
        "@a",
        "@",
        "@a/b",
        "a/@b/**",
        "@a$*",
        "@$*",
        "é/ü$*/日本",
        "a b/c-d_e.f/=+!%&",
        "a\u{0}b",
    ] {
        let k = ke(s);
        assert_eq!(k.as_str(), s);
        assert_eq!(canonize(s).unwrap(), s, "{s} is canonical");
    }
}

#[test]
fn error_kinds_and_offsets() {
    use KeyExprErrorKind::*;
    let cases: &[(&str, KeyExprErrorKind, usize)] = &[
        ("", Empty, 0),
        ("/", EmptyChunk, 0),
        ("/a", EmptyChunk, 0),
        ("a/", EmptyChunk, 2),
        ("a//b", EmptyChunk, 2),
        ("a/b//c", EmptyChunk, 4),
        ("a/b/", EmptyChunk, 4),
        ("#", ForbiddenChar('#'), 0),
        ("a#", ForbiddenChar('#'), 1),
        ("ab/c#d", ForbiddenChar('#'), 4),
        ("a/b?c", ForbiddenChar('?'), 3),
        ("a/$*?", ForbiddenChar('?'), 4),
        ("@a#", ForbiddenChar('#'), 2),
        ("$", LoneDollar, 0),
        ("a$", LoneDollar, 1),
        ("a/$b", LoneDollar, 2),
        ("a/b$$*", LoneDollar, 3),
        ("a$*$", LoneDollar, 3),
        ("@$", LoneDollar, 1),
        ("a*", StarInChunk, 1),
        ("*a", StarInChunk, 0),
        ("a/b*c", StarInChunk, 3),
        ("a/$**", StarInChunk, 4),
        ("a/*$*", StarInChunk, 2),
        ("@*", StarInChunk, 1),
        ("a/**b", DoubleStarInChunk, 2),
        ("***", DoubleStarInChunk, 0),
        ("b**", DoubleStarInChunk, 1),
        ("a/$***", DoubleStarInChunk, 4),
        ("@**", DoubleStarInChunk, 1),
        ("**/**", NotCanonical, 3),
        ("**/*", NotCanonical, 3),
        ("a/**/*", NotCanonical, 5),
        ("a/**/**/b", NotCanonical, 5),
        ("$*", NotCanonical, 0),
        ("a/$*", NotCanonical, 2),
        ("$*$*", NotCanonical, 0),
        ("a/**/$*", NotCanonical, 5),
        ("a$*$*", NotCanonical, 3),
        ("a$*b$*$*", NotCanonical, 6),
        ("@a$*$*", NotCanonical, 4),
        ("x/a$*$*$*", NotCanonical, 5),
        // Grammar errors take precedence over canon-form violations, wherever they are.
        ("**/**/#", ForbiddenChar('#'), 6),
        ("a/$*$*//", EmptyChunk, 7),
        ("$*/a*", StarInChunk, 4),
    ];
    for &(input, kind, offset) in cases {
        let err = KeyExpr::new(input).unwrap_err();
        assert_eq!(err, KeyExprError { kind, offset }, "input {input:?}");
        // `canonize` only fails on grammar errors, with the same error.
        match canonize(input) {
            Ok(c) => {
                assert_eq!(kind, NotCanonical, "input {input:?}");
                assert!(KeyExpr::new(&c).is_ok());
            }
            Err(e) => assert_eq!(e, err, "input {input:?}"),
        }
        assert_eq!(OwnedKeyExpr::new(String::from(input)).unwrap_err(), err);
        assert_eq!(OwnedKeyExpr::try_from(input).unwrap_err(), err);
        assert_eq!(input.parse::<OwnedKeyExpr>().unwrap_err(), err);
    }
}

#[test]
fn error_display() {
    let cases = [
        ("", "empty key expression"),
        ("a/b//c", "empty chunk at byte 4"),
        ("a/b#", "forbidden character '#' at byte 3"),
        ("a/b?", "forbidden character '?' at byte 3"),
        ("a/b/$", "lone '$' at byte 4"),
        ("a/**b", "'**' must be a whole chunk at byte 2"),
        ("a/b*", "'*' must be a whole chunk or follow '$' at byte 3"),
        ("$*/a", "not canonical at byte 0 (use canonize)"),
    ];
    for (input, message) in cases {
        assert_eq!(KeyExpr::new(input).unwrap_err().to_string(), message);
    }
    // It is a `core::error::Error`.
    let err: &dyn core::error::Error = &KeyExpr::new("").unwrap_err();
    assert!(err.source().is_none());
}

#[test]
fn canon_forms() {
    let cases = [
        ("**/**", "**"),
        ("**/**/**", "**"),
        ("**/*", "*/**"),
        ("a/**/*/b", "a/*/**/b"),
        ("**/*/**/*/**", "*/*/**"),
        ("**/*/a/**/**/*", "*/**/a/*/**"),
        ("$*", "*"),
        ("$*$*$*", "*"),
        ("a/$*$*/b", "a/*/b"),
        ("a$*$*$*b", "a$*b"),
        ("$*a$*$*", "$*a$*"),
        ("$*$*a", "$*a"),
        ("a$*b$*$*c$*$*", "a$*b$*c$*"),
        ("**/$*/**", "*/**"),
        ("$*/**/$*", "*/*/**"),
        ("@a$*$*", "@a$*"),
        ("**/@a/**/*", "**/@a/*/**"),
        ("a/b", "a/b"),
        ("*/**", "*/**"),
    ];
    for (input, canon) in cases {
        assert_eq!(canonize(input).unwrap(), canon, "canonize({input:?})");
        assert_eq!(canonize(canon).unwrap(), canon);
        assert_eq!(
            OwnedKeyExpr::autocanonize(String::from(input))
                .unwrap()
                .as_str(),
            canon
        );
    }
}

// ---------------------------------------------------------------------------------------------
// API surface
// ---------------------------------------------------------------------------------------------

#[test]
fn keyexpr_api() {
    let k = ke("a/*/b$*/**");
    assert_eq!(k.as_str(), "a/*/b$*/**");
    assert_eq!(&*k, "a/*/b$*/**");
    assert_eq!(k.chunks().collect::<Vec<_>>(), ["a", "*", "b$*", "**"]);
    assert_eq!(
        k.chunks().rev().collect::<Vec<_>>(),
        ["**", "b$*", "*", "a"]
    );
    assert_eq!(k.to_string(), "a/*/b$*/**");
    assert_eq!(format!("{k:?}"), "ke`a/*/b$*/**`");
    assert!(k.is_wild());
    assert!(!ke("a/b/@c").is_wild());
    assert!(ke("a$*").is_wild());
    assert!(ke("*").is_wild());
    assert!(ke("**").is_wild());
    assert_eq!(k, "a/*/b$*/**");
    assert!(ke("a") < ke("b"));
    assert_eq!(KeyExpr::try_from("a/b"), Ok(ke("a/b")));
    let copy = k;
    assert_eq!(copy, k);
}

#[test]
fn owned_keyexpr_api() {
    let o = OwnedKeyExpr::new(String::from("a/*")).unwrap();
    assert_eq!(o.as_str(), "a/*");
    assert_eq!(o.as_keyexpr(), ke("a/*"));
    assert_eq!(o, ke("a/*"));
    assert_eq!(ke("a/*"), o);
    assert_eq!(o, "a/*");
    assert_eq!(o.to_string(), "a/*");
    assert_eq!(format!("{o:?}"), "ke`a/*`");
    assert_eq!(OwnedKeyExpr::try_from("a/*").unwrap(), o);
    assert_eq!("a/*".parse::<OwnedKeyExpr>().unwrap(), o);
    assert_eq!(OwnedKeyExpr::from(ke("a/*")), o);
    assert_eq!(OwnedKeyExpr::try_from(String::from("a/*")).unwrap(), o);
    assert_eq!(String::from(o.clone()), "a/*");
    assert_eq!(o.clone().into_string(), "a/*");
    assert_eq!(o.join(&ke("b")).as_str(), "a/*/b");
    assert_eq!(ke_owned("a/**").join(&ke("*/c")).as_str(), "a/*/**/c");
    assert_eq!(ke_owned("a/**").join(&ke("**")).as_str(), "a/**");
    assert_eq!(
        OwnedKeyExpr::autocanonize(String::from("**/*")).unwrap(),
        "*/**"
    );
    let set: BTreeSet<OwnedKeyExpr> = [ke_owned("b"), ke_owned("a")].into_iter().collect();
    assert!(set.contains("a"));
}

fn ke_owned(s: &str) -> OwnedKeyExpr {
    OwnedKeyExpr::new(String::from(s)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Relations: tables
// ---------------------------------------------------------------------------------------------

/// `(a, b, a ∩ b ≠ ∅, a ⊇ b, b ⊇ a)`
const RELATIONS: &[(&str, &str, bool, bool, bool)] = &[
    ("a", "a", true, true, true),
    ("a/b", "a/b", true, true, true),
    ("a", "b", false, false, false),
    ("a/b", "a", false, false, false),
    ("*", "abc", true, true, false),
    ("a/*/c", "a/b/c", true, true, false),
    ("a/*/c", "a/c", false, false, false),
    ("a/*/c", "a/b/b/c", false, false, false),
    ("*", "a/b", false, false, false),
    ("a/**", "a", true, true, false),
    ("a/**", "a/b/c", true, true, false),
    ("a/**", "b", false, false, false),
    ("**", "a", true, true, false),
    ("**", "a/b/c", true, true, false),
    ("**", "*/**", true, true, false),
    ("**", "a/**/b$*", true, true, false),
    ("*/**", "**/a", true, false, false),
    ("a/**/b", "a/b", true, true, false),
    ("a/**/b", "a/x/y/b", true, true, false),
    ("a/**/b", "a/*/*/b", true, true, false),
    ("a/**/b", "a/*/**/b", true, true, false),
    ("a/**/b", "a/**/c/**/b", true, true, false),
    ("a/**/b", "a/**/b/c", false, false, false),
    ("a/**/b", "**/b", true, false, true),
    ("a/**/b", "a/**", true, false, true),
    ("a/**/c/**/e", "a/b/b/c/d/e", true, true, false),
    ("a/**/c/**/e", "a/c/e", true, true, false),
    ("a/**/c/*/e/*", "a/b/c/d/d/c/d/e/f", true, true, false),
    ("a/**/c/*/e/*", "a/b/c/d/d/c/d/d/e/f", false, false, false),
    ("**/xyz", "a/b/xyz/d/xyz", true, true, false),
    ("**/a/**", "**/b/**", true, false, false),
    ("a/**", "**/b", true, false, false),
    ("a/*", "*/b", true, false, false),
    ("a/**/a", "b/**", false, false, false),
    ("**/a/b/**", "**/b/a/**", true, false, false),
    // `$*`
    ("a/$*b", "a/xb", true, true, false),
    ("a/$*b", "a/b", true, true, false),
    ("a/b$*", "a/$*c", true, false, false),
    ("car$*", "car", true, true, false),
    ("car$*", "carrot", true, true, false),
    ("car$*", "ca", false, false, false),
    ("ab$*cd", "abxxcxxd", false, false, false),
    ("ab$*cd", "abxxcxxcd", true, true, false),
    ("ab$*c$*d", "abxxcxxd", true, true, false),
    ("**/xyz$*xyz", "a/b/xyz/d/xyz", false, false, false),
    ("**/xyz$*xyz", "a/b/xyzdefxyz", true, true, false),
    ("x/*", "x/abc$*", true, true, false),
    ("x/$*abc", "x/abc$*", true, false, false),
    ("x/a$*", "x/abc$*", true, true, false),
    ("x/a$*de", "x/abc$*de", true, true, false),
    ("x/a$*e", "x/a$*d$*e", true, true, false),
    ("x/a$*d$*e", "x/a$*c$*e", true, false, false),
    ("x/a$*d$*e", "x/ade", true, true, false),
    ("x/c$*", "x/abc$*", false, false, false),
    ("x/$*c$*", "x/abc$*", true, true, false),
    ("x/$*d", "x/$*e", false, false, false),
    ("$*a$*", "*", true, false, true),
    ("a$*", "$*a", true, false, false),
    // Verbatim chunks.
    ("@a/b", "*/b", false, false, false),
    ("@a/b", "**/b", false, false, false),
    ("@a/b", "@a/*", true, false, true),
    ("@a/**", "@a", true, true, false),
    ("@a/**", "@a/b/c", true, true, false),
    ("@a/**", "@a/@b", false, false, false),
    ("**", "@a", false, false, false),
    ("*", "@a", false, false, false),
    ("**/@a", "@a", true, true, false),
    ("**/@a", "x/y/@a", true, true, false),
    ("**/@a", "@b/@a", false, false, false),
    ("**/@a/**", "x/@a/y", true, true, false),
    ("**/@a/**", "**/@a", true, true, false),
    ("**/@a/**", "@a/@a", false, false, false),
    ("**", "**/@a", false, false, false),
    ("@a", "@b", false, false, false),
    ("@$*", "@x", false, false, false),
    ("@a$*", "@a$*", true, true, true),
    ("@a$*", "@ab", false, false, false),
    ("a$*", "@ab", false, false, false),
    ("$*b", "@ab", false, false, false),
    ("a/@v1/**", "a/@v2/**", false, false, false),
    ("a/@v1/**", "a/*/**", false, false, false),
    ("a/@v1/**", "a/**", false, false, false),
    ("a/@v1/**", "a/@$*/**", false, false, false),
    ("**/@/**", "a/b/@/c", true, true, false),
    ("**/@/**", "a/@/b/@/c", false, false, false),
    // The admin space (`@/<node>/**`): reached only by expressions that spell its `@`.
    ("@/*/links/**", "@/n1/**", true, false, false),
    ("@/*/links/**", "@/n1/links/n2", true, true, false),
    ("@/*/node", "@/n1/**", true, false, false),
    ("**", "@/n1/**", false, false, false),
    ("*/**", "@/n1/links/n2", false, false, false),
    ("x$*/**", "@/n1/**", false, false, false),
    ("@/**", "@/n1/metrics", true, true, false),
];

#[test]
fn the_admin_space_is_out_of_reach_of_wildcards_in_a_tree() {
    let mut t = KeTree::new();
    for (i, k) in ["@/n1/**", "@/n2/**", "fleet/**", "fleet/car1/speed"]
        .iter()
        .enumerate()
    {
        t.insert(&ke(k), i);
    }
    let hits = |q: &str, f: fn(&KeTree<usize>, &KeyExpr<'_>) -> Vec<usize>| {
        let mut v = f(&t, &ke(q));
        v.sort();
        v
    };
    let inter: fn(&KeTree<usize>, &KeyExpr<'_>) -> Vec<usize> =
        |t, q| t.intersecting(q).map(|(_, v)| *v).collect();
    let incl: fn(&KeTree<usize>, &KeyExpr<'_>) -> Vec<usize> =
        |t, q| t.included_by(q).map(|(_, v)| *v).collect();
    assert_eq!(hits("**", inter), vec![2, 3]);
    assert_eq!(hits("**", incl), vec![2, 3]);
    assert_eq!(hits("*/**", inter), vec![2, 3]);
    assert_eq!(hits("@/*/links/**", inter), vec![0, 1]);
    assert_eq!(hits("@/n2/node", inter), vec![1]);
    assert_eq!(hits("@/**", incl), vec![0, 1]);
}

#[test]
fn relation_table() {
    for &(a, b, inter, a_inc_b, b_inc_a) in RELATIONS {
        let reference = Reference::for_exprs(&[a, b]);
        let (ka, kb) = (ke(a), ke(b));
        assert_eq!(ka.intersects(&kb), inter, "{a} ∩ {b}");
        assert_eq!(kb.intersects(&ka), inter, "{b} ∩ {a}");
        assert_eq!(ka.includes(&kb), a_inc_b, "{a} ⊇ {b}");
        assert_eq!(kb.includes(&ka), b_inc_a, "{b} ⊇ {a}");
        // The table itself agrees with the naive references.
        let (sa, sb) = (split(a), split(b));
        assert_eq!(reference.intersects(&sa, &sb), inter, "reference {a} ∩ {b}");
        assert_eq!(reference.includes(&sa, &sb), a_inc_b, "reference {a} ⊇ {b}");
        assert_eq!(reference.includes(&sb, &sa), b_inc_a, "reference {b} ⊇ {a}");
    }
}

#[test]
fn pathological_inputs_stay_fast() {
    // `**/a/**/a/...` against long keys: a backtracking matcher would take forever.
    let mut pattern = String::from("**");
    for _ in 0..200 {
        pattern.push_str("/a/**");
    }
    pattern.push_str("/b");
    let mut key = String::from("a");
    for _ in 0..400 {
        key.push_str("/a");
    }
    let (p, k) = (ke(&pattern), ke(&key));
    let start = std::time::Instant::now();
    for _ in 0..10 {
        assert!(!p.intersects(&k));
        assert!(!p.includes(&k));
        assert!(!k.includes(&p));
        let mut wild_key = key.clone();
        wild_key.push_str("/**");
        let wk = ke(&wild_key);
        assert!(p.intersects(&wk));
        assert!(!p.includes(&wk));
        assert!(!wk.includes(&p));
    }
    let mut with_b = key.clone();
    with_b.push_str("/b");
    assert!(p.intersects(&ke(&with_b)));
    // Generous bound: this is only about exponential blow-ups.
    assert!(start.elapsed() < std::time::Duration::from_secs(10));

    let mut tree = KeTree::new();
    tree.insert(&p, 1);
    tree.insert(&ke("**"), 2);
    assert_eq!(tree.intersecting(&k).count(), 1);
    assert_eq!(tree.intersecting(&ke(&with_b)).count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Relations: exhaustive checks over a small space
// ---------------------------------------------------------------------------------------------

/// Chunks from which the small expressions are built.
const ALPHABET: &[&str] = &["a", "ab", "@x", "*", "**", "a$*", "$*b", "@x$*"];
/// Concrete chunks from which witness keys are built (enough to witness any intersection of
/// the small expressions).
const KEY_CHUNKS: &[&str] = &["a", "b", "ab", "c", "@x", "@x$*"];

/// Every canonical expression of 1 to `max` chunks from `ALPHABET`.
fn small_expressions(max: usize) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut layer: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..max {
        let mut next = Vec::new();
        for prefix in &layer {
            for c in ALPHABET {
                let mut v = prefix.clone();
                v.push(c);
                out.insert(canonize(&v.join("/")).unwrap());
                next.push(v);
            }
        }
        layer = next;
    }
    out.into_iter().collect()
}

/// Every concrete key of 1 to `max` chunks from `KEY_CHUNKS`.
fn small_keys(max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut layer = vec![String::new()];
    for _ in 0..max {
        let mut next = Vec::new();
        for prefix in &layer {
            for c in KEY_CHUNKS {
                next.push(if prefix.is_empty() {
                    String::from(*c)
                } else {
                    format!("{prefix}/{c}")
                });
            }
        }
        out.extend(next.iter().cloned());
        layer = next;
    }
    out
}

#[test]
fn exhaustive_small_relations() {
    let reference = Reference::new();
    let exprs = small_expressions(3);
    // Keys of up to 4 chunks witness every intersection of expressions of up to 3 chunks: a
    // witness needs at most one chunk per non-`**` chunk of either side.
    let keys = small_keys(4);
    // Membership bitsets over `keys`.
    let words = keys.len().div_ceil(64);
    let mut members: Vec<Vec<u64>> = Vec::new();
    for e in &exprs {
        let mut bits = vec![0u64; words];
        for (i, k) in keys.iter().enumerate() {
            let member = ref_match_str(e, k);
            // Membership of concrete keys: `intersects` and `includes` both decide it.
            assert_eq!(ke(e).intersects(&ke(k)), member, "{e} ∋ {k}");
            assert_eq!(ke(e).includes(&ke(k)), member, "{e} ⊇ {k}");
            if member {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        members.push(bits);
    }
    for (a, ma) in exprs.iter().zip(&members) {
        let (ka, sa) = (ke(a), split(a));
        for (b, mb) in exprs.iter().zip(&members) {
            let (kb, sb) = (ke(b), split(b));
            let inter = ka.intersects(&kb);
            let witnessed = ma.iter().zip(mb).any(|(x, y)| x & y != 0);
            assert_eq!(inter, witnessed, "{a} ∩ {b}");
            assert_eq!(inter, reference.intersects(&sa, &sb), "reference {a} ∩ {b}");
            let inc = ka.includes(&kb);
            assert_eq!(inc, reference.includes(&sa, &sb), "reference {a} ⊇ {b}");
            let subset = ma.iter().zip(mb).all(|(x, y)| y & !x == 0);
            if inc {
                assert!(subset, "{a} ⊇ {b} but a key of {b} is not in {a}");
                assert!(inter, "{a} ⊇ {b} but they do not intersect");
            } else if subset {
                // The only incompleteness (shared with Zenoh): a `**` of `b` is only included
                // by a `**` of `a`.
                assert!(
                    sb.contains(&"**"),
                    "{a} ⊉ {b} yet every key of {b} is in {a}"
                );
            }
        }
    }
}

#[test]
fn exhaustive_small_transitivity() {
    let exprs = small_expressions(2);
    let k: Vec<_> = exprs.iter().map(|e| ke(e)).collect();
    let inc: Vec<Vec<bool>> = k
        .iter()
        .map(|a| k.iter().map(|b| a.includes(b)).collect())
        .collect();
    for (i, a) in k.iter().enumerate() {
        assert!(inc[i][i], "{a} ⊇ {a}");
        for j in 0..k.len() {
            if !inc[i][j] {
                continue;
            }
            for l in 0..k.len() {
                if inc[j][l] {
                    assert!(
                        inc[i][l],
                        "{a} ⊇ {} ⊇ {} but not {a} ⊇ {}",
                        k[j], k[l], k[l]
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KeTree
// ---------------------------------------------------------------------------------------------

fn sorted<'a, V: Clone + 'a>(it: impl Iterator<Item = (KeyExpr<'a>, &'a V)>) -> Vec<(String, V)> {
    let mut v: Vec<_> = it
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn tree_basics() {
    let mut t = KeTree::new();
    assert!(t.is_empty());
    assert_eq!(t.insert(&ke("a/b"), 1), None);
    assert_eq!(t.insert(&ke("a/*"), 2), None);
    assert_eq!(t.insert(&ke("a/**"), 3), None);
    assert_eq!(t.insert(&ke("a"), 4), None);
    assert_eq!(t.insert(&ke("a/b"), 10), Some(1));
    assert_eq!(t.len(), 4);
    assert_eq!(t.get(&ke("a/b")), Some(&10));
    assert_eq!(t.get(&ke("a/c")), None);
    assert_eq!(t.get(&ke("a/b/c")), None);
    *t.get_mut(&ke("a/*")).unwrap() += 1;
    assert_eq!(t.get(&ke("a/*")), Some(&3));
    assert!(t.contains_key(&ke("a")));
    assert_eq!(
        sorted(t.iter()),
        [
            ("a".into(), 4),
            ("a/*".into(), 3),
            ("a/**".into(), 3),
            ("a/b".into(), 10)
        ]
    );
    assert_eq!(
        sorted(t.intersecting(&ke("a/c"))),
        [("a/*".into(), 3), ("a/**".into(), 3)]
    );
    assert_eq!(
        sorted(t.including(&ke("a/b"))),
        [("a/*".into(), 3), ("a/**".into(), 3), ("a/b".into(), 10)]
    );
    assert_eq!(
        sorted(t.included_by(&ke("a/*"))),
        [("a/*".into(), 3), ("a/b".into(), 10)]
    );
    assert_eq!(t.remove(&ke("a/c")), None);
    assert_eq!(t.remove(&ke("a/b/c")), None);
    assert_eq!(t.remove(&ke("a/b")), Some(10));
    assert_eq!(t.remove(&ke("a/b")), None);
    assert_eq!(t.remove(&ke("a")), Some(4));
    assert_eq!(t.len(), 2);
    assert_eq!(t.remove(&ke("a/*")), Some(3));
    assert_eq!(t.remove(&ke("a/**")), Some(3));
    assert!(t.is_empty());
    // Everything was pruned.
    assert_eq!(t.child_count_at(""), Some(0));
    t.insert(&ke("x"), 1);
    t.clear();
    assert!(t.is_empty() && t.iter().next().is_none());
    let t: KeTree<u8> = [(ke("a"), 1), (ke("b/**"), 2)].into_iter().collect();
    assert_eq!(t.len(), 2);
    assert_eq!(format!("{t:?}").len(), "{ke`a`: 1, ke`b/**`: 2}".len());
}

#[test]
fn tree_prunes_only_useless_branches() {
    let mut t = KeTree::new();
    t.insert(&ke("a/b/c/d"), 1);
    t.insert(&ke("a/b"), 2);
    t.insert(&ke("a/x/y"), 3);
    assert_eq!(t.remove(&ke("a/b/c/d")), Some(1));
    assert_eq!(t.get(&ke("a/b")), Some(&2));
    assert_eq!(t.get(&ke("a/x/y")), Some(&3));
    assert_eq!(t.child_count_at("a/b"), Some(0));
    assert_eq!(t.remove(&ke("a/b")), Some(2));
    assert_eq!(t.child_count_at("a"), Some(1));
    assert_eq!(t.remove(&ke("a/x/y")), Some(3));
    assert_eq!(t.child_count_at(""), Some(0));
    // A node keeping an entry survives removal below it.
    t.insert(&ke("a/**"), 1);
    t.insert(&ke("a/**/b"), 2);
    assert_eq!(t.remove(&ke("a/**/b")), Some(2));
    assert_eq!(t.get(&ke("a/**")), Some(&1));
    assert_eq!(t.child_count_at("a/**"), Some(0));
}

#[test]
fn tree_queries_exhaustive_small() {
    let exprs = small_expressions(3);
    let mut tree = KeTree::new();
    for (i, e) in exprs.iter().enumerate() {
        tree.insert(&ke(e), i);
    }
    assert_eq!(tree.len(), exprs.len());
    let mut queries = exprs.clone();
    queries.extend(small_keys(2));
    for q in &queries {
        let kq = ke(q);
        let expected = |f: &dyn Fn(&KeyExpr<'_>) -> bool| -> Vec<(String, usize)> {
            exprs
                .iter()
                .enumerate()
                .filter(|(_, e)| f(&ke(e)))
                .map(|(i, e)| (e.clone(), i))
                .collect()
        };
        assert_eq!(
            sorted(tree.intersecting(&kq)),
            expected(&|e| e.intersects(&kq)),
            "intersecting {q}"
        );
        assert_eq!(
            sorted(tree.including(&kq)),
            expected(&|e| e.includes(&kq)),
            "including {q}"
        );
        assert_eq!(
            sorted(tree.included_by(&kq)),
            expected(&|e| kq.includes(e)),
            "included_by {q}"
        );
    }
}

#[test]
fn deep_keys_do_not_recurse() {
    // Far deeper than any stack would allow for per-chunk recursion (the wire layer caps keys
    // at 1 KiB, but local callers are not capped).
    let deep: String = vec!["a"; 50_000].join("/");
    let deep_wild = format!("{deep}/**");
    let (k, w) = (ke(&deep), ke(&deep_wild));
    assert!(w.includes(&k) && k.intersects(&w) && !k.includes(&w));
    let mut t = KeTree::new();
    t.insert(&k, 1);
    t.insert(&w, 2);
    t.insert(&ke("**"), 3);
    assert_eq!(t.intersecting(&k).count(), 3);
    assert_eq!(t.including(&k).count(), 3);
    assert_eq!(t.included_by(&w).count(), 2);
    assert_eq!(t.remove(&w), Some(2));
    let mut t2 = KeTree::new();
    t2.insert(&w, 0);
    assert_eq!(t2.remove(&w), Some(0));
    t2.insert(&k, 0);
    t2.clear();
    t2.insert(&w, 0);
    drop(t2);
    drop(t);
}

#[test]
fn tree_lookup_deduplicates_literal_children() {
    // Several live positions naming the same literal child must not yield an entry twice.
    let mut t = KeTree::new();
    t.insert(&ke("**/a"), 1);
    t.insert(&ke("**/a/a"), 2);
    t.insert(&ke("a/**/a"), 3);
    let q = ke("a/a/a/a");
    assert_eq!(
        sorted(t.intersecting(&q)),
        [
            ("**/a".into(), 1),
            ("**/a/a".into(), 2),
            ("a/**/a".into(), 3)
        ]
    );
    assert_eq!(sorted(t.including(&q)).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// Chunks for random expressions: a small alphabet, so that collisions happen.
const PROP_CHUNKS: &[&str] = &["a", "b", "ab", "@x", "*", "**", "a$*", "$*b", "a$*b$*"];
/// Valid chunks that may break the canon form.
const RAW_CHUNKS: &[&str] = &[
    "a", "b", "ab", "@x", "*", "**", "a$*", "$*b", "$*", "$*$*", "a$*$*", "$*$*b$*", "@x$*$*",
];
/// Concrete chunks for random keys.
const PROP_KEY_CHUNKS: &[&str] = &["a", "b", "ab", "ba", "abb", "c", "@x"];

fn chunks_from(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), 1..=max).prop_map(|v| v.join("/"))
}

/// A random canonical expression.
fn expr() -> impl Strategy<Value = String> {
    chunks_from(PROP_CHUNKS, 7).prop_map(|s| canonize(&s).unwrap())
}

/// A random valid, possibly non-canonical, expression.
fn raw_expr() -> impl Strategy<Value = String> {
    chunks_from(RAW_CHUNKS, 7)
}

/// A random concrete key.
fn key() -> impl Strategy<Value = String> {
    chunks_from(PROP_KEY_CHUNKS, 7)
}

#[derive(Clone, Debug)]
enum Op {
    Insert(String, u16),
    Remove(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (chunks_from(PROP_CHUNKS, 4), any::<u16>())
            .prop_map(|(s, v)| Op::Insert(canonize(&s).unwrap(), v)),
        1 => chunks_from(PROP_CHUNKS, 4).prop_map(|s| Op::Remove(canonize(&s).unwrap())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn prop_intersects_is_symmetric(a in expr(), b in expr()) {
        prop_assert_eq!(ke(&a).intersects(&ke(&b)), ke(&b).intersects(&ke(&a)));
    }

    #[test]
    fn prop_includes_implies_intersects(a in expr(), b in expr()) {
        if ke(&a).includes(&ke(&b)) {
            prop_assert!(ke(&a).intersects(&ke(&b)));
        }
    }

    #[test]
    fn prop_includes_is_reflexive(a in expr()) {
        prop_assert!(ke(&a).includes(&ke(&a)));
        prop_assert!(ke(&a).intersects(&ke(&a)));
    }

    #[test]
    fn prop_includes_is_transitive(a in expr(), b in expr(), c in expr()) {
        let (a, b, c) = (ke(&a), ke(&b), ke(&c));
        if a.includes(&b) && b.includes(&c) {
            prop_assert!(a.includes(&c));
        }
        // `**` and `*` make chains likely: check the chains they form too.
        for top in [ke("**"), ke("a/**"), ke("*/**")] {
            if top.includes(&a) && a.includes(&b) {
                prop_assert!(top.includes(&b));
            }
        }
    }

    #[test]
    fn prop_relations_match_reference(a in expr(), b in expr()) {
        let reference = Reference::new();
        let (sa, sb) = (split(&a), split(&b));
        prop_assert_eq!(ke(&a).intersects(&ke(&b)), reference.intersects(&sa, &sb));
        prop_assert_eq!(ke(&a).includes(&ke(&b)), reference.includes(&sa, &sb));
    }

    #[test]
    fn prop_membership_matches_reference(a in expr(), k in key()) {
        let member = ref_match_str(&a, &k);
        prop_assert_eq!(ke(&a).intersects(&ke(&k)), member);
        prop_assert_eq!(ke(&k).intersects(&ke(&a)), member);
        prop_assert_eq!(ke(&a).includes(&ke(&k)), member);
    }

    #[test]
    fn prop_includes_is_sound(a in expr(), b in expr(), keys in prop::collection::vec(key(), 16)) {
        if ke(&a).includes(&ke(&b)) {
            for k in &keys {
                if ref_match_str(&b, k) {
                    prop_assert!(ref_match_str(&a, k), "{} ⊇ {} but {} ∉ {}", a, b, k, a);
                }
            }
        }
        // A key in both proves the intersection.
        for k in &keys {
            if ref_match_str(&a, k) && ref_match_str(&b, k) {
                prop_assert!(ke(&a).intersects(&ke(&b)));
            }
        }
    }

    #[test]
    fn prop_canonize(x in raw_expr(), keys in prop::collection::vec(key(), 16)) {
        let c = canonize(&x).unwrap();
        prop_assert!(KeyExpr::new(&c).is_ok(), "{} canonized to invalid {}", x, c);
        prop_assert_eq!(canonize(&c).unwrap(), c.clone());
        prop_assert_eq!(KeyExpr::new(&x).is_ok(), c == x);
        for k in &keys {
            prop_assert_eq!(ref_match_str(&x, k), ref_match_str(&c, k), "{} vs {} on {}", x, c, k);
            prop_assert_eq!(ke(&c).intersects(&ke(k)), ref_match_str(&x, k));
        }
    }

    #[test]
    fn prop_validation_agrees_with_canonize(s in "[ab/*$@#?]{0,10}") {
        match (KeyExpr::new(&s), canonize(&s)) {
            (Ok(k), Ok(c)) => prop_assert_eq!(k.as_str(), c),
            (Err(e), Ok(c)) => {
                prop_assert_eq!(e.kind, KeyExprErrorKind::NotCanonical);
                prop_assert!(c != s);
                prop_assert!(e.offset < s.len());
            }
            (Err(e), Err(f)) => {
                prop_assert_eq!(e, f);
                prop_assert!(e.offset <= s.len());
            }
            (Ok(_), Err(_)) => prop_assert!(false, "{} valid but not canonizable", s),
        }
    }

    #[test]
    fn prop_tree_matches_brute_force(
        ops in prop::collection::vec(op(), 1..60),
        queries in prop::collection::vec(prop_oneof![expr(), key()], 1..8),
    ) {
        let mut tree = KeTree::new();
        let mut model: std::collections::BTreeMap<String, u16> = Default::default();
        for op in &ops {
            match op {
                Op::Insert(k, v) => {
                    prop_assert_eq!(tree.insert(&ke(k), *v), model.insert(k.clone(), *v));
                }
                Op::Remove(k) => prop_assert_eq!(tree.remove(&ke(k)), model.remove(k)),
            }
            prop_assert_eq!(tree.len(), model.len());
        }
        let all: Vec<(String, u16)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        prop_assert_eq!(sorted(tree.iter()), all.clone());
        for (k, v) in &model {
            prop_assert_eq!(tree.get(&ke(k)), Some(v));
        }
        for q in &queries {
            let kq = ke(q);
            let brute = |f: &dyn Fn(&KeyExpr<'_>) -> bool| -> Vec<(String, u16)> {
                all.iter().filter(|(k, _)| f(&ke(k))).cloned().collect()
            };
            prop_assert_eq!(sorted(tree.intersecting(&kq)), brute(&|e| e.intersects(&kq)));
            prop_assert_eq!(sorted(tree.including(&kq)), brute(&|e| e.includes(&kq)));
            prop_assert_eq!(sorted(tree.included_by(&kq)), brute(&|e| kq.includes(e)));
        }
        // Removing everything leaves no node behind.
        for k in model.keys() {
            prop_assert!(tree.remove(&ke(k)).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.child_count_at(""), Some(0));
    }
}
