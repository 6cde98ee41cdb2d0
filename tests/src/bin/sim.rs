//! `scoutvm-sim` (run it with `cargo xtask sim ARGS`): the deterministic
//! simulator's runner. Runs seeds of the simulator's workloads and prints
//! one line per run (seed, workload, virtual seconds, steps, hash, ok or
//! FAIL with the command that replays it), then a summary with the
//! simulated seconds per host second. Exits non-zero if a run failed.
//!
//! ```text
//! scoutvm-sim [--seeds N] [--seed S] [--nodes K] [--steps X] [--minutes M]
//!             [--workload posix|crash|quorum|session|cluster|cluster-disjoint|cluster-failover|all] [--inject lying-flush|lying-fence|no-locks|model-bug:STEP]
//!             [--no-pauses] [--adversary] [--merge-every-ms N] [--mount-crashes] [--trace] [--no-template]
//! ```
//!
//! Seeds `S..S+N` run (default S = 1, N = 10; `--seed S` alone runs just
//! S). `--steps` is per node (default 200); `--minutes M` bounds each run
//! to M simulated minutes instead (with `--steps`: whichever ends first).
//! `--trace` prints every event of the world (replaying a failure).
//! `--workload session`: one server node and `--nodes` client nodes
//! (default 3) over the cluster session, `--steps` requests per client,
//! with link resets, partitions and a server crash (docs/simulator.md).
//! `--workload cluster`: one server node and three mounts of its volume
//! sharing one directory tree under the cluster locks, checked against
//! one model, `--steps` operations per mount (default 60);
//! `cluster-disjoint`: the same with each mount in its own directory and
//! local locks; `cluster-failover`: `cluster` while the server node
//! crashes and comes back as new lives that recover the mounts' locks.
//! Crash runs always end with the merge liveness check (`--merge-liveness`,
//! which turned it on before it was the default, is still accepted so
//! older replay commands run).
//! Everything that determines a run is in its replay command.
use scoutvm_fs::sim::run::{run_seed, RunConfig, SeedReport, VolumeImage, WorkloadKind};
use scoutvm_fs::sim::workload::Inject;
use std::cell::RefCell;
use std::process::exit;
use std::time::Instant;

fn usage() -> ! {
    eprintln!(
        "usage: scoutvm-sim [--seeds N] [--seed S] [--nodes K] [--steps X] [--minutes M]\n\
         \x20                  [--workload posix|crash|quorum|session|cluster|cluster-disjoint|cluster-failover|all] [--inject lying-flush|lying-fence|no-locks|model-bug:STEP]\n\
         \x20                  [--no-pauses] [--adversary] [--merge-every-ms N] [--mount-crashes] [--trace] [--no-template]"
    );
    exit(2)
}

struct Args {
    seeds: u64,
    seed: u64,
    nodes: u8,
    nodes_given: bool,
    steps: Option<u64>,
    minutes: Option<u64>,
    workloads: Vec<WorkloadKind>,
    inject: Inject,
    pauses: bool,
    adversary: bool,
    merge_every_ms: u64,
    mount_crashes: bool,
    trace: bool,
    template: bool,
}

fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("scoutvm-sim: {flag} needs a number");
        usage()
    })
}

fn parse() -> Args {
    let mut a = Args {
        seeds: 10,
        seed: 1,
        nodes: 1,
        nodes_given: false,
        steps: None,
        minutes: None,
        workloads: vec![WorkloadKind::Posix, WorkloadKind::Crash],
        inject: Inject::None,
        pauses: true,
        adversary: false,
        merge_every_ms: 0,
        mount_crashes: false,
        trace: false,
        template: true,
    };
    let mut seeds_given = false;
    let mut seed_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        match f.as_str() {
            "--seeds" => {
                a.seeds = num(&f, it.next());
                seeds_given = true;
            }
            "--seed" => {
                a.seed = num(&f, it.next());
                seed_given = true;
            }
            "--nodes" => {
                a.nodes = num(&f, it.next());
                a.nodes_given = true;
            }
            "--steps" => a.steps = Some(num(&f, it.next())),
            "--minutes" => a.minutes = Some(num(&f, it.next())),
            "--workload" => {
                a.workloads = match it.next().as_deref() {
                    Some("all") => vec![
                        WorkloadKind::Posix,
                        WorkloadKind::Crash,
                        WorkloadKind::Session,
                    ],
                    Some(w) => match WorkloadKind::parse(w) {
                        Some(k) => vec![k],
                        None => usage(),
                    },
                    None => usage(),
                }
            }
            "--inject" => {
                a.inject = match it.next().as_deref() {
                    Some("lying-flush") => Inject::LyingFlush,
                    Some("lying-fence") => Inject::LyingFence,
                    Some("no-locks") => Inject::NoLocks,
                    Some(s) if s.starts_with("model-bug:") => Inject::ModelBug {
                        step: num("--inject model-bug:STEP", Some(s[10..].to_string())),
                    },
                    _ => usage(),
                }
            }
            "--no-pauses" => a.pauses = false,
            "--adversary" => a.adversary = true,
            "--merge-every-ms" => a.merge_every_ms = num(&f, it.next()),
            "--mount-crashes" => a.mount_crashes = true,
            // the default now; older replay commands carry it
            "--merge-liveness" => {}
            "--trace" => a.trace = true,
            "--no-template" => a.template = false,
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("scoutvm-sim: unknown argument {f}");
                usage()
            }
        }
    }
    if seed_given && !seeds_given {
        a.seeds = 1;
    }
    if a.nodes == 0 || a.nodes as usize > scoutvm_fs::sim::world::MAX_SIM_NODES {
        eprintln!(
            "scoutvm-sim: --nodes must be 1..={}",
            scoutvm_fs::sim::world::MAX_SIM_NODES
        );
        exit(2);
    }
    a
}

fn config(a: &Args, seed: u64, w: WorkloadKind) -> RunConfig {
    let mut c = RunConfig::new(seed, w);
    c.nodes = a.nodes;
    if w == WorkloadKind::Session {
        // client nodes; the server node comes on top
        c.nodes = if a.nodes_given { a.nodes.min(6) } else { 3 };
        if a.steps.is_none() && a.minutes.is_none() {
            c.steps = 60;
        }
    }
    if matches!(
        w,
        WorkloadKind::ClusterDisjoint | WorkloadKind::Cluster | WorkloadKind::ClusterFailover
    ) && a.steps.is_none()
        && a.minutes.is_none()
    {
        c.steps = 60;
    }
    c.pauses = a.pauses;
    c.adversary = a.adversary;
    c.merge_every_ns = a.merge_every_ms.saturating_mul(1_000_000);
    c.mount_crashes = a.mount_crashes;
    c.inject = a.inject;
    match (a.steps, a.minutes) {
        (Some(s), _) => c.steps = s,
        (None, Some(_)) => c.steps = u64::MAX,
        (None, None) => {}
    }
    if let Some(m) = a.minutes {
        c.until_ns = m * 60_000_000_000;
    }
    c
}

/// The command that runs exactly this configuration again.
fn replay(c: &RunConfig, a: &Args) -> String {
    let mut s = format!(
        "cargo xtask sim --seed {} --workload {} --nodes {}",
        c.seed,
        c.workload.name(),
        c.nodes
    );
    if let Some(st) = a.steps {
        s += &format!(" --steps {st}");
    }
    if let Some(m) = a.minutes {
        s += &format!(" --minutes {m}");
    }
    match c.inject {
        Inject::None => {}
        Inject::LyingFlush => s += " --inject lying-flush",
        Inject::LyingFence => s += " --inject lying-fence",
        Inject::NoLocks => s += " --inject no-locks",
        Inject::ModelBug { step } => s += &format!(" --inject model-bug:{step}"),
    }
    if c.adversary {
        s += " --adversary";
    }
    if c.merge_every_ns > 0 {
        s += &format!(" --merge-every-ms {}", c.merge_every_ns / 1_000_000);
    }
    if c.mount_crashes {
        s += " --mount-crashes";
    }
    if !c.pauses {
        s += " --no-pauses";
    }
    s
}

thread_local! {
    static CURRENT: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn print_report(r: &SeedReport, a: &Args) {
    let c = &r.cfg;
    let head = format!(
        "seed {} {} nodes={} virt={:.3}s steps={} events={} hash={:016x}",
        c.seed,
        c.workload.name(),
        c.nodes,
        secs(r.virt_ns),
        r.steps,
        r.events,
        r.hash
    );
    match &r.failure {
        None => println!("{head} ok"),
        Some(f) => {
            println!("{head} FAIL: {f}");
            println!("  replay: {}", replay(c, a));
            println!("  last events:");
            for e in r.recent.iter().rev().take(24).rev() {
                println!("    {e}");
            }
        }
    }
}

fn main() {
    let a = parse();
    // a panic inside the filesystem (release builds abort) still says how
    // to replay the run it happened in
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        CURRENT.with(|c| {
            if let Some(cmd) = c.borrow().as_ref() {
                eprintln!("scoutvm-sim: PANIC in a run; replay: {cmd}");
            }
        });
        default_hook(info);
    }));
    let template = if a.template {
        match VolumeImage::mkfs() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("scoutvm-sim: mkfs of the template volume failed: {e}");
                exit(1);
            }
        }
    } else {
        None
    };
    let t0 = Instant::now();
    let (mut runs, mut failed, mut virt, mut steps) = (0u64, 0u64, 0u64, 0u64);
    let (mut crashes, mut pauses, mut leaks) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for seed in a.seed..a.seed.saturating_add(a.seeds) {
        for &w in &a.workloads {
            let c = config(&a, seed, w);
            CURRENT.with(|cur| *cur.borrow_mut() = Some(replay(&c, &a)));
            let observer: Option<scoutvm_fs::sim::hash::Observer> = if a.trace {
                Some(Box::new(|e: &scoutvm_fs::sim::hash::Event| {
                    eprintln!("{e}")
                }))
            } else {
                None
            };
            let r = run_seed(&c, template.as_ref(), observer);
            CURRENT.with(|cur| *cur.borrow_mut() = None);
            print_report(&r, &a);
            runs += 1;
            crashes += r.world.crashes;
            pauses += r.world.pauses;
            leaks += r.world.teardowns_unfinished + r.world.software_leaked;
            virt += r.virt_ns;
            steps += r.steps;
            if !r.ok() {
                failed += 1;
                failures.push(replay(&c, &a));
            }
        }
    }
    let host = t0.elapsed().as_secs_f64();
    println!(
        "{runs} runs ({} seeds from {}, {} nodes): {} ok, {failed} failed; {steps} steps; \
         {:.1} simulated s in {:.1} host s = {:.1} simulated s per host s",
        a.seeds,
        a.seed,
        a.nodes,
        runs - failed,
        secs(virt),
        host,
        if host > 0.0 { secs(virt) / host } else { 0.0 }
    );
    println!(
        "faults: {crashes} crashes, {pauses} pauses; {leaks} crashed nodes not fully torn down"
    );
    if !failures.is_empty() {
        println!("failed runs replay with:");
        for f in &failures {
            println!("  {f}");
        }
        exit(1);
    }
}
