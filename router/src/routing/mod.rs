//! Routing tables: who subscribes to, answers or holds a token on what — locally and per face.
//!
//! Synchronous and tokio-free, so it is tested without a runtime. Generic over the handle `H`
//! of a local declaration (the API's subscriber, queryable…), which it only clones.
//!
//! In peer mode, a publication made here goes to the matching local subscribers and to every
//! face (direct neighbour) that declared a matching subscriber; a publication that came in
//! through a face goes to local subscribers only (peers form a full mesh and do not forward).
//! Routes are cached per key and the cache is invalidated whenever a declaration changes; a
//! version number lets publishers keep their own cached route without taking the lock.

use hypha_core::id::NodeId;
use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
use std::collections::HashMap;
use std::sync::Arc;

/// Identifies a face (a link to a neighbour) for the lifetime of the node.
pub type FaceId = u64;

/// Identifies a local declaration.
pub type DeclId = u64;

/// What a face has declared to us.
#[derive(Debug, Default, Clone)]
pub struct FaceDecls {
    /// The neighbour.
    pub node: Option<NodeId>,
    /// Its subscribers, by its declaration id.
    pub subscribers: HashMap<u32, OwnedKeyExpr>,
    /// Its queryables: key and completeness.
    pub queryables: HashMap<u32, (OwnedKeyExpr, bool)>,
    /// Its liveliness tokens.
    pub tokens: HashMap<u32, OwnedKeyExpr>,
}

/// Where a publication goes.
#[derive(Debug)]
pub struct Route<H> {
    /// Local subscribers.
    pub local: Vec<H>,
    /// Faces with a matching subscriber.
    pub faces: Vec<FaceId>,
}

impl<H> Default for Route<H> {
    fn default() -> Self {
        Route {
            local: Vec::new(),
            faces: Vec::new(),
        }
    }
}

/// Matching queryables: local handles and faces, each with whether it is complete for the
/// queried key.
pub type QueryableMatches<H> = (Vec<(H, bool)>, Vec<(FaceId, bool)>);

/// A local declaration.
#[derive(Debug, Clone)]
pub struct Local<H> {
    /// Its key expression.
    pub key: OwnedKeyExpr,
    /// Its handle.
    pub handle: H,
}

/// The tables of one node.
#[derive(Debug)]
pub struct Tables<H> {
    next_id: DeclId,
    version: u64,
    /// Local subscribers.
    pub subscribers: HashMap<DeclId, Local<H>>,
    /// Local queryables (handle, complete flag).
    pub queryables: HashMap<DeclId, (Local<H>, bool)>,
    /// Local liveliness tokens.
    pub tokens: HashMap<DeclId, OwnedKeyExpr>,
    /// Local liveliness subscribers.
    pub liveliness_subscribers: HashMap<DeclId, Local<H>>,
    /// Declarations per face.
    pub faces: HashMap<FaceId, FaceDecls>,
    local_routes: HashMap<Arc<str>, Arc<Route<H>>>,
    remote_routes: HashMap<Arc<str>, Arc<Route<H>>>,
}

impl<H> Default for Tables<H> {
    fn default() -> Self {
        Tables {
            next_id: 1,
            version: 1,
            subscribers: HashMap::new(),
            queryables: HashMap::new(),
            tokens: HashMap::new(),
            liveliness_subscribers: HashMap::new(),
            faces: HashMap::new(),
            local_routes: HashMap::new(),
            remote_routes: HashMap::new(),
        }
    }
}

/// Most cached routes kept before the cache is cleared (bounds memory under many keys).
const MAX_CACHED_ROUTES: usize = 16_384;

impl<H: Clone> Tables<H> {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes whenever a declaration changes; a cached route is valid while it is unchanged.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn changed(&mut self) {
        self.version += 1;
        self.local_routes.clear();
        self.remote_routes.clear();
    }

    /// A fresh local declaration id.
    pub fn next_id(&mut self) -> DeclId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds a local subscriber.
    pub fn add_subscriber(&mut self, id: DeclId, key: OwnedKeyExpr, handle: H) {
        self.subscribers.insert(id, Local { key, handle });
        self.changed();
    }

    /// Removes a local subscriber.
    pub fn remove_subscriber(&mut self, id: DeclId) -> Option<Local<H>> {
        let r = self.subscribers.remove(&id);
        self.changed();
        r
    }

    /// Adds a local queryable.
    pub fn add_queryable(&mut self, id: DeclId, key: OwnedKeyExpr, handle: H, complete: bool) {
        self.queryables
            .insert(id, (Local { key, handle }, complete));
        self.changed();
    }

    /// Removes a local queryable.
    pub fn remove_queryable(&mut self, id: DeclId) -> bool {
        let r = self.queryables.remove(&id).is_some();
        self.changed();
        r
    }

    /// Registers a face (before its declarations arrive).
    pub fn add_face(&mut self, face: FaceId, node: Option<NodeId>) {
        self.faces.insert(
            face,
            FaceDecls {
                node,
                ..Default::default()
            },
        );
        self.changed();
    }

    /// Removes a face and everything it declared; returns its declarations (tokens vanish).
    pub fn remove_face(&mut self, face: FaceId) -> Option<FaceDecls> {
        let r = self.faces.remove(&face);
        self.changed();
        r
    }

    /// A face declared a subscriber.
    pub fn face_subscriber(&mut self, face: FaceId, id: u32, key: OwnedKeyExpr) {
        if let Some(f) = self.faces.get_mut(&face) {
            f.subscribers.insert(id, key);
            self.changed();
        }
    }

    /// A face withdrew a subscriber.
    pub fn face_unsubscriber(&mut self, face: FaceId, id: u32) {
        if let Some(f) = self.faces.get_mut(&face) {
            if f.subscribers.remove(&id).is_some() {
                self.changed();
            }
        }
    }

    /// A face declared a queryable.
    pub fn face_queryable(&mut self, face: FaceId, id: u32, key: OwnedKeyExpr, complete: bool) {
        if let Some(f) = self.faces.get_mut(&face) {
            f.queryables.insert(id, (key, complete));
            self.changed();
        }
    }

    /// A face withdrew a queryable.
    pub fn face_unqueryable(&mut self, face: FaceId, id: u32) {
        if let Some(f) = self.faces.get_mut(&face) {
            if f.queryables.remove(&id).is_some() {
                self.changed();
            }
        }
    }

    /// A face declared a token; returns `false` if it was already known.
    pub fn face_token(&mut self, face: FaceId, id: u32, key: OwnedKeyExpr) -> bool {
        self.faces
            .get_mut(&face)
            .is_some_and(|f| f.tokens.insert(id, key).is_none())
    }

    /// A face withdrew a token; returns its key.
    pub fn face_untoken(&mut self, face: FaceId, id: u32) -> Option<OwnedKeyExpr> {
        self.faces.get_mut(&face).and_then(|f| f.tokens.remove(&id))
    }

    /// Where a publication on `key` made by this node goes.
    pub fn route_local(&mut self, key: &Arc<str>) -> Arc<Route<H>> {
        if let Some(r) = self.local_routes.get(key) {
            return r.clone();
        }
        let r = Arc::new(self.compute(key, true));
        if self.local_routes.len() >= MAX_CACHED_ROUTES {
            self.local_routes.clear();
        }
        self.local_routes.insert(key.clone(), r.clone());
        r
    }

    /// Where a publication on `key` received from a face goes (local subscribers only).
    pub fn route_remote(&mut self, key: &Arc<str>) -> Arc<Route<H>> {
        if let Some(r) = self.remote_routes.get(key) {
            return r.clone();
        }
        let r = Arc::new(self.compute(key, false));
        if self.remote_routes.len() >= MAX_CACHED_ROUTES {
            self.remote_routes.clear();
        }
        self.remote_routes.insert(key.clone(), r.clone());
        r
    }

    fn compute(&self, key: &str, to_faces: bool) -> Route<H> {
        let Ok(k) = KeyExpr::new(key) else {
            return Route::default();
        };
        let local = self
            .subscribers
            .values()
            .filter(|s| s.key.as_keyexpr().intersects(&k))
            .map(|s| s.handle.clone())
            .collect();
        let mut faces: Vec<FaceId> = if to_faces {
            self.faces
                .iter()
                .filter(|(_, f)| {
                    f.subscribers
                        .values()
                        .any(|s| s.as_keyexpr().intersects(&k))
                })
                .map(|(id, _)| *id)
                .collect()
        } else {
            Vec::new()
        };
        faces.sort_unstable();
        Route { local, faces }
    }

    /// True if any subscriber, local or remote, matches `key`.
    pub fn has_subscriber(&self, key: &KeyExpr<'_>) -> bool {
        self.subscribers
            .values()
            .any(|s| s.key.as_keyexpr().intersects(key))
            || self.faces.values().any(|f| {
                f.subscribers
                    .values()
                    .any(|s| s.as_keyexpr().intersects(key))
            })
    }

    /// How many holders (this node, faces) have a token on exactly `key`: liveliness is per
    /// key, so a key is alive while at least one holder remains.
    pub fn token_holders(&self, key: &OwnedKeyExpr) -> usize {
        self.tokens.values().filter(|k| *k == key).count()
            + self
                .faces
                .values()
                .map(|f| f.tokens.values().filter(|k| *k == key).count())
                .sum::<usize>()
    }

    /// Every liveliness token visible here (local and remote) intersecting `key`.
    pub fn tokens_matching(&self, key: &KeyExpr<'_>) -> Vec<OwnedKeyExpr> {
        let mut v: Vec<OwnedKeyExpr> = self
            .tokens
            .values()
            .chain(self.faces.values().flat_map(|f| f.tokens.values()))
            .filter(|t| t.as_keyexpr().intersects(key))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Local liveliness subscribers matching a token key.
    pub fn liveliness_subscribers_for(&self, token: &KeyExpr<'_>) -> Vec<H> {
        self.liveliness_subscribers
            .values()
            .filter(|s| s.key.as_keyexpr().intersects(token))
            .map(|s| s.handle.clone())
            .collect()
    }

    /// Queryables (local handles, and faces) matching a query key.
    pub fn queryables_for(&self, key: &KeyExpr<'_>) -> QueryableMatches<H> {
        let local = self
            .queryables
            .values()
            .filter(|(q, _)| q.key.as_keyexpr().intersects(key))
            .map(|(q, c)| (q.handle.clone(), *c))
            .collect();
        let mut faces: Vec<(FaceId, bool)> = self
            .faces
            .iter()
            .filter_map(|(id, f)| {
                let m: Vec<bool> = f
                    .queryables
                    .values()
                    .filter(|(q, _)| q.as_keyexpr().intersects(key))
                    .map(|(q, c)| *c && q.as_keyexpr().includes(key))
                    .collect();
                (!m.is_empty()).then(|| (*id, m.iter().any(|c| *c)))
            })
            .collect();
        faces.sort_unstable();
        (local, faces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> OwnedKeyExpr {
        OwnedKeyExpr::new(s.to_string()).unwrap()
    }

    #[test]
    fn routes_follow_declarations_and_are_invalidated() {
        let mut t: Tables<&'static str> = Tables::new();
        let key: Arc<str> = "fleet/car1/speed".into();
        assert!(t.route_local(&key).local.is_empty());
        let v0 = t.version();
        let id = t.next_id();
        t.add_subscriber(id, k("fleet/*/speed"), "local-sub");
        assert!(t.version() > v0);
        t.add_face(7, None);
        t.face_subscriber(7, 1, k("fleet/**"));
        t.add_face(8, None);
        t.face_subscriber(8, 1, k("other/**"));
        let r = t.route_local(&key);
        assert_eq!(r.local, ["local-sub"]);
        assert_eq!(r.faces, [7]);
        // Publications from a face are not forwarded to other faces in peer mode.
        let r = t.route_remote(&key);
        assert_eq!(r.local, ["local-sub"]);
        assert!(r.faces.is_empty());
        t.face_unsubscriber(7, 1);
        assert!(t.route_local(&key).faces.is_empty());
        t.remove_subscriber(id);
        assert!(t.route_local(&key).local.is_empty());
        assert!(!t.has_subscriber(&KeyExpr::new("fleet/car1/speed").unwrap()));
        assert!(t.has_subscriber(&KeyExpr::new("other/x").unwrap()));
    }

    #[test]
    fn removing_a_face_drops_its_declarations_and_returns_its_tokens() {
        let mut t: Tables<u8> = Tables::new();
        t.add_face(1, Some(NodeId::from_u128(9)));
        assert!(t.face_token(1, 5, k("group/a")));
        assert!(!t.face_token(1, 5, k("group/a")));
        t.tokens.insert(99, k("group/me"));
        assert_eq!(
            t.tokens_matching(&KeyExpr::new("group/*").unwrap()),
            [k("group/a"), k("group/me")]
        );
        let gone = t.remove_face(1).unwrap();
        assert_eq!(gone.tokens.get(&5), Some(&k("group/a")));
        assert_eq!(
            t.tokens_matching(&KeyExpr::new("group/*").unwrap()),
            [k("group/me")]
        );
    }

    #[test]
    fn queryables_report_completeness() {
        let mut t: Tables<u8> = Tables::new();
        t.add_face(1, None);
        t.face_queryable(1, 1, k("store/**"), true);
        t.add_face(2, None);
        t.face_queryable(2, 1, k("store/a"), true);
        let id = t.next_id();
        t.add_queryable(id, k("store/*"), 3, false);
        let (local, faces) = t.queryables_for(&KeyExpr::new("store/*").unwrap());
        assert_eq!(local, [(3, false)]);
        // Face 1 holds all of store/* (complete and including); face 2 only part of it.
        assert_eq!(faces, [(1, true), (2, false)]);
    }
}
