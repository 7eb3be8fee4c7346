//! Access control: who may publish, subscribe, query and answer on which keys.
//!
//! - A [`Principal`] is the identity a node sees on a link: from the peer's verified certificate
//!   (URI SAN, then DNS SAN, then CN; see [`identity`]), or `anonymous`.
//! - An [`Acl`] is compiled from the `[acl]` section of the configuration (see [`AclFile`]):
//!   a default (`deny` once the section exists) and rules naming principals (`who`), operations
//!   (`ops`) and key expressions (`keys`, with `${id}` templates), each `allow` or `deny`.
//! - **Deny wins** across every rule that matches the principal. A concrete key (put, delete,
//!   reply, token) is allowed when an allow rule's key includes it and no deny rule's key
//!   intersects it. A wildcard declaration (sub, query, queryable, token_sub) is accepted when it
//!   intersects an allow and no deny includes it whole; what it then receives is filtered per key.
//! - The node enforces the rules on every face, against the principal of the neighbour on that
//!   face, on ingress (what it sends us) and egress (what it may see). See `net::intercept`.
//!
//! [`Acl::for_principal`] pre-expands the rules that apply to one principal ([`FaceRules`]), so a
//! decision on a link costs a walk over that principal's rules only, and samples are decided
//! once per key and cached with the route.

pub(crate) mod enforce;
pub mod identity;
#[cfg(test)]
mod tests;

use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr, canonize};
pub use hypha_core::wire::AclOp as Op;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The longest principal name accepted (bytes).
pub const MAX_PRINCIPAL_LEN: usize = 256;

/// The name of the anonymous principal (a link without a verified credential).
pub const ANONYMOUS: &str = "anonymous";

/// An operation's name in rules and on the command line.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Put => "put",
        Op::Delete => "delete",
        Op::Sub => "sub",
        Op::Query => "query",
        Op::Queryable => "queryable",
        Op::Reply => "reply",
        Op::Token => "token",
        Op::TokenSub => "token_sub",
        Op::Admin => "admin",
    }
}

const ALL_OPS: [Op; 9] = [
    Op::Put,
    Op::Delete,
    Op::Sub,
    Op::Query,
    Op::Queryable,
    Op::Reply,
    Op::Token,
    Op::TokenSub,
    Op::Admin,
];

/// Parses an operation name, or a shorthand: `write` (put, delete), `read` (sub, query,
/// token_sub), `serve` (queryable, reply), `all`.
pub fn parse_ops(name: &str) -> Option<Vec<Op>> {
    Some(match name {
        "write" => vec![Op::Put, Op::Delete],
        "read" => vec![Op::Sub, Op::Query, Op::TokenSub],
        "serve" => vec![Op::Queryable, Op::Reply],
        "all" => ALL_OPS.to_vec(),
        n => vec![*ALL_OPS.iter().find(|o| op_name(**o) == n)?],
    })
}

/// Whether an operation names one concrete key (put, delete, reply, token) rather than a
/// key expression that is then filtered per key (sub, query, queryable, token_sub, admin).
pub fn is_concrete(op: Op) -> bool {
    matches!(op, Op::Put | Op::Delete | Op::Reply | Op::Token)
}

fn op_bit(op: Op) -> u16 {
    1 << (op as u16)
}

/// Why a principal name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    /// Empty, or longer than [`MAX_PRINCIPAL_LEN`].
    #[error("principal {0:?} is empty or longer than {MAX_PRINCIPAL_LEN} bytes")]
    Length(String),
    /// It holds key-expression syntax (`*`, `$`, `?`, `#`, `@`), an empty chunk, or a control
    /// or space character: substituted into a rule template it could widen the grant.
    #[error(
        "principal {0:?} contains key-expression syntax, an empty chunk or a blank: refused before it reaches a rule template"
    )]
    Syntax(String),
}

/// The identity a node sees on a link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    name: Arc<str>,
    spki: Option<Arc<str>>,
}

impl Principal {
    /// A link without a verified credential.
    pub fn anonymous() -> Self {
        Principal {
            name: Arc::from(ANONYMOUS),
            spki: None,
        }
    }

    /// A named principal; the name must be a safe key-expression literal (chunks separated by
    /// `/`, none empty, no `*$?#@`, no blanks).
    pub fn new(name: &str) -> Result<Self, PrincipalError> {
        validate_principal(name)?;
        Ok(Principal {
            name: Arc::from(name),
            spki: None,
        })
    }

    /// With the SHA-256 fingerprint of the credential's public key (`spki:sha256:<hex>`).
    pub fn with_spki(mut self, spki: String) -> Self {
        self.spki = Some(Arc::from(spki));
        self
    }

    /// The name (`anonymous` for no credential).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key fingerprint, when the credential has one.
    pub fn spki(&self) -> Option<&str> {
        self.spki.as_deref()
    }

    /// True for the anonymous principal.
    pub fn is_anonymous(&self) -> bool {
        self.spki.is_none() && &*self.name == ANONYMOUS
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Checks that `name` can stand for a principal (see [`PrincipalError::Syntax`]).
pub fn validate_principal(name: &str) -> Result<(), PrincipalError> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_LEN {
        return Err(PrincipalError::Length(name.chars().take(64).collect()));
    }
    let bad =
        |c: char| matches!(c, '*' | '$' | '?' | '#' | '@') || c.is_whitespace() || c.is_control();
    if name.contains(bad) || name.split('/').any(str::is_empty) {
        return Err(PrincipalError::Syntax(name.chars().take(64).collect()));
    }
    Ok(())
}

// ----- the configuration -------------------------------------------------------------------

/// The `[acl]` section of a node's configuration, as written.
///
/// ```toml
/// [acl]
/// default = "deny"          # what applies when no rule decides; "deny" unless set
/// require_auth = true       # refuse links without a verified credential
/// identity_from = ["uri", "dns", "cn"]
///
/// [acl.roles]
/// ops = ["alice", "laptop/*"]
///
/// [[acl.rule]]
/// id = "robots-own-keys"
/// who = ["robot/*"]         # principal globs, "role:NAME", "anonymous", "spki:sha256:HEX"
/// ops = ["put", "delete", "token"]   # or write / read / serve / all
/// keys = ["fleet/${id.last}/**"]     # ${id}, ${id.first}, ${id.last}
///
/// [[acl.rule]]
/// id = "no-cameras"
/// permission = "deny"
/// who = ["**"]
/// ops = ["sub"]
/// keys = ["fleet/*/camera/**"]
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclFile {
    /// `allow` or `deny` (the default).
    pub default: Option<String>,
    /// Refuse links whose peer presents no verified credential.
    #[serde(default)]
    pub require_auth: bool,
    /// Where a certificate's principal comes from, in order: `uri`, `dns`, `cn`.
    pub identity_from: Option<Vec<String>>,
    /// Roles: a name and the principal globs that hold it.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// The rules.
    #[serde(default)]
    pub rule: Vec<RuleFile>,
    /// Pre-shared tokens: a principal and the SHA-256 of its token (hex). Accepted only over
    /// encrypted links (QUIC, TLS over TCP); `hypha acl token` makes one.
    #[serde(default)]
    pub token: Vec<TokenFile>,
}

/// One `[[acl.token]]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Who presents it.
    pub principal: String,
    /// SHA-256 of the token, 64 hex digits (the token itself is never stored).
    pub sha256: String,
}

/// SHA-256 of a token.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    crate::digest::sha256(token)
}

/// One `[[acl.rule]]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// A name, shown in decisions (`rule-N` when left out).
    pub id: Option<String>,
    /// `allow` (the default) or `deny`.
    pub permission: Option<String>,
    /// Who the rule applies to.
    pub who: Vec<String>,
    /// What it allows or denies.
    pub ops: Vec<String>,
    /// On which keys.
    pub keys: Vec<String>,
}

/// Why an `[acl]` section is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("acl: {what}: {message}")]
pub struct AclError {
    /// Where (e.g. `rule "robots" keys`).
    pub what: String,
    /// What is wrong.
    pub message: String,
}

fn acl_err(what: impl Into<String>, message: impl Into<String>) -> AclError {
    AclError {
        what: what.into(),
        message: message.into(),
    }
}

/// Where a certificate's principal name is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A URI subject alternative name (`hypha:robot/r42` → `robot/r42`,
    /// `spiffe://fleet/robot/r42` → `fleet/robot/r42`).
    Uri,
    /// A DNS subject alternative name.
    Dns,
    /// The subject's common name.
    Cn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    Role(String),
    Spki(String),
    Glob(OwnedKeyExpr),
}

impl Who {
    fn parse(s: &str) -> Result<Who, String> {
        if s == ANONYMOUS {
            return Ok(Who::Anonymous);
        }
        if let Some(r) = s.strip_prefix("role:") {
            if r.is_empty() {
                return Err("empty role name".into());
            }
            return Ok(Who::Role(r.to_string()));
        }
        if s.starts_with("spki:sha256:") {
            return Ok(Who::Spki(s.to_ascii_lowercase()));
        }
        let k = canonize(s).map_err(|e| format!("{s:?} is not a principal glob: {e}"))?;
        OwnedKeyExpr::new(k)
            .map(Who::Glob)
            .map_err(|e| format!("{s:?} is not a principal glob: {e}"))
    }

    fn matches(&self, p: &Principal, roles: &[String]) -> bool {
        match self {
            Who::Anonymous => p.is_anonymous(),
            Who::Role(r) => roles.iter().any(|x| x == r),
            Who::Spki(s) => p.spki() == Some(s.as_str()),
            Who::Glob(g) => {
                !p.is_anonymous()
                    && KeyExpr::new(p.name()).is_ok_and(|k| g.as_keyexpr().includes(&k))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyPattern {
    Fixed(OwnedKeyExpr),
    /// Holds `${…}`; expanded per principal.
    Template(String),
}

fn expand(t: &str, p: &Principal) -> Option<OwnedKeyExpr> {
    if p.is_anonymous() {
        return None;
    }
    let name = p.name();
    let first = name.split('/').next().unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    let s = t
        .replace("${id.first}", first)
        .replace("${id.last}", last)
        .replace("${id}", name);
    OwnedKeyExpr::autocanonize(s).ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    id: Arc<str>,
    allow: bool,
    who: Vec<Who>,
    ops: u16,
    keys: Vec<KeyPattern>,
}

/// Compiled access-control rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    default_allow: bool,
    require_auth: bool,
    identity_from: Vec<IdentitySource>,
    roles: Vec<(String, Vec<Who>)>,
    rules: Vec<Rule>,
    tokens: Vec<(Principal, [u8; 32])>,
}

/// Where certificate names come from when no `[acl]` says otherwise.
pub const DEFAULT_IDENTITY_FROM: [IdentitySource; 3] =
    [IdentitySource::Uri, IdentitySource::Dns, IdentitySource::Cn];

/// The rule name reported when no rule decided.
pub const DEFAULT_RULE: &str = "default";

impl Acl {
    /// Compiles an `[acl]` section, with a clear error for each mistake.
    pub fn compile(f: &AclFile) -> Result<Acl, AclError> {
        let default_allow = match f.default.as_deref() {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(o) => return Err(acl_err("default", format!("{o:?}: expected allow or deny"))),
        };
        let identity_from = match &f.identity_from {
            None => vec![IdentitySource::Uri, IdentitySource::Dns, IdentitySource::Cn],
            Some(v) => {
                let mut out = Vec::new();
                for s in v {
                    out.push(match s.as_str() {
                        "uri" => IdentitySource::Uri,
                        "dns" => IdentitySource::Dns,
                        "cn" => IdentitySource::Cn,
                        o => {
                            return Err(acl_err(
                                "identity_from",
                                format!("{o:?}: expected uri, dns or cn"),
                            ));
                        }
                    });
                }
                if out.is_empty() {
                    return Err(acl_err("identity_from", "empty"));
                }
                out
            }
        };
        let mut roles = Vec::new();
        for (name, globs) in &f.roles {
            let mut who = Vec::new();
            for g in globs {
                let w = Who::parse(g).map_err(|m| acl_err(format!("roles.{name}"), m))?;
                if matches!(w, Who::Role(_)) {
                    return Err(acl_err(
                        format!("roles.{name}"),
                        "a role cannot hold a role",
                    ));
                }
                who.push(w);
            }
            roles.push((name.clone(), who));
        }
        let mut rules = Vec::new();
        for (i, r) in f.rule.iter().enumerate() {
            let id: Arc<str> = Arc::from(r.id.clone().unwrap_or_else(|| format!("rule-{}", i + 1)));
            let at = |field: &str| format!("rule {:?} {field}", &*id);
            if id.is_empty() || &*id == DEFAULT_RULE || id.len() > 128 {
                return Err(acl_err(at("id"), "must be 1-128 bytes and not \"default\""));
            }
            if rules.iter().any(|x: &Rule| x.id == id) {
                return Err(acl_err(at("id"), "two rules have this id"));
            }
            let allow = match r.permission.as_deref() {
                None | Some("allow") => true,
                Some("deny") => false,
                Some(o) => {
                    return Err(acl_err(
                        at("permission"),
                        format!("{o:?}: expected allow or deny"),
                    ));
                }
            };
            if r.who.is_empty() || r.ops.is_empty() || r.keys.is_empty() {
                return Err(acl_err(
                    at(""),
                    "who, ops and keys must each name at least one",
                ));
            }
            let mut who = Vec::new();
            for w in &r.who {
                let w = Who::parse(w).map_err(|m| acl_err(at("who"), m))?;
                if let Who::Role(name) = &w {
                    if !f.roles.contains_key(name) {
                        return Err(acl_err(
                            at("who"),
                            format!("role {name:?} is not defined in [acl.roles]"),
                        ));
                    }
                }
                who.push(w);
            }
            let mut ops = 0u16;
            for o in &r.ops {
                let list = parse_ops(o).ok_or_else(|| {
                    acl_err(
                        at("ops"),
                        format!(
                            "{o:?}: expected put, delete, sub, query, queryable, reply, token, token_sub, admin, write, read, serve or all"
                        ),
                    )
                })?;
                for op in list {
                    ops |= op_bit(op);
                }
            }
            let mut keys = Vec::new();
            for k in &r.keys {
                if k.contains("${") {
                    // Validate the template's shape with a sample principal.
                    let probe = Principal {
                        name: Arc::from("p1/p2"),
                        spki: None,
                    };
                    let rest = k
                        .replace("${id.first}", "")
                        .replace("${id.last}", "")
                        .replace("${id}", "");
                    if rest.contains("${") {
                        return Err(acl_err(
                            at("keys"),
                            format!(
                                "{k:?}: unknown template (use ${{id}}, ${{id.first}}, ${{id.last}})"
                            ),
                        ));
                    }
                    if expand(k, &probe).is_none() {
                        return Err(acl_err(
                            at("keys"),
                            format!("{k:?} does not expand to a key expression"),
                        ));
                    }
                    keys.push(KeyPattern::Template(k.clone()));
                } else {
                    let c = canonize(k).map_err(|e| acl_err(at("keys"), format!("{k:?}: {e}")))?;
                    let ke = OwnedKeyExpr::new(c)
                        .map_err(|e| acl_err(at("keys"), format!("{k:?}: {e}")))?;
                    keys.push(KeyPattern::Fixed(ke));
                }
            }
            rules.push(Rule {
                id,
                allow,
                who,
                ops,
                keys,
            });
        }
        let mut tokens = Vec::new();
        for (i, t) in f.token.iter().enumerate() {
            let at = format!("token {} ({})", i + 1, t.principal);
            let p = Principal::new(&t.principal).map_err(|e| acl_err(&at, e.to_string()))?;
            let h = crate::digest::sha256_from_hex(&t.sha256).ok_or_else(|| {
                acl_err(&at, "sha256 must be 64 hex digits (the token's SHA-256)")
            })?;
            if tokens.iter().any(|(_, x)| *x == h) {
                return Err(acl_err(at, "the same token is listed twice"));
            }
            tokens.push((p, h));
        }
        Ok(Acl {
            default_allow,
            require_auth: f.require_auth,
            identity_from,
            roles,
            rules,
            tokens,
        })
    }

    /// Compiles the `[acl]` section of a TOML text (a node configuration, or a file holding
    /// only `[acl]`; other sections are ignored).
    pub fn from_toml(text: &str) -> Result<Acl, AclError> {
        #[derive(Deserialize)]
        struct Only {
            acl: Option<AclFile>,
        }
        let o: Only = toml::from_str(text).map_err(|e| acl_err("toml", e.to_string()))?;
        match o.acl {
            Some(f) => Acl::compile(&f),
            None => Err(acl_err("toml", "no [acl] section")),
        }
    }

    /// A permissive ACL: no rules, default allow (what a node without `[acl]` enforces).
    pub fn allow_all() -> Acl {
        Acl {
            default_allow: true,
            require_auth: false,
            identity_from: vec![IdentitySource::Uri, IdentitySource::Dns, IdentitySource::Cn],
            roles: Vec::new(),
            rules: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// Whether pre-shared tokens are configured (listeners then wait for a dialer's credential
    /// on encrypted links without a verified certificate).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The principal of a token, comparing its hash with every configured one in constant
    /// time (no early exit, so the time says nothing about which entry or how much matched).
    pub fn principal_for_token(&self, token: &[u8]) -> Option<(Principal, [u8; 32])> {
        use subtle::ConstantTimeEq;
        let h = token_hash(token);
        let mut found = None;
        for (p, stored) in &self.tokens {
            if bool::from(stored.ct_eq(&h)) {
                found = Some((p.clone(), h));
            }
        }
        found
    }

    /// Whether a token hash is still configured (after a reload).
    pub fn knows_token(&self, hash: &[u8; 32]) -> bool {
        self.tokens.iter().any(|(_, h)| h == hash)
    }

    /// Whether links without a verified credential are refused.
    pub fn require_auth(&self) -> bool {
        self.require_auth
    }

    /// Where certificates' principal names come from, in order.
    pub fn identity_from(&self) -> &[IdentitySource] {
        &self.identity_from
    }

    /// The roles `p` holds.
    pub fn roles_of(&self, p: &Principal) -> Vec<String> {
        self.roles
            .iter()
            .filter(|(_, who)| who.iter().any(|w| w.matches(p, &[])))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The rules that apply to `p`, with their templates expanded.
    pub fn for_principal(&self, p: &Principal) -> FaceRules {
        let roles = self.roles_of(p);
        let mut rules = Vec::new();
        for r in &self.rules {
            if !r.who.iter().any(|w| w.matches(p, &roles)) {
                continue;
            }
            let keys: Vec<OwnedKeyExpr> = r
                .keys
                .iter()
                .filter_map(|k| match k {
                    KeyPattern::Fixed(k) => Some(k.clone()),
                    KeyPattern::Template(t) => expand(t, p),
                })
                .collect();
            if keys.is_empty() {
                continue;
            }
            rules.push(FaceRule {
                id: r.id.clone(),
                allow: r.allow,
                ops: r.ops,
                keys,
            });
        }
        FaceRules {
            principal: p.clone(),
            default_allow: self.default_allow,
            rules,
        }
    }

    /// Decides one operation of `p` on `key` (see the module documentation).
    pub fn decide(&self, p: &Principal, op: Op, key: &KeyExpr<'_>) -> Decision {
        self.for_principal(p).decide(op, key)
    }
}

/// An ACL decision and the rule that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allow: bool,
    /// The deciding rule's id, or `default`.
    pub rule: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FaceRule {
    id: Arc<str>,
    allow: bool,
    ops: u16,
    keys: Vec<OwnedKeyExpr>,
}

/// The rules of an [`Acl`] that apply to one principal, templates expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaceRules {
    principal: Principal,
    default_allow: bool,
    rules: Vec<FaceRule>,
}

impl FaceRules {
    /// Whose rules these are.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Decides `op` on `key`: concrete operations by inclusion, declarations by intersection
    /// (see the module documentation). Deny wins.
    pub fn decide(&self, op: Op, key: &KeyExpr<'_>) -> Decision {
        self.decide_as(op, key, is_concrete(op) || !key.is_wild())
    }

    /// Whether `op` is allowed on some key of `key` (intersection; deny only when a deny
    /// covers it whole): what a neighbour must hold to be told of a declaration on `key`.
    pub fn decide_any(&self, op: Op, key: &KeyExpr<'_>) -> Decision {
        self.decide_as(op, key, !key.is_wild())
    }

    fn decide_as(&self, op: Op, key: &KeyExpr<'_>, concrete: bool) -> Decision {
        let bit = op_bit(op);
        let mut allowed_by: Option<&Arc<str>> = None;
        for r in self.rules.iter().filter(|r| r.ops & bit != 0) {
            for k in &r.keys {
                let k = k.as_keyexpr();
                if r.allow {
                    let hit = if concrete {
                        k.includes(key)
                    } else {
                        k.intersects(key)
                    };
                    if hit && allowed_by.is_none() {
                        allowed_by = Some(&r.id);
                    }
                } else {
                    let hit = if concrete {
                        k.intersects(key)
                    } else {
                        k.includes(key)
                    };
                    if hit {
                        return Decision {
                            allow: false,
                            rule: r.id.clone(),
                        };
                    }
                }
            }
        }
        match allowed_by {
            Some(id) => Decision {
                allow: true,
                rule: id.clone(),
            },
            None => Decision {
                allow: self.default_allow,
                rule: Arc::from(DEFAULT_RULE),
            },
        }
    }
}

/// A refusal by access control, as the refused party learns it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "access denied: {} on {key:?} for principal {principal:?} (rule {rule:?})",
    op_name(*op)
)]
pub struct AccessDenied {
    /// The operation.
    pub op: Op,
    /// The key expression.
    pub key: String,
    /// The principal the enforcing node saw.
    pub principal: String,
    /// The rule that decided.
    pub rule: String,
}

/// The encoding of an error reply that carries an [`AccessDenied`] (postcard-encoded
/// `hypha_core::wire::Denied`).
pub const DENIED_ENCODING: &str = "hypha/access-denied";

impl AccessDenied {
    /// Encodes as the payload of an error reply (with [`DENIED_ENCODING`]).
    pub fn to_payload(&self) -> Vec<u8> {
        let d = hypha_core::wire::Denied {
            op: self.op,
            key: &self.key,
            principal: &self.principal,
            rule: &self.rule,
        };
        postcard::to_allocvec(&d).unwrap_or_default()
    }

    /// Decodes an error reply's payload.
    pub fn from_payload(b: &[u8]) -> Option<AccessDenied> {
        let d: hypha_core::wire::Denied<'_> = postcard::from_bytes(b).ok()?;
        Some(AccessDenied::from_wire(&d))
    }

    /// From the wire message.
    pub fn from_wire(d: &hypha_core::wire::Denied<'_>) -> AccessDenied {
        AccessDenied {
            op: d.op,
            key: d.key.to_string(),
            principal: d.principal.to_string(),
            rule: d.rule.to_string(),
        }
    }
}
