//! The node's metrics: one `prometheus-client` registry per node, served as OpenMetrics text
//! at `@/<id>/metrics` (admin space) and on the HTTP gateway's `/metrics`.
//!
//! The counters live where they are counted (the runtime's atomics, each link's session
//! counters, the node core's per-face denials); a [`Collector`] reads them on every scrape
//! (`admin::Snapshot`), so nothing is counted twice and the hot path gains no work. Labels are
//! per link (`peer`, the neighbour's node id) and per reason, never per key (cardinality).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `hypha_info` | gauge (1) | `id`, `mode`, `version` |
//! | `hypha_uptime_seconds` | gauge | |
//! | `hypha_links` | gauge | |
//! | `hypha_link_up` | gauge (1 per link) | `peer`, `kind`, `transport` |
//! | `hypha_link_{tx,rx}_bytes_total`, `hypha_link_{tx,rx}_messages_total` | counter | `peer` |
//! | `hypha_link_queue_bytes` | gauge (queue depth) | `peer` |
//! | `hypha_link_dropped_total` | counter | `peer`, `reason` = congestion, acl_in, acl_out, lost (and framing, serial links) |
//! | `hypha_link_rtt_seconds` | gauge | `peer`: the transport's RTT estimate (QUIC, TCP and TLS links) |
//! | `hypha_prefix_{samples,bytes,dropped}_total` | counter | `prefix`: only with `[metrics] prefixes` (configured, so bounded: at most 64) |
//! | `hypha_dropped_total` | counter | `reason` = congestion, link_closed (queued, never sent), unconfirmed (written, never acknowledged), acl, framing |
//! | `hypha_{published,received,forwarded,delivered}_total` | counter | |
//! | `hypha_acl_denied_total` | counter | `what` = samples, identity, received (Info's `denied`, `refused_identity`, `denials_received`) |
//! | `hypha_declarations` | gauge | `kind` = subscriber, queryable, token |
//!
//! | `hypha_storage_{keys,samples,bytes}` | gauge | `storage` (its key expression: configured, so bounded) |
//! | `hypha_storage_queued` | gauge | `storage`: samples in its ingest queue |
//! | `hypha_storage_ingest_dropped_total` | counter | `storage`: samples dropped because its ingest queue stayed full |
//! | `hypha_storage_write_seconds` | histogram | `storage`: one backend write of a batch |
//! | `hypha_replay_lag_seconds` | histogram | `storage`: from a history (`_time`) query's arrival to its last replayed sample handed on |
//!
//! RTT is the transport's: quinn's smoothed estimate on QUIC links, the kernel's (`tcpi_rtt`,
//! read through socket diagnostics) on TCP and TLS links; other links have none.

use crate::admin::{Extra, Snapshot};
use crate::runtime::Runtime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Weak};

/// The content type of the text this module renders.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type StorageLabels = Vec<(&'static str, String)>;
type Timings = Family<StorageLabels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 10 µs to ~10 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

/// The storage timing families of one node (cloned into its registry).
#[derive(Clone, Debug)]
pub(crate) struct StorageTimerFamilies {
    write: Timings,
    replay: Timings,
}

impl Default for StorageTimerFamilies {
    fn default() -> Self {
        StorageTimerFamilies {
            write: Family::new_with_constructor(seconds_histogram),
            replay: Family::new_with_constructor(seconds_histogram),
        }
    }
}

impl StorageTimerFamilies {
    /// The histograms of the storage on `key`.
    pub(crate) fn for_storage(&self, key: &str) -> StorageTimers {
        let l = vec![("storage", key.to_string())];
        StorageTimers {
            write: self.write.get_or_create(&l).clone(),
            replay: self.replay.get_or_create(&l).clone(),
        }
    }
}

/// One storage's histograms (handles into the node's registry).
#[derive(Clone, Debug)]
pub(crate) struct StorageTimers {
    /// Seconds per backend write.
    pub(crate) write: Histogram,
    /// Seconds per history query answered.
    pub(crate) replay: Histogram,
}

/// One node's registry.
pub(crate) struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub(crate) fn new(rt: Weak<Runtime>, extra: Arc<Extra>) -> Self {
        let mut registry = Registry::with_prefix("hypha");
        registry.register(
            "storage_write_seconds",
            "Seconds per storage backend write",
            extra.timers.write.clone(),
        );
        registry.register(
            "replay_lag_seconds",
            "Seconds from a history query's arrival at a storage to its last replayed sample",
            extra.timers.replay.clone(),
        );
        registry.register_collector(Box::new(NodeCollector { rt, extra }));
        Metrics { registry }
    }

    /// The registry as OpenMetrics text (ends with `# EOF`).
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            // Writing into a String cannot fail; a metric that could not be encoded is a bug.
            s.push_str("# EOF\n");
        }
        s
    }
}

struct NodeCollector {
    rt: Weak<Runtime>,
    extra: Arc<Extra>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    if let [(labels, v)] = values
        && labels.is_empty()
    {
        // No labels: `name value`, not `name{} value`.
        return ConstCounter::new(*v).encode(m);
    }
    for (labels, v) in values {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(Labels<'_>, i64)],
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0i64);
    let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    if let [(labels, v)] = values
        && labels.is_empty()
    {
        // No labels: `name value`, not `name{} value`.
        return ConstGauge::new(*v).encode(m);
    }
    for (labels, v) in values {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(rt) = self.rt.upgrade() else {
            return Ok(());
        };
        let s = Snapshot::read(&rt, &self.extra);
        let c = |name: &str| {
            s.counters
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(0, |(_, v)| *v)
        };
        let id = s.id.to_string();
        let version = env!("CARGO_PKG_VERSION");
        gauge(
            &mut enc,
            "info",
            "This node (always 1)",
            &[(
                vec![
                    ("id", id.as_str()),
                    ("mode", crate::admin::mode_name(s.mode)),
                    ("version", version),
                ],
                1,
            )],
        )?;
        let g = ConstGauge::new(s.uptime_s);
        g.encode(enc.encode_descriptor(
            "uptime_seconds",
            "Seconds since the node started",
            None,
            g.metric_type(),
        )?)?;
        gauge(
            &mut enc,
            "links",
            "Links up",
            &[(vec![], s.links.len() as i64)],
        )?;
        let peers: Vec<String> = s.links.iter().map(|l| l.peer.to_string()).collect();
        let per_link = |f: &dyn Fn(&crate::admin::LinkView) -> u64| -> Vec<(Labels<'_>, u64)> {
            s.links
                .iter()
                .zip(&peers)
                .map(|(l, p)| (vec![("peer", p.as_str())], f(l)))
                .collect()
        };
        gauge(
            &mut enc,
            "link_up",
            "1 for each link up",
            &s.links
                .iter()
                .zip(&peers)
                .map(|(l, p)| {
                    (
                        vec![
                            ("peer", p.as_str()),
                            ("kind", l.kind),
                            ("transport", l.transport.as_str()),
                        ],
                        1,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut enc,
            "link_tx_bytes",
            "Bytes sent on the link",
            &per_link(&|l| l.stats.tx_bytes),
        )?;
        counter(
            &mut enc,
            "link_rx_bytes",
            "Bytes received on the link",
            &per_link(&|l| l.stats.rx_bytes),
        )?;
        counter(
            &mut enc,
            "link_tx_messages",
            "Network messages sent on the link",
            &per_link(&|l| l.stats.tx_messages),
        )?;
        counter(
            &mut enc,
            "link_rx_messages",
            "Network messages received on the link",
            &per_link(&|l| l.stats.rx_messages),
        )?;
        gauge(
            &mut enc,
            "link_queue_bytes",
            "Bytes waiting in the link's queues",
            &s.links
                .iter()
                .zip(&peers)
                .map(|(l, p)| (vec![("peer", p.as_str())], l.queued_bytes as i64))
                .collect::<Vec<_>>(),
        )?;
        let mut drops = Vec::new();
        for (l, p) in s.links.iter().zip(&peers) {
            for (reason, v) in [
                ("congestion", l.dropped),
                ("acl_in", l.denied_in),
                ("acl_out", l.denied_out),
                ("lost", l.stats.rx_lost),
            ] {
                drops.push((vec![("peer", p.as_str()), ("reason", reason)], v));
            }
            if l.framing.is_some() {
                let v = l.framing_errors();
                drops.push((vec![("peer", p.as_str()), ("reason", "framing")], v));
            }
        }
        counter(
            &mut enc,
            "link_dropped",
            "Messages dropped on the link, by reason",
            &drops,
        )?;
        // Float seconds, one per link whose transport measures it.
        let g = ConstGauge::new(0.0f64);
        let mut m = enc.encode_descriptor(
            "link_rtt_seconds",
            "The link's round-trip time as its transport estimates it (QUIC links)",
            None,
            g.metric_type(),
        )?;
        for (l, p) in s.links.iter().zip(&peers) {
            if let Some(rtt) = l.rtt {
                let labels: Labels<'_> = vec![("peer", p.as_str())];
                ConstGauge::new(rtt.as_secs_f64()).encode(m.encode_family(&labels)?)?;
            }
        }
        // `[metrics] prefixes` (opt-in): one series per configured key expression, the
        // atomics the runtime's resolved routes add to.
        let prefixes = rt.prefix_counters();
        if !prefixes.is_empty() {
            let per_prefix = |f: &dyn Fn(&crate::runtime::PrefixCounter) -> u64| {
                prefixes
                    .iter()
                    .map(|p| (vec![("prefix", p.expr.as_str())], f(p)))
                    .collect::<Vec<(Labels<'_>, u64)>>()
            };
            counter(
                &mut enc,
                "prefix_samples",
                "Samples published here or received from neighbours on keys in the prefix",
                &per_prefix(&|p| p.samples.load(std::sync::atomic::Ordering::Relaxed)),
            )?;
            counter(
                &mut enc,
                "prefix_bytes",
                "Payload bytes of those samples",
                &per_prefix(&|p| p.bytes.load(std::sync::atomic::Ordering::Relaxed)),
            )?;
            counter(
                &mut enc,
                "prefix_dropped",
                "Copies of those samples dropped for a full link (one per link missed)",
                &per_prefix(&|p| p.dropped.load(std::sync::atomic::Ordering::Relaxed)),
            )?;
        }
        let f = hypha_transports::serial::framing_totals();
        let framing = u64::from(f.crc_errors) + u64::from(f.cobs_errors) + u64::from(f.overflows);
        counter(
            &mut enc,
            "dropped",
            "Messages dropped by this node, by reason (framing: serial frames, process-wide)",
            &[
                (vec![("reason", "congestion")], c("dropped")),
                (vec![("reason", "link_closed")], c("dropped_link_closed")),
                (vec![("reason", "unconfirmed")], c("dropped_unconfirmed")),
                (vec![("reason", "acl")], c("denied")),
                (vec![("reason", "framing")], framing),
            ],
        )?;
        for (name, key, help) in [
            ("published", "published", "Publications made here"),
            ("received", "received", "Samples received from neighbours"),
            (
                "forwarded",
                "forwarded",
                "Samples forwarded between neighbours",
            ),
            (
                "delivered",
                "delivered_local",
                "Samples delivered to local subscribers",
            ),
        ] {
            counter(&mut enc, name, help, &[(vec![], c(key))])?;
        }
        counter(
            &mut enc,
            "acl_denied",
            "Access-control refusals: samples refused here, links refused for their identity, refusals neighbours told us of",
            &[
                (vec![("what", "samples")], c("denied")),
                (vec![("what", "identity")], c("refused_identity")),
                (vec![("what", "received")], c("denials_received")),
            ],
        )?;
        for (name, help, f) in [
            (
                "storage_keys",
                "Keys whose latest value is a put, per storage",
                (|v: &crate::admin::StorageView| v.keys) as fn(&crate::admin::StorageView) -> u64,
            ),
            (
                "storage_samples",
                "Samples in each storage's history",
                |v| v.samples,
            ),
            (
                "storage_bytes",
                "Payload bytes in each storage's history",
                |v| v.bytes,
            ),
        ] {
            let values: Vec<(Labels<'_>, i64)> = s
                .storages
                .iter()
                .map(|v| (vec![("storage", v.key.as_str())], f(v) as i64))
                .collect();
            gauge(&mut enc, name, help, &values)?;
        }
        let queued: Vec<(Labels<'_>, i64)> = s
            .storages
            .iter()
            .map(|v| (vec![("storage", v.key.as_str())], v.queued as i64))
            .collect();
        gauge(
            &mut enc,
            "storage_queued",
            "Samples waiting in each storage's ingest queue",
            &queued,
        )?;
        let dropped: Vec<(Labels<'_>, u64)> = s
            .storages
            .iter()
            .map(|v| (vec![("storage", v.key.as_str())], v.dropped))
            .collect();
        counter(
            &mut enc,
            "storage_ingest_dropped",
            "Samples each storage dropped because its ingest queue stayed full",
            &dropped,
        )?;
        let count = |k: &str| s.decls.iter().filter(|d| d.kind == k).count() as i64;
        gauge(
            &mut enc,
            "declarations",
            "Subscribers, queryables and tokens in the node's tables",
            &[
                (vec![("kind", "subscriber")], count("subscriber")),
                (vec![("kind", "queryable")], count("queryable")),
                (vec![("kind", "token")], count("token")),
            ],
        )?;
        Ok(())
    }
}
