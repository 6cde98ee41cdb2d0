//! The appliance's implementations of the filesystem's environment traits
//! (`scoutvm_fs::runtime::env`): [`KernelClock`] (calibrated TSC for monotonic time,
//! CMOS RTC at boot plus the TSC for wall time) and [`KernelEntropy`]
//! (RDRAND when the CPU has it, else SplitMix64 seeded from the TSC and
//! the RTC). Later subsystems take these, never the hardware.

use core::arch::x86_64::{__cpuid, _rdrand64_step};
use core::sync::atomic::{AtomicU64, Ordering};

use scoutvm_drivers::clock;
use scoutvm_fs::runtime::env::{Clock, Entropy, Timespec};

/// Time as the filesystem sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelClock;

impl Clock for KernelClock {
    fn monotonic_ns(&self) -> u64 {
        clock::monotonic_ns()
    }

    fn wall(&self) -> Timespec {
        let (sec, nsec) = clock::wall_now();
        Timespec { sec, nsec }
    }
}

/// Random 64-bit values for seqs, rids, fsids and protocol seeds. Not a
/// CSPRNG when RDRAND is absent.
pub struct KernelEntropy {
    rdrand: bool,
    state: AtomicU64,
}

impl KernelEntropy {
    pub fn new() -> Self {
        let rdrand = __cpuid(1).ecx & (1 << 30) != 0;
        let seed =
            clock::rdtsc() ^ clock::wall_base_seconds().rotate_left(32) ^ 0x5c0f_75f5_0000_0001;
        KernelEntropy {
            rdrand,
            state: AtomicU64::new(seed),
        }
    }

    fn splitmix(&self) -> u64 {
        let s = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Default for KernelEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl Entropy for KernelEntropy {
    fn next_u64(&self) -> u64 {
        if self.rdrand {
            for _ in 0..10 {
                let mut v = 0u64;
                // SAFETY: CPUID reported RDRAND support.
                if unsafe { _rdrand64_step(&mut v) } == 1 {
                    return v;
                }
            }
        }
        self.splitmix()
    }
}
