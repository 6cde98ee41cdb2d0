//! `scoutvm-fuzz`: fuzz the wire decoders (the 9P codec and framer, the
//! cluster frame decoder and payloads) for a number of inputs each and
//! print the rate. Run by `cargo xtask fuzz`; see `scoutvm_tests::fuzz`
//! for what the fuzzer is (structure-aware mutation, no coverage).
//!
//! Usage: scoutvm-fuzz [--iterations N] [--seed S] [--target NAME]...
//! Exit 0 when every target ran clean, 1 with the input on a failure
//! (also written to target/fuzz-crash-<target>-<seed>-<iteration>.bin).

use std::process::exit;
use std::time::Instant;

use scoutvm_tests::fuzz::{fuzz, targets};
use scoutvm_tests::workspace_root;

const USAGE: &str = "usage: scoutvm-fuzz [--iterations N] [--seed S] [--target NAME]...";

fn fail(msg: &str) -> ! {
    eprintln!("scoutvm-fuzz: {msg}\n{USAGE}");
    exit(64)
}

fn main() {
    let mut iterations: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut only: Vec<String> = Vec::new();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = |i: usize| -> &str {
            argv.get(i + 1)
                .map(|s| s.as_str())
                .unwrap_or_else(|| fail(&format!("{} needs a value", argv[i])))
        };
        match argv[i].as_str() {
            "--iterations" => {
                iterations = value(i)
                    .replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| fail("--iterations: not a number"));
                i += 1;
            }
            "--seed" => {
                seed = value(i)
                    .parse()
                    .unwrap_or_else(|_| fail("--seed: not a number"));
                i += 1;
            }
            "--target" => {
                only.push(value(i).to_string());
                i += 1;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                for t in targets() {
                    println!("  target {}", t.name);
                }
                return;
            }
            s => fail(&format!("unknown argument '{s}'")),
        }
        i += 1;
    }
    let all = targets();
    for name in &only {
        if !all.iter().any(|t| t.name == name) {
            fail(&format!("no target '{name}'"));
        }
    }
    let started = Instant::now();
    for t in all
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|n| n == t.name))
    {
        let name = t.name;
        let r = fuzz(t, iterations, seed, &mut |n| {
            eprintln!("scoutvm-fuzz: {name}: {n} inputs");
        });
        match r {
            Ok(r) => println!(
                "FUZZ target={} inputs={} secs={:.1} execs_per_sec={:.0} valid={} pool={} seed={}",
                r.target,
                r.iterations,
                r.secs,
                r.per_sec(),
                r.valid,
                r.pool,
                seed
            ),
            Err(c) => {
                let path = workspace_root().join(format!(
                    "target/fuzz-crash-{}-{}-{}.bin",
                    c.target, c.seed, c.iteration
                ));
                let _ = std::fs::write(&path, &c.input);
                eprintln!("scoutvm-fuzz: FAILED {c}\nsaved {}", path.display());
                exit(1);
            }
        }
    }
    eprintln!(
        "scoutvm-fuzz: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
