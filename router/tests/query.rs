//! get / queryable, in one process and across two nodes on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::api::query::{Consolidation, QueryTarget, ReplyError};
use hypha::{Config, Session};
use std::time::{Duration, Instant};

mod common;
use common::T;

fn cfg(connect: &[String]) -> Config {
    common::node_config("tcp/127.0.0.1:0", connect)
}

async fn pair() -> (Session, Session) {
    common::pair("tcp").await
}

/// Waits until `s` sees a queryable for `key` (declarations travel asynchronously).
async fn wait_queryable(s: &Session, key: &str, replies: usize) {
    let deadline = Instant::now() + T;
    loop {
        let r = s
            .get(key)
            .target(QueryTarget::All)
            .consolidation(Consolidation::None)
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        if r.unwrap().collect().await.len() >= replies {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queryable on {key} never became visible"
        );
    }
}

#[tokio::test]
async fn remote_queryable_answers_with_values_deletes_and_errors() {
    let (a, b) = pair().await;
    let q = a.declare_queryable("sensors/**").stream().unwrap();
    tokio::spawn(async move {
        while let Some(query) = q.recv().await {
            match query.parameter("mode") {
                Some("err") => query.reply_err("no such thing").await.unwrap(),
                _ => {
                    query.reply("sensors/t1", "21.5").await.unwrap();
                    query.reply_delete("sensors/t2", None).await.unwrap();
                    // A reply outside the query is refused locally.
                    let bad = query.reply("elsewhere/x", "1").await.unwrap_err();
                    assert!(matches!(bad, ReplyError::KeyMismatch { .. }), "{bad}");
                }
            }
        }
    });
    wait_queryable(&b, "sensors/**", 2).await;
    let replies = b
        .get("sensors/**")
        .consolidation(Consolidation::None)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    let s = replies[0].result.as_ref().unwrap();
    assert_eq!((&*s.key, s.payload_str()), ("sensors/t1", Some("21.5")));
    assert_eq!(replies[0].replier, Some(a.id()));
    assert_eq!(
        replies[1].result.as_ref().unwrap().kind,
        hypha::SampleKind::Delete
    );
    let errs = b
        .get("sensors/x?mode=err")
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(
        &errs[0].result.as_ref().unwrap_err().payload[..],
        b"no such thing"
    );
}

#[tokio::test]
async fn latest_consolidation_keeps_one_reply_per_key() {
    let (a, b) = pair().await;
    let _q1 = a
        .declare_queryable("c/**")
        .callback(|q| {
            tokio::spawn(async move {
                q.reply("c/k", "from-a-1").await.unwrap();
                q.reply("c/j", "j").await.unwrap();
            });
        })
        .unwrap();
    let _q2 = b
        .declare_queryable("c/**")
        .callback(|q| {
            tokio::spawn(async move { q.reply("c/k", "from-b").await.unwrap() });
        })
        .unwrap();
    wait_queryable(&b, "c/**", 3).await;
    let all = b
        .get("c/**")
        .target(QueryTarget::All)
        .consolidation(Consolidation::None)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(all.len(), 3, "{all:?}");
    let latest = b
        .get("c/**")
        .target(QueryTarget::All)
        .consolidation(Consolidation::Latest)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let keys: Vec<&str> = latest
        .iter()
        .map(|r| &*r.result.as_ref().unwrap().key)
        .collect();
    assert_eq!(keys, ["c/j", "c/k"]);
}

#[tokio::test]
async fn a_silent_queryable_ends_the_stream_at_the_timeout() {
    let (a, b) = pair().await;
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    let _q = a
        .declare_queryable("slow/**")
        .callback(move |q| h.lock().unwrap().push(q)) // never answers, never drops
        .unwrap();
    let deadline = Instant::now() + T;
    while held.lock().unwrap().is_empty() {
        let _ = b
            .get("slow/x")
            .timeout(Duration::from_millis(100))
            .send()
            .await
            .unwrap()
            .collect()
            .await;
        assert!(Instant::now() < deadline);
    }
    let t0 = Instant::now();
    let r = b
        .get("slow/x")
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    assert!(r.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn dropping_the_reply_stream_cancels_the_query() {
    let s = hypha::open(cfg(&[])).await.unwrap();
    let q = s.declare_queryable("x/**").stream().unwrap();
    let replies = s.get("x/y").send().await.unwrap();
    let query = q.recv().await.unwrap();
    drop(replies);
    assert_eq!(query.reply("x/y", "late").await, Err(ReplyError::Gone));
}

/// Across nodes, and through a router: a querier that drops its replies makes the remote
/// queryable's next replies fail with `Gone` (the cancel travels the request's path).
#[tokio::test]
async fn dropping_the_reply_stream_cancels_a_remote_query() {
    for through_router in [false, true] {
        let (answerer, querier, _router) = if through_router {
            let mut rc = common::node_config("tcp/127.0.0.1:0", &[]);
            rc.mode = hypha_core::wire::Mode::Router;
            let r = hypha::open(rc).await.unwrap();
            let ep = r.info().listening[0].to_string();
            let client = |ep: &str| {
                let mut c = cfg(&[ep.to_string()]);
                c.listen.clear();
                c.mode = hypha_core::wire::Mode::Client;
                hypha::open(c)
            };
            let a = client(&ep).await.unwrap();
            let b = client(&ep).await.unwrap();
            (a, b, Some(r))
        } else {
            let (a, b) = pair().await;
            (a, b, None)
        };
        let q = answerer.declare_queryable("many/**").await.unwrap();
        let key = hypha::keyexpr::OwnedKeyExpr::new("many/**".to_string()).unwrap();
        assert!(querier.wait_queryable(&key, T).await);
        let mut replies = querier
            .get("many/**")
            .consolidation(Consolidation::None)
            .timeout(T)
            .send()
            .await
            .unwrap();
        let query = tokio::time::timeout(T, q.recv()).await.unwrap().unwrap();
        let serve = tokio::spawn(async move {
            for i in 0..200 {
                if query.reply(&format!("many/{i}"), "v").await == Err(ReplyError::Gone) {
                    return i;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            200
        });
        for _ in 0..5 {
            assert!(
                tokio::time::timeout(T, replies.recv())
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        drop(replies);
        let sent = tokio::time::timeout(T, serve).await.unwrap().unwrap();
        assert!(
            sent < 200,
            "the queryable sent all 200 replies after the querier left (router: {through_router})"
        );
    }
}

#[tokio::test]
async fn no_queryable_means_an_empty_answer_at_once() {
    let s = hypha::open(cfg(&[])).await.unwrap();
    let t0 = Instant::now();
    let r = s
        .get("nobody/**")
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    assert!(r.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(1));
}
