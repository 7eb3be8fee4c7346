#!/usr/bin/env python3
"""Medians of results.jsonl, the Hypha/Zenoh ratios, the targets of issue 6, BENCHMARKS.md and a
plot. Usage: report.py results.jsonl BENCHMARKS.md benchmarks.png"""
import json, os, platform, statistics, subprocess, sys, time
from collections import defaultdict

src, md, png = sys.argv[1:4]
rows = [json.loads(l) for l in open(src) if l.strip()]
vals = defaultdict(list)
for r in rows:
    for k, v in r["result"].items():
        if isinstance(v, (int, float)):
            vals[(r["system"], r["workload"], r["param"], k)].append(v)
med = {k: statistics.median(v) for k, v in vals.items()}
reps = {k: len(v) for k, v in vals.items()}

def m(sys_, wl, p, k):
    return med.get((sys_, wl, str(p), k))

def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "n/a"

def fmt(v, unit=""):
    if v is None:
        return "n/a"
    return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"

cpu = "unknown CPU"
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    pass
machine = f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"
lines = [
    "# Benchmarks: Hypha vs Zenoh",
    "",
    f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine} (a shared, noisy machine: "
    "read the ratios, which come from the same run, rather than absolute figures).",
    "",
    "Reproduce: `examples/compare/run.sh` (REPS, SECS, N, FANOUT environment variables). Medians of "
    f"{max(reps.values()) if reps else 0} runs per figure, systems interleaved. Both in peer mode, explicit "
    "loopback endpoints (Zenoh: multicast scouting off), publisher and subscriber in separate processes, "
    "reliable, blocking congestion control, no timestamps (Zenoh peers' default).",
    "",
    "**Styles.** Round trips: Zenoh in its own best style (its `z_ping`/`z_pong` examples: no "
    "runtime of ours, `wait()` on every call, a blocking `recv()` on the subscriber's FIFO, the "
    "pong answering from its subscriber callback; `zbench ping|pong`); Hypha as its README "
    "recommends, the same shape (`#[tokio::main]`, the ping a loop in `main` with a stream "
    "subscriber and `publisher.put(..).await`, the pong answering from its callback with "
    "`put(..).now()`, express publisher; `examples/ping.rs`, `pong.rs`). Both systems' callback "
    "chains (`ping --chain`) are in `before_after.sh`. Throughput: both with a publisher loop and a "
    "callback subscriber. Raw TCP: two threads, blocking sockets, TCP_NODELAY.",
    "",
    "## Round trip, 64 B payload (µs; lower is better)",
    "",
    "| transport | percentile | Hypha | Zenoh 1.10.2 | Hypha/Zenoh | raw TCP |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
]
for proto in ["tcp", "quic"]:
    for p in ["p50_us", "p99_us", "p999_us"]:
        h, z = m("hypha", f"rtt_{proto}", 64, p), m("zenoh", f"rtt_{proto}", 64, p)
        raw = m("raw", "rtt_tcp", 64, p) if proto == "tcp" else None
        lines.append(f"| {proto} | {p[:-3]} | {fmt(h)} | {fmt(z)} | {ratio(h, z)} | {fmt(raw)} |")
lines += ["", "## Throughput over TCP (higher is better)", "",
          "| payload | Hypha msgs/s | Zenoh msgs/s | Hypha/Zenoh | Hypha MB/s | Zenoh MB/s | raw TCP MB/s |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for s in [8, 64, 1024, 65536, 1048576]:
    h, z = m("hypha", "thr", s, "msgs_per_s"), m("zenoh", "thr", s, "msgs_per_s")
    hb, zb, rb = m("hypha", "thr", s, "mb_per_s"), m("zenoh", "thr", s, "mb_per_s"), m("raw", "thr", s, "mb_per_s")
    lines.append(f"| {s} B | {fmt(h)} | {fmt(z)} | {ratio(h, z)} | {fmt(hb)} | {fmt(zb)} | {fmt(rb)} |")
h, z = m("hypha", "fanout", 64, "per_sub_median"), m("zenoh", "fanout", 64, "per_sub_median")
hm, zm = m("hypha", "fanout", 64, "per_sub_min"), m("zenoh", "fanout", 64, "per_sub_min")
lines += ["", "## Fan-out: 1 publisher, 8 subscriber processes, 64 B (msgs/s at each subscriber)", "",
          "| | Hypha | Zenoh | Hypha/Zenoh |", "| --- | ---: | ---: | ---: |",
          f"| median subscriber | {fmt(h)} | {fmt(z)} | {ratio(h, z)} |",
          f"| slowest subscriber | {fmt(hm)} | {fmt(zm)} | {ratio(hm, zm)} |"]
hi, zi = m("hypha", "idle", 0, "rss_kb"), m("zenoh", "idle", 0, "rss_kb")
hs, zs = m("hypha", "thr", 8, "rss_kb"), m("zenoh", "thr", 8, "rss_kb")
lines += ["", "## Memory (peak RSS, KiB; lower is better)", "",
          "| | Hypha | Zenoh | Hypha/Zenoh |", "| --- | ---: | ---: | ---: |",
          f"| idle node | {fmt(hi)} | {fmt(zi)} | {ratio(hi, zi)} |",
          f"| subscriber under the 8 B run | {fmt(hs)} | {fmt(zs)} | {ratio(hs, zs)} |"]

def target(name, ok):
    return f"| {name} | {'met' if ok else 'missed' if ok is not None else 'n/a'} |"

def le(a, b, f=1.0):
    return None if a is None or b is None else a <= f * b

def ge(a, b, f=1.0):
    return None if a is None or b is None else a >= f * b

lines += ["", "## Targets (issues 6, 9 and 13)", "", "| target | status |", "| --- | --- |",
          target("RTT p50 over TCP <= 0.6x Zenoh's best style", le(m("hypha", "rtt_tcp", 64, "p50_us"), m("zenoh", "rtt_tcp", 64, "p50_us"), 0.6)),
          target("RTT p99 over TCP <= 0.8x Zenoh's", le(m("hypha", "rtt_tcp", 64, "p99_us"), m("zenoh", "rtt_tcp", 64, "p99_us"), 0.8)),
          target("RTT p50 over TCP within 2x raw TCP", le(m("hypha", "rtt_tcp", 64, "p50_us"), m("raw", "rtt_tcp", 64, "p50_us"), 2.0)),
          target("RTT p50 over QUIC <= 0.6x Zenoh QUIC", le(m("hypha", "rtt_quic", 64, "p50_us"), m("zenoh", "rtt_quic", 64, "p50_us"), 0.6)),
          target("8 B msgs/s >= 1.2x Zenoh", ge(m("hypha", "thr", 8, "msgs_per_s"), m("zenoh", "thr", 8, "msgs_per_s"), 1.2)),
          target("64 B msgs/s >= 1.2x Zenoh", ge(m("hypha", "thr", 64, "msgs_per_s"), m("zenoh", "thr", 64, "msgs_per_s"), 1.2)),
          target("64 KiB MB/s >= Zenoh", ge(m("hypha", "thr", 65536, "mb_per_s"), m("zenoh", "thr", 65536, "mb_per_s"))),
          target("1 MiB MB/s >= Zenoh", ge(m("hypha", "thr", 1048576, "mb_per_s"), m("zenoh", "thr", 1048576, "mb_per_s"))),
          target("fan-out per-subscriber rate >= Zenoh", ge(h, z)),
          target("idle RSS <= Zenoh", le(hi, zi))]

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["p50", "p99", "p99.9"]
    for i, (sys_, proto) in enumerate([("hypha", "tcp"), ("zenoh", "tcp"), ("hypha", "quic"), ("zenoh", "quic")]):
        ys = [m(sys_, f"rtt_{proto}", 64, k) or 0 for k in ["p50_us", "p99_us", "p999_us"]]
        a.bar([x + i * 0.2 for x in range(3)], ys, width=0.2, label=f"{sys_} {proto}")
    a.set_xticks([x + 0.3 for x in range(3)], labels); a.set_ylabel("round trip (µs)"); a.set_yscale("log"); a.legend()
    a.set_title("64 B round trip")
    sizes = [8, 64, 1024, 65536, 1048576]
    for sys_ in ["hypha", "zenoh", "raw"]:
        b.plot(sizes, [m(sys_, "thr", s, "mb_per_s") or 0 for s in sizes], marker="o", label=sys_)
    b.set_xscale("log"); b.set_yscale("log"); b.set_xlabel("payload (B)"); b.set_ylabel("MB/s"); b.legend()
    b.set_title("throughput over TCP")
    fig.tight_layout(); fig.savefig(png, dpi=110)
    lines += ["", f"![latency percentiles and throughput by payload size]({os.path.basename(png)})"]
except Exception as e:  # matplotlib missing: the table stands alone
    lines += ["", f"(plot not drawn: {e})"]

# Sections written by other harnesses (syscalls.sh, before_after.sh) follow this marker and are
# kept when the file is rewritten.
MARK = "<!-- sections below are kept by report.py -->"
kept = ""
try:
    old = open(md).read()
    if MARK in old:
        kept = old[old.index(MARK):]
except OSError:
    pass
open(md, "w").write("\n".join(lines) + "\n\n" + (kept or MARK + "\n"))
print("\n".join(lines))
