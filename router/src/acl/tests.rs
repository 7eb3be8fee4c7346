//! The decision function against a brute-force oracle, principals, templates and certificates.

use super::identity::{IdentityError, check_bound, id_prefix_of, node_id_for, principal_of};
use super::*;
use proptest::prelude::*;

fn acl(toml_text: &str) -> Acl {
    #[derive(Deserialize)]
    struct W {
        acl: AclFile,
    }
    let w: W = toml::from_str(toml_text).unwrap();
    Acl::compile(&w.acl).unwrap()
}

fn ke(s: &str) -> KeyExpr<'_> {
    KeyExpr::new(s).unwrap()
}

const FLEET: &str = r#"
[acl]
default = "deny"
[acl.roles]
ops = ["alice", "laptop/*"]
[[acl.rule]]
id = "robots-own"
who = ["robot/*"]
ops = ["write", "token"]
keys = ["fleet/${id.last}/**"]
[[acl.rule]]
id = "ops-read"
who = ["role:ops"]
ops = ["read"]
keys = ["fleet/**"]
[[acl.rule]]
id = "no-cameras"
permission = "deny"
who = ["**", "anonymous"]
ops = ["sub"]
keys = ["fleet/*/camera/**"]
"#;

#[test]
fn templates_roles_and_deny_wins() {
    let a = acl(FLEET);
    let r42 = Principal::new("robot/r42").unwrap();
    let d = a.decide(&r42, Op::Put, &ke("fleet/r42/speed"));
    assert!(d.allow);
    assert_eq!(&*d.rule, "robots-own");
    // Another robot's key: nothing allows it, the default decides.
    let d = a.decide(&r42, Op::Put, &ke("fleet/r7/cmd"));
    assert!(!d.allow);
    assert_eq!(&*d.rule, DEFAULT_RULE);
    let alice = Principal::new("alice").unwrap();
    assert!(a.decide(&alice, Op::Sub, &ke("fleet/r1/speed")).allow);
    // A partly allowed wildcard subscription is accepted; its camera keys are filtered.
    assert!(a.decide(&alice, Op::Sub, &ke("fleet/**")).allow);
    let d = a.decide(&alice, Op::Sub, &ke("fleet/r1/camera/front"));
    assert!(!d.allow);
    assert_eq!(&*d.rule, "no-cameras");
    // A subscription wholly inside the deny is refused.
    assert!(!a.decide(&alice, Op::Sub, &ke("fleet/*/camera/**")).allow);
    // Roles by glob.
    assert_eq!(
        a.roles_of(&Principal::new("laptop/x").unwrap()),
        vec!["ops".to_string()]
    );
    assert!(
        !a.decide(&Principal::anonymous(), Op::Sub, &ke("fleet/a"))
            .allow
    );
    // Alice may not write.
    assert!(!a.decide(&alice, Op::Put, &ke("fleet/r1/speed")).allow);
}

#[test]
fn config_errors_are_clear() {
    let bad = [
        ("[acl]\ndefault = \"maybe\"", "default"),
        (
            "[acl]\n[[acl.rule]]\nwho=[\"a\"]\nops=[\"fly\"]\nkeys=[\"a\"]",
            "ops",
        ),
        (
            "[acl]\n[[acl.rule]]\nwho=[\"role:x\"]\nops=[\"put\"]\nkeys=[\"a\"]",
            "role",
        ),
        (
            "[acl]\n[[acl.rule]]\nwho=[\"a\"]\nops=[\"put\"]\nkeys=[\"a//b\"]",
            "keys",
        ),
        (
            "[acl]\n[[acl.rule]]\nwho=[\"a\"]\nops=[\"put\"]\nkeys=[\"${nope}/a\"]",
            "template",
        ),
        (
            "[acl]\n[[acl.rule]]\nwho=[]\nops=[\"put\"]\nkeys=[\"a\"]",
            "at least one",
        ),
        (
            "[acl]\n[[acl.rule]]\nid=\"x\"\nwho=[\"a\"]\nops=[\"put\"]\nkeys=[\"a\"]\n[[acl.rule]]\nid=\"x\"\nwho=[\"a\"]\nops=[\"put\"]\nkeys=[\"a\"]",
            "two rules",
        ),
        (
            "[acl]\n[[acl.token]]\nprincipal=\"r\"\nsha256=\"abc\"",
            "64 hex digits",
        ),
        (
            "[acl]\n[[acl.token]]\nprincipal=\"a/**\"\nsha256=\"00\"",
            "key-expression syntax",
        ),
    ];
    #[derive(Deserialize)]
    struct W {
        acl: AclFile,
    }
    for (text, want) in bad {
        let w: W = toml::from_str(text).unwrap();
        let e = Acl::compile(&w.acl).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn tokens_are_found_by_hash() {
    let h = crate::digest::to_hex(&token_hash(b"s3cret"));
    let a = acl(&format!(
        "[acl]\n[[acl.token]]\nprincipal = \"robot/r7\"\nsha256 = \"{h}\""
    ));
    assert!(a.has_tokens());
    let (p, hash) = a.principal_for_token(b"s3cret").unwrap();
    assert_eq!(p.name(), "robot/r7");
    assert!(a.knows_token(&hash));
    assert!(a.principal_for_token(b"s3cret ").is_none());
    assert!(a.principal_for_token(b"").is_none());
}

#[test]
fn principals_with_key_syntax_are_refused() {
    for bad in [
        "a/**", "x/*", "$*", "a//b", "", "/a", "a/", "a b", "@/x", "a?b", "a#b",
    ] {
        assert!(Principal::new(bad).is_err(), "{bad:?} accepted");
    }
    for good in ["robot/r42", "router:site-a", "alice", "fleet.example.com"] {
        assert!(Principal::new(good).is_ok(), "{good:?} refused");
    }
    assert!(Principal::new(&"x".repeat(MAX_PRINCIPAL_LEN + 1)).is_err());
}

#[test]
fn a_broad_allow_does_not_beat_a_deny() {
    // Zenoh's "any subject allows": here every matching rule counts and deny wins.
    let a = acl(r#"
[acl]
default = "allow"
[[acl.rule]]
id = "all"
who = ["**"]
ops = ["all"]
keys = ["**"]
[[acl.rule]]
id = "cmd"
permission = "deny"
who = ["sensor/*"]
ops = ["put"]
keys = ["fleet/*/cmd"]
"#);
    let s = Principal::new("sensor/t1").unwrap();
    let d = a.decide(&s, Op::Put, &ke("fleet/car1/cmd"));
    assert!(!d.allow);
    assert_eq!(&*d.rule, "cmd");
    assert!(a.decide(&s, Op::Put, &ke("fleet/car1/temp")).allow);
}

// ----- the oracle --------------------------------------------------------------------------

/// Matches a concrete key against a pattern chunk by chunk, without the keyexpr crate: `*` is
/// one chunk, `**` zero or more.
fn glob(p: &[&str], k: &[&str]) -> bool {
    match (p.first(), k.first()) {
        (None, None) => true,
        (Some(&"**"), _) => glob(&p[1..], k) || (!k.is_empty() && glob(p, &k[1..])),
        (Some(&"*"), Some(_)) => glob(&p[1..], &k[1..]),
        (Some(a), Some(b)) => a == b && glob(&p[1..], &k[1..]),
        _ => false,
    }
}

fn matches(p: &str, k: &str) -> bool {
    let p: Vec<&str> = p.split('/').collect();
    let k: Vec<&str> = k.split('/').collect();
    glob(&p, &k)
}

/// Every concrete key over {a, b} with 1 to 3 chunks.
fn universe() -> Vec<String> {
    let mut out = Vec::new();
    let c = ["a", "b"];
    for x in c {
        out.push(x.to_string());
        for y in c {
            out.push(format!("{x}/{y}"));
            for z in c {
                out.push(format!("{x}/{y}/{z}"));
            }
        }
    }
    out
}

/// Is one concrete key allowed: some allow pattern matches it, no deny pattern does (or the
/// default when no allow matches).
fn oracle(rules: &[(bool, String)], default_allow: bool, key: &str) -> bool {
    if rules.iter().any(|(allow, p)| !allow && matches(p, key)) {
        return false;
    }
    default_allow || rules.iter().any(|(allow, p)| *allow && matches(p, key))
}

fn pattern() -> impl Strategy<Value = String> {
    let chunk = prop_oneof![Just("a"), Just("b"), Just("*"), Just("**")];
    proptest::collection::vec(chunk, 1..4).prop_map(|v| v.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn decisions_agree_with_a_brute_force_oracle(
        rules in proptest::collection::vec((any::<bool>(), pattern()), 0..6),
        default_allow in any::<bool>(),
        decl in pattern(),
    ) {
        let Ok(decl_c) = canonize(&decl) else { return Ok(()); };
        let file = AclFile {
            default: Some(if default_allow { "allow" } else { "deny" }.into()),
            rule: rules
                .iter()
                .enumerate()
                .map(|(i, (allow, k))| RuleFile {
                    id: Some(format!("r{i}")),
                    permission: Some(if *allow { "allow" } else { "deny" }.into()),
                    who: vec!["**".into()],
                    ops: vec!["put".into(), "sub".into()],
                    keys: vec![k.clone()],
                })
                .collect(),
            ..AclFile::default()
        };
        let acl = Acl::compile(&file).unwrap();
        let p = Principal::new("n").unwrap();
        let canon: Vec<(bool, String)> =
            rules.iter().map(|(a, k)| (*a, canonize(k).unwrap())).collect();
        // Concrete keys: exactly the oracle.
        for k in universe() {
            let d = acl.decide(&p, Op::Put, &ke(&k));
            prop_assert_eq!(d.allow, oracle(&canon, default_allow, &k), "put {}", k);
            // The deciding rule is one that matches, with the right permission.
            if &*d.rule != DEFAULT_RULE {
                let i: usize = d.rule[1..].parse().unwrap();
                prop_assert_eq!(canon[i].0, d.allow);
                prop_assert!(matches(&canon[i].1, &k));
            }
        }
        // Wildcard declarations: never refused while some key they match would be delivered
        // (false acceptances are safe: delivery filters per key).
        let d = acl.decide(&p, Op::Sub, &ke(&decl_c));
        let some_key_passes = universe()
            .iter()
            .any(|k| matches(&decl_c, k) && oracle(&canon, default_allow, k));
        if some_key_passes {
            prop_assert!(d.allow, "sub {} refused but a key passes", decl_c);
        }
    }
}

// ----- certificates ------------------------------------------------------------------------

fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn principal_from_uri_then_dns_then_cn() {
    use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
    let all = [IdentitySource::Uri, IdentitySource::Dns, IdentitySource::Cn];
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        SanType::DnsName("r42.fleet".try_into().unwrap()),
        SanType::URI("hypha:robot/r42".try_into().unwrap()),
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ignored");
    p.distinguished_name = dn;
    let der = cert(p);
    let pr = principal_of(&der, &all).unwrap();
    assert_eq!(pr.name(), "robot/r42");
    assert!(pr.spki().unwrap().starts_with("spki:sha256:"));
    assert_eq!(
        principal_of(&der, &[IdentitySource::Dns]).unwrap().name(),
        "r42.fleet"
    );
    assert_eq!(
        principal_of(&der, &[IdentitySource::Cn]).unwrap().name(),
        "ignored"
    );

    // SPIFFE ids keep their path.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI("spiffe://fleet/robot/r7".try_into().unwrap())];
    p.distinguished_name = DistinguishedName::new();
    assert_eq!(
        principal_of(&cert(p), &all).unwrap().name(),
        "fleet/robot/r7"
    );

    // No CN, SAN only (Zenoh #2400 panicked here): the SAN names it.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::DnsName("tlsserver.example".try_into().unwrap())];
    p.distinguished_name = DistinguishedName::new();
    let der = cert(p);
    assert_eq!(
        principal_of(&der, &all).unwrap().name(),
        "tlsserver.example"
    );
    assert!(matches!(
        principal_of(&der, &[IdentitySource::Cn]),
        Err(IdentityError::NoName(_))
    ));

    // Identity injection through the certificate.
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "a/**");
    p.distinguished_name = dn;
    assert!(matches!(
        principal_of(&cert(p), &all),
        Err(IdentityError::Principal(_))
    ));

    // Garbage is an error, not a panic.
    assert!(matches!(
        principal_of(b"not a cert", &all),
        Err(IdentityError::Parse(_))
    ));
    assert!(id_prefix_of(b"\x30\x03\x02\x01\x00").is_err());
}

#[test]
fn node_ids_follow_keys() {
    let a = cert(rcgen::CertificateParams::default());
    let b = cert(rcgen::CertificateParams::default());
    let (a1, a2) = (node_id_for(&a, 1).unwrap(), node_id_for(&a, 2).unwrap());
    assert_ne!(a1, a2, "two processes of one credential get two ids");
    assert!(check_bound(&a, a1).is_ok() && check_bound(&a, a2).is_ok());
    let b1 = node_id_for(&b, 1).unwrap();
    assert_ne!(id_prefix_of(&a).unwrap(), id_prefix_of(&b).unwrap());
    assert!(matches!(
        check_bound(&a, b1),
        Err(IdentityError::IdentityMismatch { .. })
    ));
}
