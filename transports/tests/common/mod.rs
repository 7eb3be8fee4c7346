//! Helpers shared by the transports' integration tests.

/// True when running under CI (`CI=true`, as `.ci/run` sets it, or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether a test that needs something a machine may lack (root, `ip netns`, IPv6 loopback) can
/// run; `missing` is why it cannot (`None`: it can). Under CI ([`in_ci`]) a missing requirement
/// fails the test: CI must never report as passed a test it did not run. Elsewhere it prints
/// `skipped: <why>` and returns `false`; the test then returns.
pub fn require_or_skip(missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    assert!(!in_ci(), "cannot run this test under CI: {why}");
    eprintln!("skipped: {why} (under CI=true this is a failure)");
    false
}
