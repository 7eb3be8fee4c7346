//! Durable streams under SIGKILL (issue 17), with real processes:
//! - a storage (`hypha storage`) killed in the middle of a stream of acknowledged puts and
//!   restarted on its directory: every acknowledged sample is there once, and a durable
//!   consumer (in this process) resumes from its last acknowledgement with no gap and no
//!   duplicate;
//! - a work-queue group of three `hypha sub --durable` processes, one SIGKILLed mid-stream:
//!   every sample is processed, the killed member's unacknowledged ones by the others
//!   (redeliveries counted).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::api::query::{Consolidation, QueryTarget};
use hypha::{Ack, Config, CongestionControl};
use hypha_tests::{Proc, free_port};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(30);

fn storage(dir: &std::path::Path, ep: &str) -> Proc {
    let mut c = Command::new(CLI);
    c.args(["storage", "dk/**", "--no-mdns", "--listen", ep])
        .args(["--flush-ms", "100", "--data-dir"])
        .arg(dir);
    Proc::spawn("storage", c).unwrap()
}

fn client(ep: &str) -> Config {
    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    c.connect = vec![ep.parse().unwrap()];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_killed_mid_acknowledged_stream_keeps_every_acknowledged_sample_and_its_consumer_position()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    // `free_port` is racy, but the storage must come back on the same endpoint.
    let ep = format!("tcp/127.0.0.1:{}", free_port());
    let mut st = storage(&data, &ep);
    st.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let s = hypha::open(client(&ep)).await.unwrap();
    let p = s
        .declare_publisher("dk/seq")
        .unwrap()
        .congestion_control(CongestionControl::Block);
    assert!(p.wait_matching(T).await);
    let k = hypha_core::keyexpr::OwnedKeyExpr::new("dk/seq".to_string()).unwrap();
    assert!(s.wait_queryable(&k, T).await);
    let d = s
        .declare_subscriber("dk/**")
        .durable("resume")
        .ack_wait(Duration::from_secs(2))
        .await
        .unwrap();

    // The consumer, beside the publisher: acknowledges each sample as it comes.
    const N: u64 = 400;
    let consumer = tokio::spawn(async move {
        let mut got: BTreeMap<u64, u32> = BTreeMap::new();
        while got.len() < N as usize {
            let Ok(Some(x)) = tokio::time::timeout(T, d.recv()).await else {
                break;
            };
            let i: u64 = x.sample.payload_str().unwrap().parse().unwrap();
            *got.entry(i).or_default() += 1;
            x.ack();
        }
        let flushed = d.flush(T).await;
        (got, flushed, d)
    });

    // Acknowledged puts; a put whose acknowledgement fails is sent again with the same
    // timestamp (a retry of the same sample, stored once), until acknowledged. Halfway, the
    // storage is SIGKILLed a few milliseconds into a put (its acknowledgement in flight), and
    // restarted on its directory once the publisher has felt it.
    let half = std::sync::Arc::new(tokio::sync::Notify::new());
    let pid = st.pid();
    let killer = {
        let half = half.clone();
        tokio::spawn(async move {
            half.notified().await;
            tokio::time::sleep(Duration::from_millis(3)).await;
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        })
    };
    let mut retries = 0u32;
    let mut restarted = false;
    for i in 0..N {
        let ts = s.new_timestamp();
        if i == N / 2 {
            half.notify_one();
        }
        loop {
            let r = p
                .put(i.to_string())
                .timestamp(ts)
                .ack(Ack::Durable)
                .ack_timeout(Duration::from_millis(1500))
                .await;
            if matches!(&r, Ok(rep) if rep.acked >= 1) {
                break;
            }
            retries += 1;
            assert!(retries < 500, "acknowledgements never came back: {r:?}");
            if !restarted && killer.is_finished() {
                let _ = st.exit_code(T).await;
                st = storage(&data, &ep);
                st.wait_json(T, |v| v["event"] == "ready").await.unwrap();
                restarted = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        restarted && retries > 0,
        "the kill was felt by the publisher"
    );

    // Every sample (each was acknowledged in the end) is in the store exactly once.
    let replies = s
        .get("dk/**?_time=[..]")
        .target(QueryTarget::All)
        .consolidation(Consolidation::None)
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let mut stored: BTreeMap<u64, u32> = BTreeMap::new();
    for r in replies {
        let x = r.result.unwrap();
        *stored
            .entry(x.payload_str().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    let missing: Vec<_> = (0..N).filter(|i| !stored.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );

    // The consumer saw every stored sample once, across the restart.
    let (got, flushed, d) = tokio::time::timeout(T * 2, consumer)
        .await
        .unwrap()
        .unwrap();
    let dup: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.is_empty(),
        "delivered twice to the application: {dup:?}"
    );
    let gap: Vec<_> = (0..N).filter(|i| !got.contains_key(i)).collect();
    assert!(
        gap.is_empty(),
        "never delivered: {gap:?} (got {})",
        got.len()
    );
    assert!(flushed, "acknowledgements confirmed");
    drop(d);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_group_of_three_processes_survives_a_sigkilled_member() {
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("tcp/127.0.0.1:{}", free_port());
    let mut st = storage(&dir.path().join("db"), &ep);
    st.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let member = |n: &str| {
        let mut c = Command::new(CLI);
        c.args(["sub", "dk/**", "--json", "--no-mdns", "--connect", &ep])
            .args(["--durable", "group", "--ack-wait-ms", "1500"]);
        Proc::spawn(n, c).unwrap()
    };
    let mut ms = [member("m0"), member("m1"), member("m2")];
    let s = hypha::open(client(&ep)).await.unwrap();
    let p = s
        .declare_publisher("dk/job")
        .unwrap()
        .congestion_control(CongestionControl::Block);
    assert!(p.wait_matching(T).await);
    const N: usize = 600;
    let mut seen: Vec<BTreeMap<u64, u32>> = vec![BTreeMap::new(); 3];
    let mut redelivered = 0;
    let mut killed = false;
    let mut stopped: Option<tokio::time::Instant> = None;
    let mut settled: Option<tokio::time::Instant> = None;
    let deadline = tokio::time::Instant::now() + T;
    let mut next = 0;
    loop {
        // Publish in bursts between reads; the last 500 only once m0 is frozen, so that its
        // outstanding pull is handed some of them.
        let limit = if stopped.is_some() { N } else { 100 };
        for _ in 0..10 {
            if next < limit {
                p.put(next.to_string()).await.unwrap();
                next += 1;
            }
        }
        // (m0's lines are read after its kill too: what it printed before is in the pipe.)
        for (m, proc) in ms.iter_mut().enumerate() {
            while let Some(l) = proc.line(Duration::from_millis(5)).await {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                let i: u64 = v["payload"].as_str().unwrap().parse().unwrap();
                *seen[m].entry(i).or_default() += 1;
                if v["deliveries"].as_u64().unwrap() > 1 {
                    redelivered += 1;
                }
            }
        }
        let processed: BTreeSet<u64> = seen.iter().flat_map(|s| s.keys().copied()).collect();
        if stopped.is_none() && processed.len() >= 100 {
            // m0 freezes with a pull outstanding (samples keep being handed to it), then dies
            // without a word: what it held comes to the others after ack_wait. Nothing is
            // published until then, and m0 is frozen only once the first 100 have been quiet
            // for 300 ms, so that every member has acknowledged and pulled again (frozen
            // between printing its last sample and its next pull, m0 held nothing and was
            // handed nothing: a CI run under load failed so).
            let since = *settled.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > Duration::from_millis(300) {
                ms[0].signal("STOP").unwrap();
                stopped = Some(tokio::time::Instant::now());
            }
        }
        if !killed && stopped.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
            ms[0].signal("KILL").unwrap();
            killed = true;
        }
        if processed.len() >= N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processed {} of {N} (per member {:?})",
            processed.len(),
            seen.iter().map(BTreeMap::len).collect::<Vec<_>>()
        );
    }
    assert!(killed);
    assert!(
        redelivered > 0,
        "the killed member held samples that the others got again"
    );
    let processed: BTreeSet<u64> = seen.iter().flat_map(|s| s.keys().copied()).collect();
    assert_eq!(processed, (0..N as u64).collect());
    // The living members never processed a sample twice.
    for (m, s) in seen.iter().enumerate().skip(1) {
        let twice: Vec<_> = s.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "member {m} twice: {twice:?}");
    }
    assert!(
        !seen[1].is_empty() && !seen[2].is_empty(),
        "both survivors worked"
    );
    eprintln!(
        "work queue: m0 {} before its freeze, m1 {}, m2 {}, redelivered {redelivered}",
        seen[0].len(),
        seen[1].len(),
        seen[2].len()
    );
    s.close().await;
}
