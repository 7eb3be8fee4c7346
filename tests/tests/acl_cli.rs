//! Access control through the `hypha` program: a router with `[acl]` rules in its TOML file,
//! clients with certificates made by rcgen, refusals reported by `put` and `sub` (exit code and
//! message), `hypha acl check`, `hypha info` showing principals, and SIGHUP reloading the rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../router/tests/common/pki.rs"]
mod pki;

use hypha_tests::Proc;
use pki::tls_toml;
use std::path::Path;
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

const RULES: &str = r#"
[acl]
default = "deny"
require_auth = true
[[acl.rule]]
id = "robots"
who = ["robot/*"]
ops = ["write", "token", "serve"]
keys = ["fleet/${id.last}/**"]
[[acl.rule]]
id = "ops"
who = ["ops"]
ops = ["read"]
keys = ["fleet/**"]
[[acl.rule]]
id = "no-cameras"
permission = "deny"
who = ["ops"]
ops = ["sub", "query"]
keys = ["fleet/*/camera/**"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f.display().to_string()
}

async fn run(args: &[&str]) -> (i32, String, String) {
    hypha_tests::run_cli(CLI, args).await.unwrap()
}

#[tokio::test]
async fn the_cli_reports_refusals_checks_rules_and_reloads_them() {
    let pki = pki::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let router_head = format!(
        "mode = \"router\"\nlisten = [\"quic/127.0.0.1:0\"]\n{}",
        tls_toml(&pki.node("router/a", |_| {}))
    );
    let router_cfg = write(d, "router.toml", &format!("{router_head}{RULES}"));
    let client = |name: &str, principal: &str| {
        write(
            d,
            name,
            &format!(
                "mode = \"client\"\n{}",
                tls_toml(&pki.node(principal, |_| {}))
            ),
        )
    };
    let (r1, r2, ops) = (
        client("r1.toml", "robot/r1"),
        client("r2.toml", "robot/r2"),
        client("ops.toml", "ops"),
    );

    // `acl check`: the decision and the rule, without starting a node.
    let check = |who: &'static str, op: &'static str, key: &'static str| {
        let cfg = router_cfg.clone();
        async move {
            // (Not through `hypha_tests::cli`: `acl check` starts no node, so takes no --no-mdns.)
            let out = tokio::process::Command::new(CLI)
                .args([
                    "acl", "check", "--config", &cfg, "--as", who, "--op", op, "--key", key,
                ])
                .output()
                .await
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = check("robot/r42", "put", "fleet/r42/speed").await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("allow") && out.contains("\"robots\""),
        "{out}"
    );
    let (_, out, _) = check("robot/r42", "put", "fleet/r7/cmd").await;
    assert!(
        out.starts_with("deny") && out.contains("\"default\""),
        "{out}"
    );
    let (_, out, _) = check("ops", "sub", "fleet/*/camera/**").await;
    assert!(
        out.starts_with("deny") && out.contains("no-cameras"),
        "{out}"
    );
    let (code, _, err) = check("a/**", "put", "fleet/a").await;
    assert_ne!(code, 0);
    assert!(err.contains("key-expression syntax"), "{err}");

    let cmd = hypha_tests::cli(CLI, &["router", "--config", &router_cfg]);
    let (mut router, ep) = hypha_tests::spawn_node("router", cmd, T).await.unwrap();

    let mut sub = Proc::spawn(
        "sub",
        hypha_tests::cli(
            CLI,
            &[
                "sub",
                "fleet/**",
                "--json",
                "--config",
                &ops,
                "--connect",
                &ep,
            ],
        ),
    )
    .unwrap();
    // A refused publication is an error of `put`, naming principal and rule.
    let (code, _, err) = run(&[
        "put",
        "fleet/r2/cmd",
        "stop",
        "--config",
        &r1,
        "--connect",
        &ep,
    ])
    .await;
    assert_ne!(code, 0, "a refused put exited 0: {err}");
    assert!(
        err.contains("access denied") && err.contains("robot/r1") && err.contains("default"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "put",
        "fleet/r1/speed",
        "1",
        "--config",
        &r1,
        "--connect",
        &ep,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let v = sub.wait_json(T, |_| true).await.unwrap();
    assert_eq!(
        v["key"], "fleet/r1/speed",
        "the refused sample never arrived first: {:?}",
        sub.seen
    );

    // A refused subscription ends `sub` with the refusal.
    let (code, _, err) = run(&[
        "sub",
        "fleet/*/camera/**",
        "--config",
        &ops,
        "--connect",
        &ep,
    ])
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("access denied") && err.contains("no-cameras"),
        "{err}"
    );

    // `info` names each neighbour's principal.
    let (code, out, err) = run(&["info", "--json", "--config", &r2, "--connect", &ep]).await;
    assert_eq!(code, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["links"][0]["principal"], "router/a", "{info}");

    // SIGHUP: ops loses its read grant; its live subscription is refused, and `sub` ends
    // with the refusal (exit code, message) instead of silently receiving nothing.
    write(
        d,
        "router.toml",
        &format!(
            "{router_head}{}",
            RULES.replace("ops = [\"read\"]", "ops = [\"token_sub\"]")
        ),
    );
    router.signal("HUP").unwrap();
    router
        .wait_json(T, |v| v["event"] == "acl_reloaded")
        .await
        .unwrap();
    let code = sub.exit_code(T).await.unwrap();
    assert!(code.is_some_and(|c| c != 0), "sub exited with {code:?}");
    // A file that no longer parses keeps the current rules (not none).
    write(
        d,
        "router.toml",
        "mode = \"router\"\n[acl]\ndefault = \"maybe\"\n",
    );
    router.signal("HUP").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _, err) = run(&["sub", "fleet/**", "--config", &ops, "--connect", &ep]).await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("access denied"), "{err}");
}
