//! `scoutvm-bench-cluster`: many writers on one volume (issue 12). Run by
//! `cargo xtask bench-cluster`.
//!
//! Starts a cluster of N appliances (`qemu/cluster.sh up N`, TCG, fresh
//! sparse images) and loads its nodes from this host with
//! `scoutvm_image::p9load` (the code of `scoutvm p9load`), every node in
//! its own run directory:
//! 1. creates per second through 1, 2, ... N nodes at once (each node
//!    `--seconds` of create + clunk at `--outstanding` requests), the
//!    aggregate and each node's;
//! 2. a `--minutes` write (creates, then 64 KiB writes, alternating in
//!    30 s turns) through every node, sampling after each turn the log
//!    trees the server counts (`server.log_trees`, its high-water
//!    `server.log_trees_max`) and the log-merge items merged per second
//!    over the turn (`log_merge.items_merged`, summed over the nodes,
//!    which do the merge work the server hands out).
//!
//! Under TCG on a small host every appliance is a QEMU process competing
//! for the same cores, so the aggregate says how the cluster shares them,
//! not how it scales on real machines. No timing assertions: figures.
//!
//! Usage: scoutvm-bench-cluster [--nodes N] [--seconds S] [--minutes M]
//!        [--outstanding K]

use std::process::exit;
use std::time::{Duration, Instant};

use scoutvm_image::p9load::{self, Budget, Config, Op, OpReport};
use scoutvm_tests::cluster_sh::{counter, Cluster};

/// Bad command line: say so and exit (nothing started yet).
fn usage_fail(msg: &str) -> ! {
    eprintln!("bench-cluster: {msg}\n{USAGE}");
    exit(2)
}

/// Give up (a panic: the hook of [`Cluster::kill_on_panic`] stops what
/// the run started, as the release profile aborts without `Drop`).
fn fail(msg: &str) -> ! {
    panic!("bench-cluster: {msg}")
}

const USAGE: &str =
    "usage: scoutvm-bench-cluster [--nodes N] [--seconds S] [--minutes M] [--outstanding K]";
/// One turn of the long write.
const TURN_SECS: f64 = 30.0;

struct Args {
    nodes: usize,
    seconds: f64,
    minutes: f64,
    outstanding: usize,
}

fn parse() -> Args {
    let mut a = Args {
        nodes: 3,
        seconds: 20.0,
        minutes: 10.0,
        outstanding: 4,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let val = argv
            .get(i + 1)
            .unwrap_or_else(|| usage_fail(&format!("{flag} needs a value")));
        let bad = || -> ! { usage_fail(&format!("{flag}: bad value {val:?}")) };
        match flag {
            "--nodes" => {
                a.nodes = val
                    .parse()
                    .ok()
                    .filter(|n| (1..=15).contains(n))
                    .unwrap_or_else(|| bad())
            }
            "--seconds" => {
                a.seconds = val
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0)
                    .unwrap_or_else(|| bad())
            }
            "--minutes" => {
                a.minutes = val
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m >= 0.0)
                    .unwrap_or_else(|| bad())
            }
            "--outstanding" => {
                a.outstanding = val
                    .parse()
                    .ok()
                    .filter(|k| (1..=64).contains(k))
                    .unwrap_or_else(|| bad())
            }
            _ => usage_fail(&format!("unknown option {flag}")),
        }
        i += 2;
    }
    a
}

/// Run `op` through nodes `0..n` at once for `secs`, each in its own run
/// directory named after `tag`; every node's report.
fn load(c: &Cluster, n: usize, op: Op, secs: f64, outstanding: usize, tag: &str) -> Vec<OpReport> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let mut cfg = Config::new(&format!("127.0.0.1:{}", c.p9_base + i as u16));
            cfg.msize = 512 << 10;
            cfg.outstanding = outstanding;
            cfg.budget = Budget::Seconds(secs);
            cfg.ops = vec![op];
            cfg.run_dir = Some(format!("{tag}-node{i}"));
            std::thread::spawn(move || p9load::run(&cfg))
        })
        .collect();
    threads
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = t
                .join()
                .unwrap_or_else(|_| fail(&format!("node{i}'s load thread panicked")))
                .unwrap_or_else(|e| fail(&format!("node{i}: {e}")));
            r.pop()
                .unwrap_or_else(|| fail(&format!("node{i}: no report")))
        })
        .collect()
}

/// A counter summed over the nodes, and its largest value on one node.
fn sampled(c: &Cluster, nodes: usize, name: &str) -> (u64, u64) {
    let (mut sum, mut max) = (0, 0);
    for i in 0..nodes {
        // (a counter not used yet on that node: an error, and 0)
        let out = c.run(&["shell", &i.to_string(), "counters", name]);
        let v = counter(&String::from_utf8_lossy(&out.stdout), name);
        sum += v;
        max = max.max(v);
    }
    (sum, max)
}

fn main() {
    let a = parse();
    let n = a.nodes;
    let mut c = Cluster::new("bench-cluster", n as u16);
    c.boot_timeout = 300;
    c.shell_timeout = 120;
    c.console_tail = Some(40);
    c.kill_on_panic();
    let up = c.ok(&["up", &n.to_string()]);
    eprint!("{up}");
    for i in 0..n {
        c.wait_mounted(i);
    }

    println!(
        "== creates through 1..{n} nodes at once ({} s each, {} outstanding per node)",
        a.seconds, a.outstanding
    );
    let mut rows = Vec::new();
    for k in 1..=n {
        // lock invalidations during the phase: the separate directories
        // should need none between nodes
        let (inval_before, _) = sampled(&c, n, "lock_client.invalidations");
        let tag = format!("create{k}");
        let reps = load(&c, k, Op::Create, a.seconds, a.outstanding, &tag);
        let (inval_after, _) = sampled(&c, n, "lock_client.invalidations");
        let per: Vec<String> = reps
            .iter()
            .map(|r| format!("{:.1}", r.ops_per_sec()))
            .collect();
        let errors: u64 = reps.iter().map(|r| r.errors).sum();
        let total: f64 = reps.iter().map(OpReport::ops_per_sec).sum();
        println!(
            "CLUSTER-CREATES nodes={k} aggregate={total:.1}/s per_node=[{}] errors={errors} lock_invalidations={}",
            per.join(" "),
            inval_after.saturating_sub(inval_before)
        );
        rows.push((k, total));
    }
    let one = rows.first().map_or(0.0, |r| r.1);
    for (k, total) in &rows {
        let x = if one > 0.0 { total / one } else { 0.0 };
        println!("  {k} node(s): {total:>8.1} creates/s  ({x:.2}x one node)");
    }

    if a.minutes > 0.0 {
        println!(
            "== {} min of writes through all {n} nodes (turns of {TURN_SECS} s: creates, then 64 KiB writes)",
            a.minutes
        );
        let started = Instant::now();
        let end = Duration::from_secs_f64(a.minutes * 60.0);
        let (mut merged_before, _) = sampled(&c, n, "log_merge.items_merged");
        let mut turn = 0u32;
        let mut most = 0;
        while started.elapsed() < end {
            let secs = TURN_SECS.min((end - started.elapsed()).as_secs_f64().max(1.0));
            let op = if turn.is_multiple_of(2) {
                Op::Create
            } else {
                Op::Write(64 << 10)
            };
            let t0 = Instant::now();
            let reps = load(&c, n, op, secs, a.outstanding, &format!("long{turn}"));
            let ops: f64 = reps.iter().map(OpReport::ops_per_sec).sum();
            let (_, trees) = sampled(&c, n, "server.log_trees");
            let (_, trees_max) = sampled(&c, n, "server.log_trees_max");
            let (merged, _) = sampled(&c, n, "log_merge.items_merged");
            let (finished, _) = sampled(&c, n, "log_merge.finished");
            let dt = t0.elapsed().as_secs_f64();
            let rate = merged.saturating_sub(merged_before) as f64 / dt;
            merged_before = merged;
            most = most.max(trees_max);
            println!(
                "CLUSTER-LOGTREES t={:.0}s op={} ops_s={ops:.1} log_trees={trees} log_trees_max={trees_max} merges_finished={finished} merge_items_s={rate:.1}",
                started.elapsed().as_secs_f64(),
                op.name()
            );
            turn += 1;
        }
        println!("  log trees at once, at most: {most} ({n} writing nodes)");
    }
    let down = c.ok(&["down"]);
    eprint!("{down}");
}
