//! The wire decoders fuzzed for a bounded number of inputs in CI (the
//! stable-toolchain fuzzer of `scoutvm_tests::fuzz`); long runs are
//! `cargo xtask fuzz --iterations 10000000`. A fresh seed per run unless
//! `SCOUTVM_FUZZ_SEED` is set, printed so a failure can be replayed; the
//! count per target is `SCOUTVM_FUZZ_ITERATIONS` (default 1 000 000, about
//! a second in all; a fifth of it for `cluster_auth`, whose inputs are
//! MACed).

use scoutvm_tests::fuzz::{fuzz, targets};

#[test]
fn wire_decoders_survive_mutated_messages() {
    let seed = std::env::var("SCOUTVM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let iterations = std::env::var("SCOUTVM_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let names: Vec<&str> = targets().iter().map(|t| t.name).collect();
    assert!(
        names.contains(&"p9") && names.contains(&"cluster"),
        "{names:?}"
    );
    for t in targets() {
        // every input of the keyed target computes MACs: a fifth as many
        let n = if t.name == "cluster_auth" {
            (iterations / 5).max(1)
        } else {
            iterations
        };
        match fuzz(&t, n, seed, &mut |_| {}) {
            Ok(r) => {
                eprintln!(
                    "fuzz {}: {} inputs in {:.2} s ({:.0}/s), {} valid, seed {seed}",
                    r.target,
                    r.iterations,
                    r.secs,
                    r.per_sec(),
                    r.valid
                );
                // The mutations must keep reaching the decoders' bodies.
                assert!(r.valid > 0, "{}: nothing decoded", r.target);
            }
            Err(c) => panic!("{c}\nreplay with SCOUTVM_FUZZ_SEED={seed}"),
        }
    }
}
