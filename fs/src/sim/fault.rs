//! The faults the world can inject, and the seeded background schedule of
//! node pauses.
//!
//! A fault is applied by the world's loop at one virtual instant, between
//! polls (never inside one): the harness asks with
//! [`World::fault`](super::world::World::fault), a crash trigger armed on
//! a node fires from inside its disk writes
//! ([`World::arm_crash`](super::world::World::arm_crash)), and
//! [`PausePlan`] draws pauses as time goes by.

use crate::runtime::node::NodeId;

/// What happens to a node's unflushed disk writes when it loses power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// All lost.
    LoseAll,
    /// All reached the media.
    KeepAll,
    /// Each independently kept or lost; with `tear`, one kept multi-page
    /// write may keep only a prefix of its 4 KiB pages.
    Random { tear: bool },
    /// One of the above, drawn from the world's seed.
    Any,
}

/// A fault, applied at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Power cut: the node's memory is gone (its executor and every task
    /// dropped), its unflushed writes go by `loss`, its streams reset.
    Crash { node: NodeId, loss: Loss },
    /// Clean power-off after the software stopped: unflushed writes kept.
    Stop { node: NodeId },
    /// Freeze the node for `ns` (a VM pause): nothing of it runs; its
    /// timers fire late when it resumes.
    Pause { node: NodeId, ns: u64 },
    /// Packets from `from` to `to` are dropped (streams stall and
    /// retransmit; datagrams are lost). One way; cut both for a symmetric
    /// partition.
    Cut { from: NodeId, to: NodeId },
    /// Undo a [`Fault::Cut`].
    Heal { from: NodeId, to: NodeId },
    /// Undo every cut.
    HealAll,
    /// Reset every stream with an end on `node` (both ends see the close;
    /// bytes in flight are lost).
    ResetStreams { node: NodeId },
}

/// When an armed crash fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTrigger {
    /// Right after the node's `n`th next disk write completes (a crash
    /// point inside a commit).
    AfterWrites(u64),
    /// At this virtual time (between or inside operations).
    At(u64),
}

/// Background pauses: after every gap (uniform in `1..=2 * mean_gap_ns`)
/// one live node, drawn from the seed, freezes for `1..=max_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PausePlan {
    pub mean_gap_ns: u64,
    pub max_ns: u64,
}
