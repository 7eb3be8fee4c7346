//! What `hypha info` and `hypha top` print for people: tables of links read from
//! [`Session::info`] and the admin space (`@/<id>/links/**`, the links' message and byte
//! counters), and `top`'s rates, the differences of two readings.

use crate::Session;
use crate::api::Info;
use crate::api::query::{Consolidation, QueryTarget};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Clear the screen and go home: what `top` writes before each frame (not with `--once`).
pub(super) const CLEAR: &str = "\x1b[H\x1b[2J";

/// The JSON values the admin space answers for `selector` (every node's, consolidation none).
pub(super) async fn admin(s: &Session, selector: &str, timeout: Duration) -> Vec<Value> {
    let Ok(replies) = s
        .get(selector)
        .target(QueryTarget::All)
        .consolidation(Consolidation::None)
        .timeout(timeout)
        .send()
        .await
    else {
        return Vec::new();
    };
    replies
        .collect()
        .await
        .into_iter()
        .filter_map(|r| r.result.ok())
        .filter_map(|s| serde_json::from_slice(&s.payload).ok())
        .collect()
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// A count with a unit prefix: 999, 1.2k, 3.4M.
fn si(n: f64) -> String {
    if n < 1000.0 {
        if n.fract() == 0.0 {
            format!("{n:.0}")
        } else {
            format!("{n:.1}")
        }
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}G", n / 1e9)
    }
}

/// Left-aligned columns for the first `left` cells, right-aligned numbers after, two spaces
/// between.
fn table(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = width[c];
            if c < left {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `hypha info`'s table: the node, then one row per link (`links`: this node's admin-space
/// link values, for the message and byte counters; a link missing there shows `-`).
pub(super) fn info_table(info: &Info, links: &[Value]) -> String {
    let mut out = format!(
        "node {}  {}  listening {}\n",
        info.id,
        info.mode.as_str(),
        if info.listening.is_empty() {
            "nowhere".to_string()
        } else {
            info.listening
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        out,
        "published {}  received {}  forwarded {}  dropped {}  link_closed {}  unconfirmed {}  \
         denied {}  denials received {}",
        info.published,
        info.received,
        info.forwarded,
        info.dropped,
        info.dropped_link_closed,
        info.dropped_unconfirmed,
        info.denied,
        info.denials_received
    );
    let f = &info.serial_framing;
    if f.frames + f.crc_errors + f.cobs_errors + f.overflows > 0 {
        let _ = writeln!(
            out,
            "serial framing: frames {}  crc errors {}  cobs errors {}  overflows {}",
            f.frames, f.crc_errors, f.cobs_errors, f.overflows
        );
    }
    if info.links.is_empty() {
        out.push_str("no links\n");
        return out;
    }
    let by_peer: HashMap<&str, &Value> = links
        .iter()
        .filter_map(|l| Some((l["peer"].as_str()?, l)))
        .collect();
    let mut rows = vec![
        [
            "PEER",
            "KIND",
            "PRINCIPAL",
            "TRANSPORT",
            "REMOTE",
            "DATA IN/OUT",
            "CTRL IN/OUT",
            "BYTES IN",
            "BYTES OUT",
            "DROPPED",
            "DENIED IN/OUT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut summaries: Vec<_> = info.links.iter().collect();
    summaries.sort_by_key(|l| l.node.to_string());
    for l in summaries {
        let id = l.node.to_string();
        let a = by_peer.get(id.as_str());
        let count = |k: &str| a.map_or("-".to_string(), |v| si(u(v, k) as f64));
        // Data (samples, queries, replies) and control (declarations, interests, link state…)
        // messages, in/out.
        let pair = |i: &str, o: &str| format!("{}/{}", count(i), count(o));
        let transport = a
            .and_then(|v| v["transport"].as_str())
            .map_or_else(|| l.remote.to_string(), str::to_string);
        let transport = transport.split('/').next().unwrap_or("").to_string();
        rows.push(vec![
            id,
            l.kind.to_string(),
            l.principal.clone(),
            transport,
            l.remote.to_string(),
            pair("rx_data", "tx_data"),
            pair("rx_control", "tx_control"),
            count("rx_bytes"),
            count("tx_bytes"),
            l.dropped.to_string(),
            format!("{}/{}", l.denied_in, l.denied_out),
        ]);
    }
    out.push_str(&table(&rows, 5));
    out
}

/// One reading of a link's counters.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    rx_messages: u64,
    tx_messages: u64,
    rx_bytes: u64,
    tx_bytes: u64,
}

/// `hypha top`'s state: the last reading of each link, for rates.
#[derive(Default)]
pub(super) struct Top {
    last: HashMap<(String, String), Reading>,
}

impl Top {
    /// Reads `target`'s node and links (an id, or `*` for every node that answers; `me`, this
    /// process's own node, is left out) and renders a frame.
    pub(super) async fn frame(
        &mut self,
        s: &Session,
        target: &str,
        interval: Duration,
        timeout: Duration,
    ) -> String {
        let me = s.id().to_string();
        let (node_sel, links_sel) = (format!("@/{target}/node"), format!("@/{target}/links/**"));
        let (nodes, links) =
            tokio::join!(admin(s, &node_sel, timeout), admin(s, &links_sel, timeout));
        self.render(&me, target, interval, nodes, links, Instant::now())
    }

    fn render(
        &mut self,
        me: &str,
        target: &str,
        interval: Duration,
        mut nodes: Vec<Value>,
        links: Vec<Value>,
        now: Instant,
    ) -> String {
        nodes.retain(|n| n["id"].as_str() != Some(me));
        nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        let mut out = format!(
            "hypha top  {}  every {:.1} s  {} node{}\n",
            if target == "*" {
                "every node".to_string()
            } else {
                target.to_string()
            },
            interval.as_secs_f64(),
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" }
        );
        if nodes.is_empty() {
            out.push_str("no answer from the admin space\n");
        }
        let mut seen = HashMap::new();
        for n in &nodes {
            let id = n["id"].as_str().unwrap_or("");
            let c = &n["counters"];
            let _ = writeln!(
                out,
                "\nnode {id}  {}  v{}  up {:.0} s  {} links  published {}  forwarded {}  dropped {}",
                n["mode"].as_str().unwrap_or("?"),
                n["version"].as_str().unwrap_or("?"),
                n["uptime_s"].as_f64().unwrap_or(0.0),
                u(n, "links"),
                u(c, "published"),
                u(c, "forwarded"),
                u(c, "dropped"),
            );
            let mut rows: Vec<(f64, Vec<String>)> = Vec::new();
            for l in links.iter().filter(|l| l["node"].as_str() == Some(id)) {
                let peer = l["peer"].as_str().unwrap_or("").to_string();
                let r = Reading {
                    at: now,
                    rx_messages: u(l, "rx_messages"),
                    tx_messages: u(l, "tx_messages"),
                    rx_bytes: u(l, "rx_bytes"),
                    tx_bytes: u(l, "tx_bytes"),
                };
                let key = (id.to_string(), peer.clone());
                let rates = self.last.get(&key).and_then(|p| {
                    let dt = r.at.checked_duration_since(p.at)?.as_secs_f64();
                    let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / dt;
                    (dt > 0.0).then(|| {
                        [
                            per_s(r.rx_messages, p.rx_messages),
                            per_s(r.tx_messages, p.tx_messages),
                            per_s(r.rx_bytes, p.rx_bytes),
                            per_s(r.tx_bytes, p.tx_bytes),
                        ]
                    })
                });
                seen.insert(key, r);
                let drops = u(l, "dropped") + u(&l["drops"], "lost");
                let cell = |i: usize| rates.map_or("-".to_string(), |x| si(x[i]));
                let label = if peer == me {
                    format!("{peer} (this top)")
                } else {
                    peer
                };
                rows.push((
                    rates.map_or(0.0, |x| x[0] + x[1]),
                    vec![
                        label,
                        l["kind"].as_str().unwrap_or("?").to_string(),
                        l["transport"].as_str().unwrap_or("?").to_string(),
                        cell(0),
                        cell(1),
                        cell(2),
                        cell(3),
                        drops.to_string(),
                        (u(l, "denied_in") + u(l, "denied_out")).to_string(),
                        si(u(l, "queued_bytes") as f64),
                    ],
                ));
            }
            // Busiest first; the id breaks ties so that quiet rows keep their place.
            rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1[0].cmp(&b.1[0])));
            if rows.is_empty() {
                out.push_str("  no links\n");
                continue;
            }
            let mut t = vec![
                [
                    "PEER",
                    "KIND",
                    "TRANSPORT",
                    "MSG/S IN",
                    "MSG/S OUT",
                    "B/S IN",
                    "B/S OUT",
                    "DROPPED",
                    "DENIED",
                    "QUEUED B",
                ]
                .map(String::from)
                .to_vec(),
            ];
            t.extend(rows.into_iter().map(|r| r.1));
            for line in table(&t, 3).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        self.last = seen;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(node: &str, peer: &str, rx: u64, tx: u64) -> Value {
        json!({"node": node, "peer": peer, "kind": "client", "transport": "tcp",
               "rx_messages": rx, "tx_messages": tx, "rx_bytes": rx * 10, "tx_bytes": tx * 10,
               "dropped": 1, "drops": {"lost": 2}, "denied_in": 0, "denied_out": 3,
               "queued_bytes": 0})
    }

    #[test]
    fn top_rates_are_differences_over_the_elapsed_time_busiest_first() {
        let node = json!({"id": "n", "mode": "router", "version": "0.1.0", "uptime_s": 5.0,
                          "links": 2, "counters": {"published": 0}});
        let me = json!({"id": "me", "mode": "client"});
        let mut top = Top::default();
        let t0 = Instant::now();
        let i = Duration::from_secs(1);
        let first = top.render(
            "me",
            "n",
            i,
            vec![node.clone(), me.clone()],
            vec![link("n", "a", 0, 0), link("n", "b", 0, 0)],
            t0,
        );
        assert!(first.contains("1 node\n"), "{first}");
        assert!(!first.contains("\nnode me"), "{first}");
        // No rate before a second reading.
        let a = first
            .lines()
            .find(|l| l.trim_start().starts_with("a "))
            .unwrap();
        assert_eq!(a.split_whitespace().nth(3), Some("-"), "{first}");
        let second = top.render(
            "me",
            "n",
            i,
            vec![node],
            vec![link("n", "a", 10, 20), link("n", "b", 1000, 4000)],
            t0 + Duration::from_secs(2),
        );
        let rows: Vec<Vec<&str>> = second
            .lines()
            .filter(|l| l.starts_with("  ") && !l.contains("PEER"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0][..7],
            ["b", "client", "tcp", "500", "2.0k", "5.0k", "20.0k"]
        );
        assert_eq!(rows[1][..7], ["a", "client", "tcp", "5", "10", "50", "100"]);
        // Drops are congestion plus losses; denials both ways.
        assert_eq!(rows[1][7..9], ["3", "3"]);
    }

    #[test]
    fn the_info_table_counts_what_was_lost_with_closed_links() {
        let info = Info {
            id: hypha_core::id::NodeId::from_u128(7),
            mode: hypha_core::wire::Mode::Client,
            listening: Vec::new(),
            links: Vec::new(),
            published: 100,
            received: 0,
            dropped: 3,
            dropped_link_closed: 15,
            dropped_unconfirmed: 9,
            forwarded: 0,
            denied: 0,
            refused_handshaking: 0,
            reassembly_evicted: 0,
            refused_identity: 0,
            refused_duplicate: 0,
            denials_received: 0,
            serial_framing: Default::default(),
        };
        let out = info_table(&info, &[]);
        let totals: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        let after = |name: &str| {
            let i = totals.iter().position(|c| *c == name).unwrap();
            totals[i + 1]
        };
        assert_eq!(
            (
                after("published"),
                after("dropped"),
                after("link_closed"),
                after("unconfirmed")
            ),
            ("100", "3", "15", "9"),
            "{out}"
        );
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(2.5), "2.5");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2.5e6), "2.5M");
    }
}

/// `hypha info`'s backbone section: each router's site, role and database digest (equal
/// digests: equal databases), its routes and counters. Empty when no router answered.
pub(super) fn backbone_table(routers: &[Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if routers.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nbackbone ({} router(s) answered)", routers.len());
    let mut routers: Vec<&Value> = routers.iter().collect();
    routers.sort_by_key(|r| r["lsdb"][0]["router"].as_str().unwrap_or("").to_string());
    for r in routers {
        let me = r["lsdb"][0]["router"].as_str().unwrap_or("?");
        let _ = writeln!(
            out,
            "  router {me} site {:?}{} lsdb {} ({} LSAs)",
            r["site"].as_str().unwrap_or(""),
            if r["designated"] == true {
                " (designated)"
            } else {
                ""
            },
            r["digest"].as_str().unwrap_or("?"),
            r["lsdb"].as_array().map_or(0, Vec::len)
        );
        for route in r["routes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    -> {} via {} cost {} hops {}",
                route["router"].as_str().unwrap_or("?"),
                route["next"].as_str().unwrap_or("?"),
                u(route, "cost"),
                u(route, "hops")
            );
        }
        let c = &r["counters"];
        let _ = writeln!(
            out,
            "    transit {} hop_drop {} unroutable {} resyncs {} lsa_in {} spf_runs {}",
            u(c, "transit"),
            u(c, "hop_drop"),
            u(c, "unroutable"),
            u(c, "resyncs"),
            u(c, "lsa_in"),
            u(c, "spf_runs")
        );
    }
    out
}

#[cfg(test)]
mod backbone_tests {
    use super::*;

    #[test]
    fn the_backbone_table_shows_routes_roles_and_counters() {
        let r: Value = serde_json::json!({
            "site": "A", "designated": true, "digest": "00ff",
            "lsdb": [{"router": "aa"}, {"router": "bb"}],
            "routes": [{"router": "bb", "next": "bb", "cost": 20, "hops": 1}],
            "counters": {"transit": 3, "hop_drop": 0, "unroutable": 1, "resyncs": 2,
                "lsa_in": 9, "spf_runs": 4}
        });
        let t = backbone_table(&[r]);
        assert!(
            t.contains("router aa site \"A\" (designated) lsdb 00ff (2 LSAs)"),
            "{t}"
        );
        assert!(t.contains("-> bb via bb cost 20 hops 1"), "{t}");
        assert!(
            t.contains("transit 3 hop_drop 0 unroutable 1 resyncs 2"),
            "{t}"
        );
        assert!(backbone_table(&[]).is_empty());
    }
}
