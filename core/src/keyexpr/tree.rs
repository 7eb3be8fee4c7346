//! [`KeTree`]: values indexed by key expression, in a chunk trie.
//!
//! Every node of the trie stands for a sequence of chunks. Its children are split in two: the
//! *literal* children (plain and verbatim chunks) in a `BTreeMap`, so that a concrete chunk of a
//! query finds its only possible literal match in logarithmic time, and the *wild* children
//! (`*`, `**`, chunks with `$*`) in a second map, which every query walks through (so many
//! distinct `$*` chunks under one node make every query there slower).
//!
//! A query walks the trie depth-first with an explicit stack (no recursion). At each node it
//! carries the set of positions the query expression can be at after matching the chunks of
//! that node's path: a product automaton of the entry expressions (the trie) and the query
//! expression. Subtrees whose set is empty are never entered, and literal children are looked
//! up by name whenever every live query position holds a literal chunk.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::collections::btree_map;
use alloc::vec::Vec;
use core::fmt;
use core::iter::FusedIterator;

use super::{ChunkKind, KeyExpr, OwnedKeyExpr, chunk_includes, chunk_intersects};

/// A map from key expressions to values, structured as a trie of chunks, answering which
/// entries intersect, include or are included by a given key expression.
///
/// Entries are keyed by exact expression: [`get`](KeTree::get), [`insert`](KeTree::insert)
/// and [`remove`](KeTree::remove) compare strings (which, expressions being canonical, is set
/// equality). The query methods return iterators of `(KeyExpr<'_>, &V)` borrowing from the
/// tree; the order of entries is unspecified.
///
/// ```
/// use hypha_core::keyexpr::{KeTree, KeyExpr};
///
/// let mut subscribers = KeTree::new();
/// subscribers.insert(&KeyExpr::new("fleet/*/speed")?, "speed-watcher");
/// subscribers.insert(&KeyExpr::new("fleet/**")?, "logger");
/// subscribers.insert(&KeyExpr::new("fleet/car1/fuel")?, "fuel-gauge");
///
/// let key = KeyExpr::new("fleet/car1/speed")?;
/// let mut hits: Vec<_> = subscribers.intersecting(&key).map(|(_, v)| *v).collect();
/// hits.sort();
/// assert_eq!(hits, ["logger", "speed-watcher"]);
///
/// // Entries that include a whole subscription, and entries a subscription covers.
/// let cars = KeyExpr::new("fleet/car1/**")?;
/// assert_eq!(subscribers.including(&cars).map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
///            ["fleet/**"]);
/// assert_eq!(subscribers.included_by(&cars).map(|(_, v)| *v).collect::<Vec<_>>(),
///            ["fuel-gauge"]);
/// # Ok::<(), hypha_core::keyexpr::KeyExprError>(())
/// ```
pub struct KeTree<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    /// The kind of the chunk leading to this node (`Literal` for the root).
    kind: ChunkKind,
    entry: Option<(OwnedKeyExpr, V)>,
    /// Plain and verbatim chunks.
    literal: BTreeMap<Box<str>, Node<V>>,
    /// `*`, `**` and chunks containing `$*`.
    wild: BTreeMap<Box<str>, Node<V>>,
}

impl<V> Node<V> {
    const fn new(kind: ChunkKind) -> Self {
        Self {
            kind,
            entry: None,
            literal: BTreeMap::new(),
            wild: BTreeMap::new(),
        }
    }

    fn child_count(&self) -> usize {
        self.literal.len() + self.wild.len()
    }

    fn children(&self, chunk: &str) -> &BTreeMap<Box<str>, Node<V>> {
        if is_literal(ChunkKind::of(chunk)) {
            &self.literal
        } else {
            &self.wild
        }
    }

    fn children_mut(&mut self, chunk: &str) -> &mut BTreeMap<Box<str>, Node<V>> {
        if is_literal(ChunkKind::of(chunk)) {
            &mut self.literal
        } else {
            &mut self.wild
        }
    }

    fn child(&self, chunk: &str) -> Option<&Node<V>> {
        self.children(chunk).get(chunk)
    }

    fn child_mut(&mut self, chunk: &str) -> Option<&mut Node<V>> {
        self.children_mut(chunk).get_mut(chunk)
    }

    fn child_or_insert(&mut self, chunk: &str) -> &mut Node<V> {
        let kind = ChunkKind::of(chunk);
        let children = if is_literal(kind) {
            &mut self.literal
        } else {
            &mut self.wild
        };
        children
            .entry(Box::from(chunk))
            .or_insert_with(|| Node::new(kind))
    }

    fn remove_child(&mut self, chunk: &str) -> Option<Node<V>> {
        self.children_mut(chunk).remove(chunk)
    }
}

fn is_literal(kind: ChunkKind) -> bool {
    matches!(kind, ChunkKind::Literal | ChunkKind::Verbatim)
}

/// Drops a subtree without recursion (a trie as deep as a key is long would otherwise recurse
/// once per chunk).
fn dismantle<V>(node: Node<V>) {
    let mut stack = alloc::vec![node];
    while let Some(mut node) = stack.pop() {
        stack.extend(core::mem::take(&mut node.literal).into_values());
        stack.extend(core::mem::take(&mut node.wild).into_values());
    }
}

impl<V> Drop for KeTree<V> {
    fn drop(&mut self) {
        dismantle(core::mem::replace(
            &mut self.root,
            Node::new(ChunkKind::Literal),
        ));
    }
}

impl<V> Default for KeTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for KeTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> KeTree<V> {
    /// An empty tree.
    pub const fn new() -> Self {
        Self {
            root: Node::new(ChunkKind::Literal),
            len: 0,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree has no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        dismantle(core::mem::replace(
            &mut self.root,
            Node::new(ChunkKind::Literal),
        ));
        self.len = 0;
    }

    /// Inserts `value` under `key`, returning the value it replaces, if any.
    pub fn insert(&mut self, key: &KeyExpr<'_>, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for chunk in key.chunks() {
            node = node.child_or_insert(chunk);
        }
        match &mut node.entry {
            Some((_, old)) => Some(core::mem::replace(old, value)),
            entry @ None => {
                *entry = Some((OwnedKeyExpr::from(key), value));
                self.len += 1;
                None
            }
        }
    }

    /// The value stored under exactly `key`.
    pub fn get(&self, key: &KeyExpr<'_>) -> Option<&V> {
        let mut node = &self.root;
        for chunk in key.chunks() {
            node = node.child(chunk)?;
        }
        node.entry.as_ref().map(|(_, v)| v)
    }

    /// The value stored under exactly `key`, mutably.
    pub fn get_mut(&mut self, key: &KeyExpr<'_>) -> Option<&mut V> {
        let mut node = &mut self.root;
        for chunk in key.chunks() {
            node = node.child_mut(chunk)?;
        }
        node.entry.as_mut().map(|(_, v)| v)
    }

    /// Whether an entry is stored under exactly `key`.
    pub fn contains_key(&self, key: &KeyExpr<'_>) -> bool {
        self.get(key).is_some()
    }

    /// Removes the entry stored under exactly `key`, returning its value. Nodes left without
    /// entries below them are freed.
    pub fn remove(&mut self, key: &KeyExpr<'_>) -> Option<V> {
        // First pass: find the entry, and the deepest node on its path that must survive (the
        // root, or a node holding another entry or another branch). If the entry's node has no
        // children, the whole branch below that survivor goes.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (depth, chunk) in key.chunks().enumerate() {
            if depth > 0 && (node.entry.is_some() || node.child_count() > 1) {
                keep_depth = depth;
            }
            node = node.child(chunk)?;
        }
        node.entry.as_ref()?;
        let prune = node.child_count() == 0;
        // Second pass: take the entry, detaching the useless branch if any.
        let mut chunks = key.chunks();
        let mut node = &mut self.root;
        let value = if prune {
            for chunk in chunks.by_ref().take(keep_depth) {
                node = node.child_mut(chunk)?;
            }
            let mut branch = node.remove_child(chunks.next()?)?;
            let mut node = &mut branch;
            for chunk in chunks {
                node = node.child_mut(chunk)?;
            }
            let value = node.entry.take()?.1;
            dismantle(branch);
            value
        } else {
            for chunk in chunks {
                node = node.child_mut(chunk)?;
            }
            node.entry.take()?.1
        };
        self.len -= 1;
        Some(value)
    }

    /// The number of children of the node at `path` (chunks separated by `/`, `""` for the
    /// root), for tests of pruning.
    #[cfg(test)]
    pub(super) fn child_count_at(&self, path: &str) -> Option<usize> {
        let mut node = &self.root;
        for chunk in path.split('/').filter(|c| !c.is_empty()) {
            node = node.child(chunk)?;
        }
        Some(node.child_count())
    }

    /// Iterates over every entry, in unspecified order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            stack: alloc::vec![&self.root],
        }
    }

    /// The entries whose expression intersects `key` (they have at least one key in common).
    pub fn intersecting<'t, 'q>(&'t self, key: &KeyExpr<'q>) -> Matches<'t, 'q, V> {
        Matches::new(&self.root, *key, Rel::Intersects)
    }

    /// The entries whose expression includes `key` (every key of `key` belongs to them), in
    /// the sense of [`KeyExpr::includes`].
    pub fn including<'t, 'q>(&'t self, key: &KeyExpr<'q>) -> Matches<'t, 'q, V> {
        Matches::new(&self.root, *key, Rel::Including)
    }

    /// The entries whose expression `key` includes, in the sense of [`KeyExpr::includes`].
    pub fn included_by<'t, 'q>(&'t self, key: &KeyExpr<'q>) -> Matches<'t, 'q, V> {
        Matches::new(&self.root, *key, Rel::IncludedBy)
    }
}

impl<'a, V> IntoIterator for &'a KeTree<V> {
    type Item = (KeyExpr<'a>, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<'k, V> Extend<(KeyExpr<'k>, V)> for KeTree<V> {
    fn extend<I: IntoIterator<Item = (KeyExpr<'k>, V)>>(&mut self, iter: I) {
        for (key, value) in iter {
            self.insert(&key, value);
        }
    }
}

impl<'k, V> FromIterator<(KeyExpr<'k>, V)> for KeTree<V> {
    fn from_iter<I: IntoIterator<Item = (KeyExpr<'k>, V)>>(iter: I) -> Self {
        let mut tree = Self::new();
        tree.extend(iter);
        tree
    }
}

/// Iterator over all the entries of a [`KeTree`], from [`KeTree::iter`].
pub struct Iter<'t, V> {
    stack: Vec<&'t Node<V>>,
}

impl<'t, V> Iterator for Iter<'t, V> {
    type Item = (KeyExpr<'t>, &'t V);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let node = self.stack.pop()?;
            self.stack.extend(node.wild.values());
            self.stack.extend(node.literal.values());
            if let Some((key, value)) = &node.entry {
                return Some((key.as_keyexpr(), value));
            }
        }
    }
}

impl<V> FusedIterator for Iter<'_, V> {}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rel {
    /// Entry ∩ query ≠ ∅.
    Intersects,
    /// Entry ⊇ query.
    Including,
    /// Query ⊇ entry.
    IncludedBy,
}

#[derive(Clone, Copy)]
struct QueryChunk<'q> {
    text: &'q str,
    kind: ChunkKind,
}

/// Where a frame is in the enumeration of its node's children.
enum Cursor<'t, V> {
    /// The node's own entry has not been looked at yet.
    Entry,
    /// Going through the wild children.
    Wild(btree_map::Iter<'t, Box<str>, Node<V>>),
    /// Going through every literal child.
    AllLiterals(btree_map::Iter<'t, Box<str>, Node<V>>),
    /// Looking up the literal child named by the query chunk at each live position, in turn;
    /// the index is into `states`, within the frame's range.
    Lookup(usize),
}

struct Frame<'t, V> {
    node: &'t Node<V>,
    /// The frame's live query positions are `states[lo..hi]`, sorted and deduplicated.
    lo: usize,
    hi: usize,
    /// Whether all literal children must be tried (rather than looked up by name).
    scan_literals: bool,
    cursor: Cursor<'t, V>,
}

/// Iterator over the entries of a [`KeTree`] related to a query expression, from
/// [`KeTree::intersecting`], [`KeTree::including`] and [`KeTree::included_by`].
///
/// It walks the trie lazily: stopping early (for instance with `.next().is_some()`) saves the
/// rest of the walk.
pub struct Matches<'t, 'q, V> {
    rel: Rel,
    query: Vec<QueryChunk<'q>>,
    /// Stack of state sets; each frame owns a contiguous range, above its parent's.
    states: Vec<u32>,
    /// Where the state set being built starts in `states`.
    building: usize,
    stack: Vec<Frame<'t, V>>,
}

impl<'t, 'q, V> Matches<'t, 'q, V> {
    fn new(root: &'t Node<V>, key: KeyExpr<'q>, rel: Rel) -> Self {
        let query: Vec<_> = key
            .chunks()
            .map(|text| QueryChunk {
                text,
                kind: ChunkKind::of(text),
            })
            .collect();
        let mut this = Self {
            rel,
            query,
            states: Vec::new(),
            building: 0,
            stack: Vec::new(),
        };
        this.emit(0);
        this.push_frame(root, 0);
        this
    }

    fn chunk(&self, position: u32) -> Option<QueryChunk<'q>> {
        self.query.get(position as usize).copied()
    }

    /// Adds `position` to the state set being built (positions arrive in nondecreasing order),
    /// then, where the query may skip its `**` (intersection, and inclusion by the query), the
    /// positions after it.
    fn emit(&mut self, mut position: u32) {
        loop {
            if self.states.len() > self.building
                && self.states.last().is_some_and(|&last| last >= position)
            {
                return;
            }
            self.states.push(position);
            let skips_double = self.rel != Rel::Including
                && self
                    .chunk(position)
                    .is_some_and(|c| c.kind == ChunkKind::DoubleStar);
            if !skips_double {
                return;
            }
            position += 1;
        }
    }

    /// Pushes the state set reached from `states[lo..hi]` through the entry chunk `chunk`.
    fn step(&mut self, lo: usize, hi: usize, chunk: &str, kind: ChunkKind) {
        for index in lo..hi {
            let Some(&position) = self.states.get(index) else {
                break;
            };
            if kind == ChunkKind::DoubleStar && self.rel != Rel::IncludedBy {
                // The entry's `**` absorbs query chunks up to the next verbatim one.
                let mut p = position;
                loop {
                    self.emit(p);
                    match self.chunk(p) {
                        Some(c) if c.kind != ChunkKind::Verbatim => p += 1,
                        _ => break,
                    }
                }
                continue;
            }
            let Some(q) = self.chunk(position) else {
                continue;
            };
            match (self.rel, q.kind) {
                (Rel::Intersects | Rel::IncludedBy, ChunkKind::DoubleStar) => {
                    // The query's `**` absorbs the entry chunk.
                    if kind != ChunkKind::Verbatim {
                        self.emit(position);
                    }
                }
                (Rel::Intersects, _) => {
                    if chunk_intersects(chunk, q.text) {
                        self.emit(position + 1);
                    }
                }
                (Rel::Including, _) => {
                    if q.kind != ChunkKind::DoubleStar && chunk_includes(chunk, q.text) {
                        self.emit(position + 1);
                    }
                }
                (Rel::IncludedBy, _) => {
                    if kind != ChunkKind::DoubleStar && chunk_includes(q.text, chunk) {
                        self.emit(position + 1);
                    }
                }
            }
        }
    }

    /// Pushes a frame for `node`, whose state set is `states[lo..]`.
    fn push_frame(&mut self, node: &'t Node<V>, lo: usize) {
        let hi = self.states.len();
        // A literal entry chunk only includes the identical chunk, and only intersects (or is
        // included by) a wildcard or the identical chunk: unless a live query chunk is a
        // wildcard, the literal children worth visiting are found by name.
        let scan_literals = self.rel != Rel::Including
            && self
                .states
                .get(lo..hi)
                .unwrap_or_default()
                .iter()
                .any(|&p| self.chunk(p).is_some_and(|c| !is_literal(c.kind)));
        self.stack.push(Frame {
            node,
            lo,
            hi,
            scan_literals,
            cursor: Cursor::Entry,
        });
    }

    /// Tries to descend into `child` through `chunk`: pushes a frame if some query position
    /// survives.
    fn descend(&mut self, lo: usize, hi: usize, chunk: &str, child: &'t Node<V>) {
        let new_lo = self.states.len();
        self.building = new_lo;
        self.step(lo, hi, chunk, child.kind);
        if self.states.len() > new_lo {
            self.push_frame(child, new_lo);
        }
    }

    /// The next literal child to look up by name, for the frame on top of the stack.
    fn next_lookup(
        &self,
        node: &'t Node<V>,
        lo: usize,
        hi: usize,
        index: &mut usize,
    ) -> Option<(&'t str, &'t Node<V>)> {
        while *index < hi {
            let i = *index;
            *index += 1;
            let Some(q) = self.states.get(i).and_then(|&p| self.chunk(p)) else {
                continue;
            };
            if !is_literal(q.kind) {
                continue;
            }
            // Skip a name already looked up from an earlier position.
            let seen = self
                .states
                .get(lo..i)
                .unwrap_or_default()
                .iter()
                .any(|&p| self.chunk(p).is_some_and(|o| o.text == q.text));
            if seen {
                continue;
            }
            if let Some((chunk, child)) = node.literal.get_key_value(q.text) {
                return Some((chunk, child));
            }
        }
        None
    }
}

impl<'t, V> Iterator for Matches<'t, '_, V> {
    type Item = (KeyExpr<'t>, &'t V);

    fn next(&mut self) -> Option<Self::Item> {
        let end = self.query.len() as u32;
        loop {
            let frame = self.stack.last_mut()?;
            let (lo, hi, node) = (frame.lo, frame.hi, frame.node);
            // The next child to try, if any.
            let next = match &mut frame.cursor {
                Cursor::Entry => {
                    frame.cursor = Cursor::Wild(node.wild.iter());
                    let accepted = hi > lo && self.states.get(hi - 1) == Some(&end);
                    if accepted && let Some((key, value)) = &node.entry {
                        return Some((key.as_keyexpr(), value));
                    }
                    continue;
                }
                Cursor::Wild(children) => match children.next() {
                    Some((chunk, child)) => Some((&**chunk, child)),
                    None => {
                        frame.cursor = if frame.scan_literals {
                            Cursor::AllLiterals(node.literal.iter())
                        } else {
                            Cursor::Lookup(lo)
                        };
                        continue;
                    }
                },
                Cursor::AllLiterals(children) => children.next().map(|(c, n)| (&**c, n)),
                Cursor::Lookup(index) => {
                    let mut i = *index;
                    let found = self.next_lookup(node, lo, hi, &mut i);
                    if let Some(Frame {
                        cursor: Cursor::Lookup(index),
                        ..
                    }) = self.stack.last_mut()
                    {
                        *index = i;
                    }
                    found
                }
            };
            match next {
                Some((chunk, child)) => self.descend(lo, hi, chunk, child),
                None => {
                    self.stack.pop();
                    self.states.truncate(lo);
                }
            }
        }
    }
}

impl<V> FusedIterator for Matches<'_, '_, V> {}
