//! Time and randomness, supplied by whoever runs the filesystem.
//!
//! The appliance passes its calibrated TSC clock, CMOS wall time and RDRAND
//! (or a seeded generator); tests pass [`ManualClock`] and [`SeededEntropy`]
//! so every run is reproducible from a seed.

use core::cell::Cell;

/// A point in wall-clock time, as scoutfs stores it (`sec`, `nsec`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    pub sec: u64,
    pub nsec: u32,
}

/// Monotonic and wall-clock time.
pub trait Clock {
    /// Nanoseconds since an arbitrary origin; never goes backwards.
    fn monotonic_ns(&self) -> u64;
    /// The wall-clock time, for inode timestamps.
    fn wall(&self) -> Timespec;
}

/// A source of random 64-bit values (block seqs, rids, fsids).
pub trait Entropy {
    fn next_u64(&self) -> u64;
}

impl<T: Clock + ?Sized> Clock for &T {
    fn monotonic_ns(&self) -> u64 {
        (**self).monotonic_ns()
    }
    fn wall(&self) -> Timespec {
        (**self).wall()
    }
}

impl<T: Entropy + ?Sized> Entropy for &T {
    fn next_u64(&self) -> u64 {
        (**self).next_u64()
    }
}

/// A clock that only moves when told to: the test and simulator clock.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: Cell<u64>,
    wall_base: Timespec,
}

impl ManualClock {
    /// A clock at monotonic 0 whose wall time starts at `wall_base`.
    pub fn new(wall_base: Timespec) -> Self {
        ManualClock {
            now_ns: Cell::new(0),
            wall_base,
        }
    }

    pub fn advance_ns(&self, ns: u64) {
        self.now_ns.set(self.now_ns.get() + ns);
    }

    pub fn set_ns(&self, ns: u64) {
        assert!(ns >= self.now_ns.get(), "monotonic time cannot go back");
        self.now_ns.set(ns);
    }
}

impl Clock for ManualClock {
    fn monotonic_ns(&self) -> u64 {
        self.now_ns.get()
    }

    fn wall(&self) -> Timespec {
        let total = self.wall_base.nsec as u64 + self.now_ns.get();
        Timespec {
            sec: self.wall_base.sec + total / 1_000_000_000,
            nsec: (total % 1_000_000_000) as u32,
        }
    }
}

/// SplitMix64: small, fast, and good enough for seqs and test workloads.
/// Not for secrets.
#[derive(Debug)]
pub struct SeededEntropy {
    state: Cell<u64>,
}

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        SeededEntropy {
            state: Cell::new(seed),
        }
    }
}

impl Entropy for SeededEntropy {
    fn next_u64(&self) -> u64 {
        let s = self.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = ManualClock::new(Timespec {
            sec: 100,
            nsec: 999_999_999,
        });
        assert_eq!(c.monotonic_ns(), 0);
        c.advance_ns(2);
        assert_eq!(c.wall(), Timespec { sec: 101, nsec: 1 });
    }

    #[test]
    fn seeded_entropy_is_reproducible() {
        let a = SeededEntropy::new(7);
        let b = SeededEntropy::new(7);
        let xs: alloc::vec::Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: alloc::vec::Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }
}
