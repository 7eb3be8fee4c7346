//! The gateway's OpenAPI document checked from the outside by schemathesis: a `hypha peer
//! --http` with a storage on `demo/**` (and a publisher feeding it), then `schemathesis run`
//! on the document the gateway serves, generating requests from every operation's parameters
//! and schemas (its examples, the coverage phase's boundary values, then random ones) and
//! checking every answer against the document: documented status code, content type, headers,
//! body schema, no 5xx (`--checks all`). A fixed seed and a bounded number of examples per
//! operation keep it to seconds. `/api/v1/events` (an endless SSE stream: schemathesis reads
//! whole bodies) is left out; `router/tests/http.rs` reads it.
//!
//! Needs schemathesis (`HYPHA_SCHEMATHESIS`, else `schemathesis` on PATH); `.ci/run` installs
//! the pinned release in a venv. Without it the test is skipped, except under `CI=true`, where
//! it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, listening_endpoint};
use std::process::Stdio;
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

fn schemathesis() -> String {
    std::env::var("HYPHA_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_string())
}

fn missing() -> Option<String> {
    let ok = std::process::Command::new(schemathesis())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| {
        format!(
            "no {} (python3 -m venv V && V/bin/pip install schemathesis==4.32.5; \
             HYPHA_SCHEMATHESIS=V/bin/schemathesis)",
            schemathesis()
        )
    })
}

#[tokio::test]
async fn schemathesis_finds_every_answer_of_a_running_gateway_as_documented() {
    if !hypha_tests::require_or_skip(missing()) {
        return;
    }
    let mut node = Proc::spawn(
        "gateway",
        hypha_tests::cli(
            CLI,
            &[
                "peer",
                "--listen",
                "tcp/127.0.0.1:0",
                "--storage",
                "demo/**",
                "--backend",
                "memory",
                "--pub",
                "demo/tick",
                "--interval-ms",
                "50",
                "--http",
                "127.0.0.1:0",
            ],
        ),
    )
    .unwrap();
    let ready = node.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    listening_endpoint(&ready).unwrap();
    let http = ready["http"].as_str().expect("an http address").to_string();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.xml");
    let mut st = tokio::process::Command::new(schemathesis());
    st.args([
        "run",
        &format!("http://{http}/api/v1/openapi.json"),
        "--checks",
        "all",
        "--exclude-path",
        "/api/v1/events",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "30",
        "--seed",
        "14",
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
    ])
    .arg(&report)
    .current_dir(dir.path())
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(170), st.output())
        .await
        .expect("schemathesis finished within 170 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not allow ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    // It really exercised the operations: one JUnit test case per operation (schemathesis
    // leaves out the document's own route), none failed.
    let xml = std::fs::read_to_string(&report).expect("schemathesis wrote its report");
    for op in [
        "GET /api/v1/k/{keyexpr}",
        "PUT /api/v1/k/{keyexpr}",
        "DELETE /api/v1/k/{keyexpr}",
        "GET /api/v1/topology",
        "GET /metrics",
        "GET /",
    ] {
        let case = format!("<testcase name=\"{op}\"");
        assert!(xml.contains(&case), "{op} not exercised: {xml}");
    }
    assert!(!xml.contains("<failure"), "{xml}");
    assert!(node.child.try_wait().unwrap().is_none(), "the node died");
}
