//! The host's time and randomness as the filesystem's `Clock` and
//! `Entropy`, for the host tools that mount volumes (`scoutvm mount`).
//!
//! Monotonic time counts from the clock's creation (`Instant`), so it
//! starts near 0 and never goes back; wall time is the system clock,
//! clamped to the epoch when the system clock is set before 1970.

use scoutvm_fs::runtime::env::{Clock, Entropy, SeededEntropy, Timespec};
use std::io::Read;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    pub fn new() -> HostClock {
        HostClock {
            origin: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        HostClock::new()
    }
}

impl Clock for HostClock {
    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn wall(&self) -> Timespec {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timespec {
            sec: d.as_secs(),
            nsec: d.subsec_nanos(),
        }
    }
}

/// Random 64-bit words from the OS, falling back to a generator seeded
/// with the time and the pid when `/dev/urandom` cannot be read.
pub fn random_u64s<const N: usize>() -> [u64; N] {
    let mut out = [0u64; N];
    let mut b = vec![0u8; N * 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if ok {
        for (i, w) in out.iter_mut().enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(word);
        }
        return out;
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let e = SeededEntropy::new(t ^ ((std::process::id() as u64) << 32));
    for w in out.iter_mut() {
        *w = e.next_u64();
    }
    out
}

/// A generator seeded from the OS: block seqs and ids of a mount.
pub fn host_entropy() -> SeededEntropy {
    let [seed] = random_u64s::<1>();
    SeededEntropy::new(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back_and_wall_is_recent() {
        let c = HostClock::new();
        let a = c.monotonic_ns();
        let b = c.monotonic_ns();
        assert!(b >= a);
        // 2020-01-01 or later: the system clock is set on any machine
        // that runs these tests.
        assert!(c.wall().sec > 1_577_836_800);
        assert!(c.wall().nsec < 1_000_000_000);
    }

    #[test]
    fn random_words_differ() {
        let [a, b, c] = random_u64s::<3>();
        assert!(a != b || b != c);
    }
}
