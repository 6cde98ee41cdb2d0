//! What every bench prints: a size from the environment and one line per
//! measured rate. Shared by the fs benches and, by path, the FUSE bench.
#![allow(dead_code)]

/// `$name` as a number, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` operations in `secs` seconds, as a rate per second.
pub fn rate(what: &str, n: u64, secs: f64) {
    println!(
        "  {what:<34} {n:>9} in {secs:>8.3} s = {:>10.0} /s",
        n as f64 / secs
    );
}

/// `bytes` moved in `secs` seconds, as MB/s.
pub fn mbps(what: &str, bytes: u64, secs: f64) {
    println!(
        "  {what:<34} {:>6} MiB in {secs:>8.3} s = {:>10.1} MB/s",
        bytes >> 20,
        bytes as f64 / secs / 1e6
    );
}
