//! Key-expression bench program: prints `intersects` / `includes` throughput and `KeTree`
//! lookup throughput on a 100k-entry tree (median of 5 runs each).
//!
//! Run with `cargo run --release -p hypha-core --example keyexpr_bench`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hypha_core::keyexpr::{KeTree, KeyExpr, OwnedKeyExpr};

const RUNS: usize = 5;
const TREE_ENTRIES: usize = 100_000;
const SENSORS: [&str; 5] = ["speed", "fuel", "temp", "pos", "battery"];

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn owned(s: String) -> OwnedKeyExpr {
    match OwnedKeyExpr::autocanonize(s) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bench bug: invalid key expression: {e}");
            std::process::exit(1);
        }
    }
}

fn concrete_key(rng: &mut Rng) -> OwnedKeyExpr {
    let region = rng.below(50);
    let car = rng.below(2_000);
    let sensor = SENSORS[rng.below(SENSORS.len())];
    owned(format!("fleet/region{region}/car{car}/{sensor}"))
}

/// A wildcard expression; with `dsl_siblings`, one kind of them (`fleet/*/car<N>$*/**`) puts
/// hundreds of distinct `$*` chunks under the same trie node, which every query must try.
fn wild_expr(rng: &mut Rng, dsl_siblings: bool) -> OwnedKeyExpr {
    let region = rng.below(50);
    let car = rng.below(2_000);
    let sensor = SENSORS[rng.below(SENSORS.len())];
    owned(match rng.below(8) {
        0 => format!("fleet/region{region}/*/{sensor}"),
        1 => format!("fleet/region{region}/car{car}/**"),
        2 => format!("fleet/**/{sensor}"),
        3 => format!("fleet/region$*/car{car}/{sensor}"),
        4 if dsl_siblings => format!("fleet/*/car{car}$*/**"),
        4 => format!("fleet/*/car{car}/**"),
        5 => format!("fleet/region{region}/**/{sensor}"),
        6 => format!("@admin/node{car}/**"),
        _ => format!("fleet/region{region}/car{car}/{sensor}"),
    })
}

/// Runs `f` `RUNS` times; returns the median of `ops / elapsed`.
fn median_rate(ops: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut rates = Vec::with_capacity(RUNS);
    let mut check = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        check = black_box(f());
        let elapsed = start.elapsed().max(Duration::from_nanos(1));
        rates.push(ops as f64 / elapsed.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    (rates[RUNS / 2], check)
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:8.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:8.2} k/s", rate / 1e3)
    } else {
        format!("{rate:8.2}  /s")
    }
}

/// Builds a tree of `TREE_ENTRIES` entries (about 2% wildcards) and measures lookups in it.
/// Returns the entries, for the linear-scan comparison.
fn bench_tree(rng: &mut Rng, dsl_siblings: bool) -> Vec<OwnedKeyExpr> {
    let label = if dsl_siblings {
        "with ~250 `$*` siblings"
    } else {
        "`*`/`**` wildcards"
    };
    let mut tree = KeTree::new();
    let mut entries = Vec::with_capacity(TREE_ENTRIES);
    let build = Instant::now();
    while tree.len() < TREE_ENTRIES {
        let k = if rng.below(50) == 0 {
            wild_expr(rng, dsl_siblings)
        } else {
            concrete_key(rng)
        };
        if tree.insert(&k.as_keyexpr(), entries.len()).is_none() {
            entries.push(k);
        }
    }
    let wild = entries.iter().filter(|e| e.as_keyexpr().is_wild()).count();
    println!(
        "KeTree, {label}: {} entries ({wild} wild) built in {:.1} ms",
        tree.len(),
        build.elapsed().as_secs_f64() * 1e3
    );

    let queries: Vec<OwnedKeyExpr> = (0..20_000).map(|_| concrete_key(rng)).collect();
    let (rate, hits) = median_rate(queries.len(), || {
        queries
            .iter()
            .map(|q| tree.intersecting(&q.as_keyexpr()).count())
            .sum()
    });
    println!(
        "  intersecting, concrete key       {}  ({hits} matches)",
        human(rate)
    );
    let (rate, hits) = median_rate(queries.len(), || {
        queries
            .iter()
            .map(|q| tree.including(&q.as_keyexpr()).count())
            .sum()
    });
    println!(
        "  including, concrete key          {}  ({hits} matches)",
        human(rate)
    );
    let (rate, hits) = median_rate(queries.len(), || {
        queries
            .iter()
            .filter(|q| tree.get(&q.as_keyexpr()).is_some())
            .count()
    });
    println!(
        "  get (exact)                      {}  ({hits} found)",
        human(rate)
    );
    let wild_queries: Vec<OwnedKeyExpr> = (0..2_000)
        .map(|_| {
            let region = rng.below(50);
            let sensor = SENSORS[rng.below(SENSORS.len())];
            owned(format!("fleet/region{region}/*/{sensor}"))
        })
        .collect();
    let (rate, hits) = median_rate(wild_queries.len(), || {
        wild_queries
            .iter()
            .map(|q| tree.intersecting(&q.as_keyexpr()).count())
            .sum()
    });
    println!(
        "  intersecting, region<N>/*/sensor {}  ({hits} matches)",
        human(rate)
    );
    let (rate, hits) = median_rate(wild_queries.len(), || {
        wild_queries
            .iter()
            .map(|q| tree.included_by(&q.as_keyexpr()).count())
            .sum()
    });
    println!(
        "  included_by, region<N>/*/sensor  {}  ({hits} matches)",
        human(rate)
    );
    entries
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!("hypha-core keyexpr bench (median of {RUNS} runs)");

    // --- validation ----------------------------------------------------------------------------
    let strings: Vec<String> = (0..10_000)
        .map(|i| {
            if i % 4 == 0 {
                wild_expr(&mut rng, true).into_string()
            } else {
                concrete_key(&mut rng).into_string()
            }
        })
        .collect();
    let (rate, valid) = median_rate(strings.len(), || {
        strings
            .iter()
            .filter(|s| KeyExpr::new(black_box(s)).is_ok())
            .count()
    });
    println!(
        "KeyExpr::new (validation)           {}  ({valid} valid)",
        human(rate)
    );

    // --- intersects / includes on pairs of expressions ---------------------------------------
    let patterns: Vec<OwnedKeyExpr> = (0..1_000).map(|_| wild_expr(&mut rng, true)).collect();
    let keys: Vec<OwnedKeyExpr> = (0..1_000).map(|_| concrete_key(&mut rng)).collect();
    let pairs: Vec<(KeyExpr<'_>, KeyExpr<'_>)> = (0..200_000)
        .map(|i| {
            let p = patterns[i % patterns.len()].as_keyexpr();
            let k = keys[(i * 7 + i / patterns.len()) % keys.len()].as_keyexpr();
            (p, k)
        })
        .collect();
    let wild_pairs: Vec<(KeyExpr<'_>, KeyExpr<'_>)> = (0..200_000)
        .map(|i| {
            let a = patterns[i % patterns.len()].as_keyexpr();
            let b = patterns[(i * 13 + i / patterns.len()) % patterns.len()].as_keyexpr();
            (a, b)
        })
        .collect();
    let (rate, hits) = median_rate(pairs.len(), || {
        pairs
            .iter()
            .filter(|(p, k)| black_box(p).intersects(black_box(k)))
            .count()
    });
    println!(
        "intersects, wild vs concrete        {}  ({hits} true)",
        human(rate)
    );
    let (rate, hits) = median_rate(wild_pairs.len(), || {
        wild_pairs
            .iter()
            .filter(|(a, b)| black_box(a).intersects(black_box(b)))
            .count()
    });
    println!(
        "intersects, wild vs wild            {}  ({hits} true)",
        human(rate)
    );
    let (rate, hits) = median_rate(wild_pairs.len(), || {
        wild_pairs
            .iter()
            .filter(|(a, b)| black_box(a).includes(black_box(b)))
            .count()
    });
    println!(
        "includes, wild vs wild              {}  ({hits} true)",
        human(rate)
    );

    // --- KeTree with 100k entries --------------------------------------------------------------
    let entries = bench_tree(&mut rng, false);
    bench_tree(&mut rng, true);

    // --- Linear scan, for comparison ---------------------------------------------------------
    let scan_queries: Vec<OwnedKeyExpr> = (0..100).map(|_| concrete_key(&mut rng)).collect();
    let (rate, hits) = median_rate(scan_queries.len(), || {
        scan_queries
            .iter()
            .map(|q| {
                let q = q.as_keyexpr();
                entries
                    .iter()
                    .filter(|e| e.as_keyexpr().intersects(&q))
                    .count()
            })
            .sum()
    });
    println!(
        "linear scan of 100k, concrete key   {}  ({hits} matches)",
        human(rate)
    );
}
