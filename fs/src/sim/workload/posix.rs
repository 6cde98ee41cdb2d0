//! The POSIX model workload: random operations on one node's volume,
//! each checked against the model as it returns; sync points (with fsck
//! of what is durable), log merges, full walks, clean remounts. The
//! node's background tasks (commit ticker, merge worker) run as in
//! production.

use super::{Engine, Failure, Stop};

/// Run the workload to its budget; Ok(steps) or the first failure.
pub async fn run(mut e: Engine) -> Result<u64, Failure> {
    match run_inner(&mut e).await {
        Ok(()) => Ok(e.step),
        Err(Stop::Fail(f)) => Err(f),
        Err(Stop::Down) => Err(e.failure("the node went down under the workload".into())),
    }
}

async fn run_inner(e: &mut Engine) -> Result<(), Stop> {
    e.mount().await?;
    while e.more() {
        e.step += 1;
        match e.r(100) {
            0..=3 => {
                e.sync().await?;
                if e.r(3) == 0 {
                    e.fsck("after a sync")?;
                }
            }
            4 => e.merge(4).await?,
            5 => e.verify().await?,
            6 if e.r(2) == 0 => {
                e.unmount().await?;
                e.fsck("after a clean unmount")?;
                e.mount().await?;
                e.verify().await?;
            }
            _ => e.random_op().await?,
        }
        e.think().await;
    }
    e.verify().await?;
    e.drain_merges(200).await?;
    e.verify().await?;
    e.unmount().await?;
    e.fsck("at the end")
}
