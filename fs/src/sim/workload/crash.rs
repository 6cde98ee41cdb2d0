//! Crash cycles: operations (with syncs and merge work) until a crash
//! armed at the start of the cycle fires, at a random instant or right
//! after a random number of the node's disk writes (so inside commits
//! and merges), or at an operation boundary at the cycle's end. The
//! power cut loses, keeps or tears the unflushed writes (seeded). Then:
//! fsck of the disks must be clean, the remount must recover, and the
//! namespace must equal one of the states that may be durable: the last
//! commit's, or the one of the commit in flight (exactly what
//! fs/tests/persist_crash.rs checks at every write of one recorded run).
//!
//! Writes that would change a committed block in place (scoutfs does not
//! make those atomic) are avoided; blocks written in place anyway (a
//! commit the workload did not ask for) may hold old or new contents.

use super::{Engine, Failure, Inject, Stop};
use crate::sim::fault::{CrashTrigger, Fault, Loss};

/// Run crash cycles to the budget; Ok(steps) or the first failure.
pub async fn run(mut e: Engine) -> Result<u64, Failure> {
    match run_inner(&mut e).await {
        Ok(()) => Ok(e.step),
        Err(Stop::Fail(f)) => Err(f),
        Err(Stop::Down) => Err(e.failure("the node went down outside a crash cycle".into())),
    }
}

async fn run_inner(e: &mut Engine) -> Result<(), Stop> {
    if e.inject == Inject::LyingFlush {
        e.vol.meta.set_lying_flush(true);
        e.vol.data.set_lying_flush(true);
    }
    e.mount().await?;
    while e.more() {
        let node = e.node;
        let ops = 5 + e.r(40);
        // a commit writes a handful of blocks and a cycle's operations take
        // about a millisecond each: most triggers fire inside the cycle,
        // many inside a commit
        let trigger = if e.r(5) < 3 {
            CrashTrigger::AfterWrites(1 + e.r(40))
        } else {
            CrashTrigger::At(e.w.now() + e.r(ops * 1_500_000))
        };
        e.w.arm_crash(node, trigger, Loss::Any);
        let mut in_flight = None;
        let mut crashed = false;
        for _ in 0..ops {
            if !e.more() {
                break;
            }
            if e.w.is_down(node) {
                crashed = true;
                break;
            }
            e.step += 1;
            let pre = e.model.clone();
            let r = match e.r(100) {
                0..=11 => e.sync().await,
                12..=17 => e.merge(4).await,
                _ => e.random_op().await,
            };
            match r {
                Ok(()) => {}
                Err(Stop::Down) => {
                    in_flight = Some(pre);
                    crashed = true;
                    break;
                }
                Err(f) => return Err(f),
            }
            e.think().await;
        }
        if !crashed {
            e.w.fault(Fault::Crash {
                node,
                loss: Loss::Any,
            })
            .await;
        }
        e.step += 1;
        e.recover(in_flight).await?;
    }
    e.verify().await?;
    if e.budget.crash_merge_liveness {
        e.drain_merges(200).await?;
        e.verify().await?;
    }
    e.unmount().await?;
    e.fsck("at the end")
}
