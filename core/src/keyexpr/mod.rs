//! Key expressions: the addresses of the Hypha mesh.
//!
//! A key expression names a *set of keys*. It is a `/`-separated list of non-empty chunks, with
//! the same language and semantics as Eclipse Zenoh's key expressions:
//!
//! | chunk          | meaning                                                              |
//! |----------------|----------------------------------------------------------------------|
//! | `car1`         | exactly that chunk                                                   |
//! | `*`            | exactly one chunk, any value                                         |
//! | `**`           | zero or more chunks, any values                                      |
//! | `car$*`        | one chunk; `$*` stands for any run of characters (possibly empty)   |
//! | `@admin`       | a *verbatim* chunk: only the identical chunk matches it              |
//!
//! Rules of the grammar:
//!
//! - no empty chunk: no empty string, no leading or trailing `/`, no `//`;
//! - `#` and `?` are forbidden anywhere;
//! - `*` is either a whole chunk (`*` or `**`) or the second half of `$*`; `**` is always a whole
//!   chunk; `$` is always followed by `*`.
//!
//! Chunks that start with `@` are verbatim: no wildcard (`*`, `**`, `$*`) ever matches them, so
//! `**` cannot expand over them (`**` matches zero chunks next to them, though: `@a/**` intersects
//! `@a`). Wildcards written inside a verbatim chunk (`@v$*`) have no wildcard meaning; such a
//! chunk is only ever equal to itself.
//!
//! # Canon form
//!
//! Several strings can spell the same set. Only the *canon form* is a valid [`KeyExpr`], so that
//! string equality is set equality:
//!
//! - `**/**` becomes `**`;
//! - `**/*` becomes `*/**` (single stars move before double stars);
//! - a chunk that is only `$*` becomes `*`;
//! - `$*$*` becomes `$*`.
//!
//! [`KeyExpr::new`] rejects a non-canonical expression with [`KeyExprErrorKind::NotCanonical`];
//! `canonize` (feature `alloc`) rewrites any valid expression into its canon form.
//!
//! # Set relations
//!
//! [`KeyExpr::intersects`] tells whether two expressions have at least one key in common;
//! [`KeyExpr::includes`] whether every key of the other expression belongs to this one. Neither
//! allocates, neither recurses, and both run in time polynomial in the lengths of the
//! expressions (there is no exponential backtracking, whatever the input).
//!
//! ```
//! use hypha_core::keyexpr::KeyExpr;
//!
//! let speeds = KeyExpr::new("fleet/*/speed")?;
//! let car1 = KeyExpr::new("fleet/car1/speed")?;
//! let all = KeyExpr::new("fleet/**")?;
//! assert!(speeds.intersects(&car1));
//! assert!(speeds.includes(&car1));
//! assert!(all.includes(&speeds));
//! assert!(!speeds.includes(&all));
//!
//! // `$*` works inside a chunk.
//! let cars = KeyExpr::new("fleet/car$*/speed")?;
//! assert!(cars.includes(&car1));
//! assert!(cars.intersects(&speeds));
//!
//! // Verbatim chunks are hermetic.
//! let admin = KeyExpr::new("@admin/**")?;
//! assert!(!KeyExpr::new("**")?.intersects(&admin));
//! assert!(admin.includes(&KeyExpr::new("@admin")?));
//! # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
//! ```
//!
//! With the `alloc` feature, `OwnedKeyExpr` owns its string, `canonize` produces canon forms, and
//! `KeTree` indexes values by key expression and answers "which entries intersect / include /
//! are included by this expression".

use core::fmt;
use core::iter::FusedIterator;
use core::ops::Deref;

#[cfg(feature = "alloc")]
use alloc::string::String;

#[cfg(feature = "alloc")]
mod tree;
#[cfg(feature = "alloc")]
pub use tree::{Iter, KeTree, Matches};

#[cfg(all(test, feature = "alloc"))]
mod tests;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What is wrong with a rejected key expression.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyExprErrorKind {
    /// The string is empty.
    Empty,
    /// An empty chunk: a leading or trailing `/`, or `//`. The offset is where the empty chunk
    /// starts.
    EmptyChunk,
    /// A forbidden character (`#` or `?`).
    ForbiddenChar(char),
    /// A `$` that is not followed by `*`.
    LoneDollar,
    /// A `*` that is neither a whole chunk nor the second half of `$*`.
    StarInChunk,
    /// A `**` that is not a whole chunk. The offset is that of its first `*`.
    DoubleStarInChunk,
    /// A valid expression that is not in canon form (`**/**`, `**/*`, a chunk that is only
    /// `$*`, or `$*$*`); `canonize` fixes it. The offset is that of the first chunk (or, for
    /// `$*$*`, of the second `$*`) that breaks the canon form.
    NotCanonical,
}

/// Why a string is not a valid (canonical) key expression, and where.
///
/// ```
/// use hypha_core::keyexpr::{KeyExpr, KeyExprErrorKind};
///
/// let err = KeyExpr::new("a/b//c").unwrap_err();
/// assert_eq!(err.kind, KeyExprErrorKind::EmptyChunk);
/// assert_eq!(err.offset, 4);
/// assert_eq!(err.to_string(), "empty chunk at byte 4");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyExprError {
    /// What is wrong.
    pub kind: KeyExprErrorKind,
    /// The byte offset in the input at which the problem was found.
    pub offset: usize,
}

impl KeyExprError {
    const fn new(kind: KeyExprErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }
}

impl fmt::Display for KeyExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.kind {
            KeyExprErrorKind::Empty => f.write_str("empty key expression"),
            KeyExprErrorKind::EmptyChunk => write!(f, "empty chunk at byte {at}"),
            KeyExprErrorKind::ForbiddenChar(c) => {
                write!(f, "forbidden character '{c}' at byte {at}")
            }
            KeyExprErrorKind::LoneDollar => write!(f, "lone '$' at byte {at}"),
            KeyExprErrorKind::StarInChunk => {
                write!(f, "'*' must be a whole chunk or follow '$' at byte {at}")
            }
            KeyExprErrorKind::DoubleStarInChunk => {
                write!(f, "'**' must be a whole chunk at byte {at}")
            }
            KeyExprErrorKind::NotCanonical => {
                write!(f, "not canonical at byte {at} (use canonize)")
            }
        }
    }
}

impl core::error::Error for KeyExprError {}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// What a syntactically valid chunk is, as far as canon form is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkClass {
    /// `*`
    Star,
    /// `**`
    DoubleStar,
    /// Only `$*`s (`$*`, `$*$*`, ...): must be written `*`.
    OnlyDollarStars,
    /// Anything else.
    Other,
}

/// Checks one chunk (non-empty) starting at byte `base` of the whole string. Returns its class
/// and the offset of a `$*$*` inside it, if any.
fn check_chunk(chunk: &[u8], base: usize) -> Result<(ChunkClass, Option<usize>), KeyExprError> {
    match chunk {
        b"*" => return Ok((ChunkClass::Star, None)),
        b"**" => return Ok((ChunkClass::DoubleStar, None)),
        _ => {}
    }
    let mut repeated_dollar_star = None;
    let mut last_dollar_star_end = None;
    let mut only_dollar_stars = true;
    let mut i = 0;
    while let Some(&c) = chunk.get(i) {
        match c {
            b'#' | b'?' => {
                return Err(KeyExprError::new(
                    KeyExprErrorKind::ForbiddenChar(char::from(c)),
                    base + i,
                ));
            }
            b'$' => {
                if chunk.get(i + 1) != Some(&b'*') {
                    return Err(KeyExprError::new(KeyExprErrorKind::LoneDollar, base + i));
                }
                if last_dollar_star_end == Some(i) && repeated_dollar_star.is_none() {
                    repeated_dollar_star = Some(base + i);
                }
                i += 2;
                last_dollar_star_end = Some(i);
                continue;
            }
            b'*' => {
                let kind = if chunk.get(i + 1) == Some(&b'*') {
                    KeyExprErrorKind::DoubleStarInChunk
                } else {
                    KeyExprErrorKind::StarInChunk
                };
                return Err(KeyExprError::new(kind, base + i));
            }
            _ => only_dollar_stars = false,
        }
        i += 1;
    }
    let class = if only_dollar_stars {
        ChunkClass::OnlyDollarStars
    } else {
        ChunkClass::Other
    };
    Ok((class, repeated_dollar_star))
}

/// Checks the grammar of `s`. Returns the offset of the first violation of the canon form, if
/// any. Grammar errors take precedence over canon-form violations.
fn check(s: &str) -> Result<Option<usize>, KeyExprError> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(KeyExprError::new(KeyExprErrorKind::Empty, 0));
    }
    let mut not_canonical = None;
    let mut previous_was_double = false;
    let mut start = 0;
    loop {
        let rest = bytes.get(start..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let chunk = rest.get(..len).unwrap_or_default();
        if chunk.is_empty() {
            return Err(KeyExprError::new(KeyExprErrorKind::EmptyChunk, start));
        }
        let (class, inner) = check_chunk(chunk, start)?;
        if not_canonical.is_none() {
            let starry = matches!(
                class,
                ChunkClass::Star | ChunkClass::DoubleStar | ChunkClass::OnlyDollarStars
            );
            if (previous_was_double && starry) || class == ChunkClass::OnlyDollarStars {
                not_canonical = Some(start);
            } else {
                not_canonical = inner;
            }
        }
        previous_was_double = class == ChunkClass::DoubleStar;
        if len == rest.len() {
            return Ok(not_canonical);
        }
        start += len + 1;
    }
}

// ---------------------------------------------------------------------------------------------
// KeyExpr
// ---------------------------------------------------------------------------------------------

/// A borrowed, validated, canonical key expression.
///
/// Construct it with [`KeyExpr::new`], which never allocates. The derived comparisons and hash
/// are those of the underlying string (string equality is set equality thanks to the canon
/// form).
///
/// ```
/// use hypha_core::keyexpr::KeyExpr;
///
/// let ke = KeyExpr::new("fleet/*/speed")?;
/// assert_eq!(ke.as_str(), "fleet/*/speed");
/// assert!(ke.is_wild());
/// assert_eq!(ke.chunks().collect::<Vec<_>>(), ["fleet", "*", "speed"]);
/// assert!(KeyExpr::new("fleet/**/*").is_err()); // not canonical: `fleet/*/**`
/// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyExpr<'a>(&'a str);

impl<'a> KeyExpr<'a> {
    /// Validates `s` as a canonical key expression.
    ///
    /// A valid but non-canonical expression is rejected with
    /// [`KeyExprErrorKind::NotCanonical`]; see `canonize` (feature `alloc`).
    pub fn new(s: &'a str) -> Result<Self, KeyExprError> {
        match check(s)? {
            None => Ok(Self(s)),
            Some(offset) => Err(KeyExprError::new(KeyExprErrorKind::NotCanonical, offset)),
        }
    }

    /// The expression as a string slice.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// The chunks of the expression, in order (double-ended).
    ///
    /// ```
    /// use hypha_core::keyexpr::KeyExpr;
    ///
    /// let ke = KeyExpr::new("a/**/c$*")?;
    /// assert_eq!(ke.chunks().rev().collect::<Vec<_>>(), ["c$*", "**", "a"]);
    /// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
    /// ```
    pub fn chunks(&self) -> Chunks<'a> {
        Chunks {
            inner: self.0.split('/'),
        }
    }

    /// Whether the expression contains any wildcard (`*`, `**` or `$*`), that is whether it may
    /// denote more than one key. A `$*` written inside a verbatim chunk counts, although it
    /// has no wildcard meaning there.
    ///
    /// ```
    /// use hypha_core::keyexpr::KeyExpr;
    ///
    /// assert!(!KeyExpr::new("a/b")?.is_wild());
    /// assert!(KeyExpr::new("a/b$*")?.is_wild());
    /// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
    /// ```
    pub fn is_wild(&self) -> bool {
        self.0.as_bytes().contains(&b'*')
    }

    /// Whether some key belongs to both `self` and `other`. Symmetric.
    ///
    /// ```
    /// use hypha_core::keyexpr::KeyExpr;
    ///
    /// let a = KeyExpr::new("a/b$*")?;
    /// let b = KeyExpr::new("a/$*c")?;
    /// assert!(a.intersects(&b)); // e.g. `a/bc`
    /// assert!(!a.intersects(&KeyExpr::new("a/c")?));
    /// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
    /// ```
    pub fn intersects(&self, other: &KeyExpr<'_>) -> bool {
        relation(self.0, other.0, Relation::Intersects)
    }

    /// Whether every key of `other` belongs to `self` (`self ⊇ other`).
    ///
    /// Like Zenoh, inclusion is decided chunk by chunk: a `**` of `other` is only included by a
    /// `**` of `self`. So `*/**` does not include `**/a`, although every key of `**/a` has at
    /// least one chunk. The answer is never `true` wrongly.
    ///
    /// ```
    /// use hypha_core::keyexpr::KeyExpr;
    ///
    /// let all = KeyExpr::new("a/**")?;
    /// assert!(all.includes(&KeyExpr::new("a")?));
    /// assert!(all.includes(&KeyExpr::new("a/*/c")?));
    /// assert!(!all.includes(&KeyExpr::new("b")?));
    /// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
    /// ```
    pub fn includes(&self, other: &KeyExpr<'_>) -> bool {
        relation(self.0, other.0, Relation::Includes)
    }
}

impl Deref for KeyExpr<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for KeyExpr<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl fmt::Display for KeyExpr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for KeyExpr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ke`{}`", self.0)
    }
}

impl PartialEq<str> for KeyExpr<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for KeyExpr<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'a> TryFrom<&'a str> for KeyExpr<'a> {
    type Error = KeyExprError;
    fn try_from(s: &'a str) -> Result<Self, KeyExprError> {
        Self::new(s)
    }
}

/// Iterator over the chunks of a [`KeyExpr`], from [`KeyExpr::chunks`].
#[derive(Clone, Debug)]
pub struct Chunks<'a> {
    inner: core::str::Split<'a, char>,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        self.inner.next()
    }
}

impl DoubleEndedIterator for Chunks<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.inner.next_back()
    }
}

impl FusedIterator for Chunks<'_> {}

// ---------------------------------------------------------------------------------------------
// Chunk-level relations
// ---------------------------------------------------------------------------------------------

/// The kind of a (valid, canonical) chunk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ChunkKind {
    /// No wildcard, not verbatim.
    Literal,
    /// Starts with `@`: only equal to itself.
    Verbatim,
    /// `*`
    Star,
    /// `**`
    DoubleStar,
    /// Contains `$*` (and does not start with `@`).
    Dsl,
}

impl ChunkKind {
    pub(crate) fn of(chunk: &str) -> Self {
        let bytes = chunk.as_bytes();
        match bytes {
            [b'@', ..] => Self::Verbatim,
            b"*" => Self::Star,
            b"**" => Self::DoubleStar,
            _ if bytes.contains(&b'*') => Self::Dsl,
            _ => Self::Literal,
        }
    }
}

/// Whether the chunk pattern `pattern` (which may contain `$*`) matches `text`. A `$*` in the
/// pattern matches any run of bytes of `text`, including the `$*` of a `text` that is itself a
/// pattern; literal bytes of the pattern never contain `$` or `*`, so they only match literal
/// bytes of `text`. This makes `glob(p, q)` decide `p ⊇ q` for `$*` patterns too.
fn glob(pattern: &str, text: &str) -> bool {
    // In a valid chunk every `$` starts a `$*`: splitting at `$` and dropping the `*` that
    // follows is splitting at `$*`, with a faster (single-byte) search.
    let Some((head, rest)) = pattern.split_once('$') else {
        return pattern == text;
    };
    let rest = rest.strip_prefix('*').unwrap_or(rest);
    let Some(text) = text.strip_prefix(head) else {
        return false;
    };
    let (middle, tail) = match rest.rsplit_once('$') {
        Some((middle, tail)) => (middle, tail.strip_prefix('*').unwrap_or(tail)),
        None => ("", rest),
    };
    let Some(mut text) = text.strip_suffix(tail) else {
        return false;
    };
    // Leftmost matching of each middle part is optimal: any later match leaves less text.
    for needle in middle.split('$').map(|n| n.strip_prefix('*').unwrap_or(n)) {
        if needle.is_empty() {
            continue;
        }
        match text.find(needle) {
            Some(at) => text = text.get(at + needle.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    true
}

/// Intersection of two `$*` patterns, both containing at least one `$*`: a common word exists
/// iff their literal heads are prefix-compatible and their literal tails suffix-compatible
/// (the word `longest head + all middle parts of both + longest tail` then matches both).
fn dsl_intersects(a: &str, b: &str) -> bool {
    fn head(s: &str) -> &str {
        s.split_once('$').map_or(s, |(h, _)| h)
    }
    fn tail(s: &str) -> &str {
        s.rsplit_once('$')
            .map_or(s, |(_, t)| t.strip_prefix('*').unwrap_or(t))
    }
    let (ha, hb, ta, tb) = (head(a), head(b), tail(a), tail(b));
    (ha.starts_with(hb) || hb.starts_with(ha)) && (ta.ends_with(tb) || tb.ends_with(ta))
}

/// Whether two single chunks (neither `**`) have a common value.
pub(crate) fn chunk_intersects(a: &str, b: &str) -> bool {
    use ChunkKind::*;
    if a == b {
        return true;
    }
    match (ChunkKind::of(a), ChunkKind::of(b)) {
        (Verbatim, _) | (_, Verbatim) => false,
        (Star | DoubleStar, _) | (_, Star | DoubleStar) => true,
        (Literal, Literal) => false,
        (Dsl, Literal) => glob(a, b),
        (Literal, Dsl) => glob(b, a),
        (Dsl, Dsl) => dsl_intersects(a, b),
    }
}

/// Whether the single chunk `a` includes the single chunk `b` (`b` may be `**`, which only
/// `**` includes).
pub(crate) fn chunk_includes(a: &str, b: &str) -> bool {
    use ChunkKind::*;
    if a == b {
        return true;
    }
    match (ChunkKind::of(a), ChunkKind::of(b)) {
        (Verbatim, _) | (_, Verbatim) => false,
        (_, DoubleStar) => false,
        (DoubleStar | Star, _) => true,
        (_, Star) => false,
        (Literal, _) => false,
        (Dsl, _) => glob(a, b),
    }
}

// ---------------------------------------------------------------------------------------------
// Expression-level relations
//
// Both relations are decided on "sections": the verbatim chunks of an expression can only be
// matched by identical verbatim chunks (no wildcard matches them and `**` cannot expand over
// them), so two expressions intersect (or one includes the other) only if they have the same
// sequence of verbatim chunks, and then iff each pair of verbatim-free sections between them
// does. Within verbatim-free sections:
//
// - intersection, neither side has `**`: same number of chunks, pairwise intersecting;
// - intersection, both sides have `**`: the chunks before the first `**` of each side must
//   pairwise intersect (up to the shorter run), and likewise the chunks after the last `**`;
//   everything else can be absorbed by the other side's `**`s;
// - intersection, one side has `**`: glob matching of that side against the other, with
//   chunk intersection as the character test; the leftmost occurrence of each segment between
//   `**`s is optimal because the following `**` can absorb whatever a later choice would have
//   consumed;
// - inclusion: the same glob matching, `self`'s `**` absorbing any chunks of `other`
//   (including its `*` and `**`), `self`'s other chunks each including one chunk of `other`.
//
// Every step is a bounded loop over the strings: no allocation, no recursion, O(n·m) chunk
// comparisons at worst.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    Intersects,
    Includes,
}

// Chunks are short: plain byte loops beat the generic (memchr-based) searches here.

/// Splits `s` at its first `/`: `(before, after)`, or `(s, "")` if there is none.
fn split_at_first_slash(s: &str) -> (&str, &str) {
    match s.bytes().position(|b| b == b'/') {
        Some(at) => (
            s.get(..at).unwrap_or_default(),
            s.get(at + 1..).unwrap_or_default(),
        ),
        None => (s, ""),
    }
}

/// Splits off the first chunk: `(chunk, rest)`; `None` once `s` is empty.
fn pop_front(s: &str) -> Option<(&str, &str)> {
    if s.is_empty() {
        return None;
    }
    Some(split_at_first_slash(s))
}

/// Splits off the last chunk: `(rest, chunk)`; `None` once `s` is empty.
fn pop_back(s: &str) -> Option<(&str, &str)> {
    if s.is_empty() {
        return None;
    }
    Some(match s.bytes().rposition(|b| b == b'/') {
        Some(at) => (
            s.get(..at).unwrap_or_default(),
            s.get(at + 1..).unwrap_or_default(),
        ),
        None => ("", s),
    })
}

/// Splits `s` around its first verbatim chunk: `(before, Some((verbatim, after)))`, or
/// `(s, None)` if there is none.
fn split_verbatim(s: &str) -> (&str, Option<(&str, &str)>) {
    let bytes = s.as_bytes();
    // `@` is rare: a branch-free (vectorizable) pass rules it out quickly.
    if !bytes.iter().fold(false, |seen, &b| seen | (b == b'@')) {
        return (s, None);
    }
    let mut previous = b'/';
    for (at, &b) in bytes.iter().enumerate() {
        if b == b'@' && previous == b'/' {
            let before = s.get(..at.saturating_sub(1)).unwrap_or_default();
            let from = s.get(at..).unwrap_or_default();
            return (before, Some(split_at_first_slash(from)));
        }
        previous = b;
    }
    (s, None)
}

/// Splits `s` around its first `**` chunk: `Some((before, after))`.
fn split_first_double(s: &str) -> Option<(&str, &str)> {
    let mut start = 0;
    for chunk in s.split('/') {
        let end = start + chunk.len();
        if chunk == "**" {
            let before = if start == 0 {
                ""
            } else {
                s.get(..start - 1).unwrap_or_default()
            };
            return Some((before, s.get(end + 1..).unwrap_or_default()));
        }
        start = end + 1;
    }
    None
}

/// Splits `s` around its last `**` chunk: `Some((before, after))`.
fn split_last_double(s: &str) -> Option<(&str, &str)> {
    let mut end = s.len();
    for chunk in s.rsplit('/') {
        let start = end - chunk.len();
        if chunk == "**" {
            let before = if start == 0 {
                ""
            } else {
                s.get(..start - 1).unwrap_or_default()
            };
            return Some((before, s.get(end + 1..).unwrap_or_default()));
        }
        end = start.saturating_sub(1);
    }
    None
}

/// Matches the chunks of `pattern` (no `**` among them) one by one against the first chunks of
/// `text`; returns the rest of `text`.
fn match_front<'t>(
    pattern: &str,
    mut text: &'t str,
    test: &impl Fn(&str, &str) -> bool,
) -> Option<&'t str> {
    let mut pattern = pattern;
    while let Some((p, prest)) = pop_front(pattern) {
        let (t, trest) = pop_front(text)?;
        if !test(p, t) {
            return None;
        }
        pattern = prest;
        text = trest;
    }
    Some(text)
}

/// Like [`match_front`], from the end.
fn match_back<'t>(
    pattern: &str,
    mut text: &'t str,
    test: &impl Fn(&str, &str) -> bool,
) -> Option<&'t str> {
    let mut pattern = pattern;
    while let Some((prest, p)) = pop_back(pattern) {
        let (trest, t) = pop_back(text)?;
        if !test(p, t) {
            return None;
        }
        pattern = prest;
        text = trest;
    }
    Some(text)
}

/// Matches `pattern` chunk by chunk against `text`, `**` chunks of the pattern absorbing any
/// number of chunks of `text`; `test(p, t)` decides whether pattern chunk `p` matches text
/// chunk `t`. Both are verbatim-free sections (possibly empty).
fn glob_chunks(pattern: &str, text: &str, test: &impl Fn(&str, &str) -> bool) -> bool {
    let Some((head, after_first)) = split_first_double(pattern) else {
        return match_front(pattern, text, test) == Some("");
    };
    let (mut middle, tail) = split_last_double(after_first).unwrap_or(("", after_first));
    let Some(text) = match_front(head, text, test) else {
        return false;
    };
    let Some(mut window) = match_back(tail, text, test) else {
        return false;
    };
    loop {
        let (segment, rest) =
            split_first_double(middle).map_or((middle, None), |(s, r)| (s, Some(r)));
        match find_leftmost(segment, window, test) {
            Some(after) => window = after,
            None => return false,
        }
        match rest {
            Some(rest) => middle = rest,
            None => return true,
        }
    }
}

/// Finds the leftmost position of `text` where `segment` matches; returns what follows it.
fn find_leftmost<'t>(
    segment: &str,
    mut text: &'t str,
    test: &impl Fn(&str, &str) -> bool,
) -> Option<&'t str> {
    loop {
        if let Some(rest) = match_front(segment, text, test) {
            return Some(rest);
        }
        text = pop_front(text)?.1;
    }
}

fn has_double(section: &str) -> bool {
    // A `**` chunk is a `**` preceded and followed by `/` or an end.
    let bytes = section.as_bytes();
    bytes.windows(2).enumerate().any(|(at, w)| {
        w == b"**"
            && (at == 0 || bytes.get(at - 1) == Some(&b'/'))
            && bytes.get(at + 2).is_none_or(|&b| b == b'/')
    })
}

/// Whether the chunks before the first `**` of each side (or after the last, `from_back`)
/// pairwise intersect, up to the shorter run. Both sides contain `**`.
fn ends_compatible(a: &str, b: &str, from_back: bool) -> bool {
    let (mut a, mut b) = (a, b);
    loop {
        let popped = if from_back {
            pop_back(a)
                .zip(pop_back(b))
                .map(|((ra, ca), (rb, cb))| (ca, ra, cb, rb))
        } else {
            pop_front(a)
                .zip(pop_front(b))
                .map(|((ca, ra), (cb, rb))| (ca, ra, cb, rb))
        };
        let Some((ca, ra, cb, rb)) = popped else {
            return true;
        };
        if ca == "**" || cb == "**" {
            return true;
        }
        if !chunk_intersects(ca, cb) {
            return false;
        }
        a = ra;
        b = rb;
    }
}

fn section_intersects(a: &str, b: &str) -> bool {
    match (has_double(a), has_double(b)) {
        (false, false) => match_front(a, b, &chunk_intersects) == Some(""),
        (true, true) => ends_compatible(a, b, false) && ends_compatible(a, b, true),
        (true, false) => glob_chunks(a, b, &chunk_intersects),
        (false, true) => glob_chunks(b, a, &chunk_intersects),
    }
}

fn section_includes(a: &str, b: &str) -> bool {
    glob_chunks(a, b, &|p, t| t != "**" && chunk_includes(p, t))
}

fn relation(a: &str, b: &str, rel: Relation) -> bool {
    if a == b {
        return true;
    }
    let (mut a, mut b) = (a, b);
    loop {
        let (section_a, verbatim_a) = split_verbatim(a);
        let (section_b, verbatim_b) = split_verbatim(b);
        let next = match (verbatim_a, verbatim_b) {
            (None, None) => None,
            (Some((va, ra)), Some((vb, rb))) if va == vb => Some((ra, rb)),
            _ => return false,
        };
        let ok = match rel {
            Relation::Intersects => section_intersects(section_a, section_b),
            Relation::Includes => section_includes(section_a, section_b),
        };
        match next {
            Some((ra, rb)) if ok => (a, b) = (ra, rb),
            _ => return ok,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Canon form and owned key expressions (alloc)
// ---------------------------------------------------------------------------------------------

/// Rewrites a syntactically valid expression into its canon form.
#[cfg(feature = "alloc")]
fn canonize_valid(s: &str) -> String {
    fn push_chunk(out: &mut String, chunk: &str) {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(chunk);
    }
    let mut out = String::with_capacity(s.len());
    let mut chunk_buf = String::new();
    // A run of `*` and `**` chunks is written as its `*`s followed by one `**` (if any).
    let mut pending_stars = 0usize;
    let mut pending_double = false;
    for chunk in s.split('/') {
        if chunk == "**" {
            pending_double = true;
            continue;
        }
        // Collapse `$*$*` into `$*`.
        chunk_buf.clear();
        let mut rest = chunk;
        while let Some((literal, after)) = rest.split_once("$*") {
            if !(literal.is_empty() && chunk_buf.ends_with("$*")) {
                chunk_buf.push_str(literal);
                chunk_buf.push_str("$*");
            }
            rest = after;
        }
        chunk_buf.push_str(rest);
        if chunk_buf == "*" || chunk_buf == "$*" {
            if pending_double {
                pending_stars += 1;
            } else {
                push_chunk(&mut out, "*");
            }
            continue;
        }
        for _ in 0..pending_stars {
            push_chunk(&mut out, "*");
        }
        if pending_double {
            push_chunk(&mut out, "**");
        }
        pending_stars = 0;
        pending_double = false;
        push_chunk(&mut out, &chunk_buf);
    }
    for _ in 0..pending_stars {
        push_chunk(&mut out, "*");
    }
    if pending_double {
        push_chunk(&mut out, "**");
    }
    out
}

/// Returns the canon form of a valid key expression, so that two expressions denoting the same
/// set of keys canonize to the same string. Fails (with the same error as [`KeyExpr::new`])
/// only if `s` is not a valid expression at all.
///
/// ```
/// use hypha_core::keyexpr::{canonize, KeyExpr};
///
/// assert_eq!(canonize("a/**/**/*/b$*$*")?, "a/*/**/b$*");
/// assert_eq!(canonize("$*/b")?, "*/b");
/// assert!(canonize("a//b").is_err());
/// KeyExpr::new(&canonize("**/*")?)?; // always canonical
/// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
/// ```
#[cfg(feature = "alloc")]
pub fn canonize(s: &str) -> Result<String, KeyExprError> {
    match check(s)? {
        None => Ok(String::from(s)),
        Some(_) => Ok(canonize_valid(s)),
    }
}

/// An owned, validated, canonical key expression (feature `alloc`).
///
/// ```
/// use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
///
/// let owned = OwnedKeyExpr::autocanonize("fleet/**/*".into())?;
/// assert_eq!(owned.as_str(), "fleet/*/**");
/// let parsed: OwnedKeyExpr = "fleet/car1".parse()?;
/// assert!(owned.as_keyexpr().includes(&parsed.as_keyexpr()));
/// assert!(OwnedKeyExpr::new("fleet/**/*".into()).is_err());
/// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
/// ```
#[cfg(feature = "alloc")]
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedKeyExpr(String);

#[cfg(feature = "alloc")]
impl OwnedKeyExpr {
    /// Validates `s` as a canonical key expression (see [`KeyExpr::new`]).
    pub fn new(s: String) -> Result<Self, KeyExprError> {
        KeyExpr::new(&s)?;
        Ok(Self(s))
    }

    /// `**`: every key.
    pub fn everything() -> Self {
        Self(String::from("**"))
    }

    /// Canonizes `s`, then wraps it. Fails only if `s` is not a valid expression.
    pub fn autocanonize(s: String) -> Result<Self, KeyExprError> {
        match check(&s)? {
            None => Ok(Self(s)),
            Some(_) => Ok(Self(canonize_valid(&s))),
        }
    }

    /// Borrows it as a [`KeyExpr`].
    pub fn as_keyexpr(&self) -> KeyExpr<'_> {
        KeyExpr(&self.0)
    }

    /// The expression as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unwraps the string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Joins two expressions with a `/` and canonizes the result (`a/**` joined with `*/b`
    /// gives `a/*/**/b`).
    ///
    /// ```
    /// use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
    ///
    /// let base = OwnedKeyExpr::new("a/**".into())?;
    /// assert_eq!(base.join(&KeyExpr::new("*/b")?).as_str(), "a/*/**/b");
    /// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
    /// ```
    pub fn join(&self, other: &KeyExpr<'_>) -> OwnedKeyExpr {
        let mut joined = String::with_capacity(self.0.len() + 1 + other.0.len());
        joined.push_str(&self.0);
        joined.push('/');
        joined.push_str(other.0);
        // Both sides are valid, so the concatenation is valid: only the canon form can break.
        Self(canonize_valid(&joined))
    }
}

#[cfg(feature = "alloc")]
impl Deref for OwnedKeyExpr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "alloc")]
impl AsRef<str> for OwnedKeyExpr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "alloc")]
impl core::borrow::Borrow<str> for OwnedKeyExpr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "alloc")]
impl fmt::Display for OwnedKeyExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for OwnedKeyExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_keyexpr().fmt(f)
    }
}

#[cfg(feature = "alloc")]
impl TryFrom<&str> for OwnedKeyExpr {
    type Error = KeyExprError;
    /// Canonical input only; see [`OwnedKeyExpr::autocanonize`].
    fn try_from(s: &str) -> Result<Self, KeyExprError> {
        KeyExpr::new(s)?;
        Ok(Self(String::from(s)))
    }
}

#[cfg(feature = "alloc")]
impl TryFrom<String> for OwnedKeyExpr {
    type Error = KeyExprError;
    /// Canonical input only; see [`OwnedKeyExpr::autocanonize`].
    fn try_from(s: String) -> Result<Self, KeyExprError> {
        Self::new(s)
    }
}

#[cfg(feature = "alloc")]
impl core::str::FromStr for OwnedKeyExpr {
    type Err = KeyExprError;
    /// Canonical input only; see [`OwnedKeyExpr::autocanonize`].
    fn from_str(s: &str) -> Result<Self, KeyExprError> {
        Self::try_from(s)
    }
}

#[cfg(feature = "alloc")]
impl From<KeyExpr<'_>> for OwnedKeyExpr {
    fn from(ke: KeyExpr<'_>) -> Self {
        Self(String::from(ke.0))
    }
}

#[cfg(feature = "alloc")]
impl From<&KeyExpr<'_>> for OwnedKeyExpr {
    fn from(ke: &KeyExpr<'_>) -> Self {
        Self(String::from(ke.0))
    }
}

#[cfg(feature = "alloc")]
impl From<OwnedKeyExpr> for String {
    fn from(ke: OwnedKeyExpr) -> Self {
        ke.0
    }
}

#[cfg(feature = "alloc")]
impl<'a> From<&'a OwnedKeyExpr> for KeyExpr<'a> {
    fn from(ke: &'a OwnedKeyExpr) -> Self {
        ke.as_keyexpr()
    }
}

#[cfg(feature = "alloc")]
impl PartialEq<KeyExpr<'_>> for OwnedKeyExpr {
    fn eq(&self, other: &KeyExpr<'_>) -> bool {
        self.0 == other.0
    }
}

#[cfg(feature = "alloc")]
impl PartialEq<OwnedKeyExpr> for KeyExpr<'_> {
    fn eq(&self, other: &OwnedKeyExpr) -> bool {
        self.0 == other.0
    }
}

#[cfg(feature = "alloc")]
impl PartialEq<str> for OwnedKeyExpr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

#[cfg(feature = "alloc")]
impl PartialEq<&str> for OwnedKeyExpr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
