//! The quorum election machine (reference §4.3), sans-IO: a stripped-down
//! raft election (no log) among the quorum slots of the super block.
//!
//! Inputs ([`Input`]): a decoded datagram, the deadline passing, the
//! local server coming up or going down, shutdown. Effects ([`Effect`]),
//! to be carried out in order: send datagrams, write (and flush) our own
//! quorum block, start the server for a term, stop it, end. A `Write`
//! must be durable before the effects after it run (a vote goes out only
//! after the term it is cast in is on disk). Time is passed in; the
//! election timeout's jitter comes from an injected [`Entropy`].
//!
//! Beyond the reference's rules (numbers in the comments):
//! * safe votes across restarts: a starting member takes the greatest
//!   term on disk and never votes in it (a vote it may have cast there
//!   before a crash is not remembered), and never votes twice in a term;
//! * persist only answered terms (upstream fix, §5.7): a candidate writes
//!   its new term once a vote arrives, so an isolated member does not
//!   climb terms on disk;
//! * no usurping (§5.7): a member that hears its leader's heartbeats
//!   (or leads) ignores vote requests of higher terms; a starting member
//!   counts the leader the quorum blocks show as heard (it votes for
//!   nobody until that leader has been silent for a heartbeat timeout);
//!   a candidate whose term nobody answered follows a leader it hears at
//!   a lower term it has not persisted past;
//! * a new leader that finds, after writing its ELECT, another slot's
//!   ELECT of a higher term not stopped yields ([`Input::Yield`]): it
//!   stops, writes STOP and follows that leader (two members that won
//!   without hearing each other: the one of the lower term never
//!   serves, whichever wrote first);
//! * one leader per term with fewer than 3 slots too: there a slot stands
//!   only in terms of its own parity (the first configured slot in even
//!   terms, the second in odd ones), wins at once with the other's vote,
//!   and alone only when its election timeout passes without a word from
//!   the other (an answer-less partner is down or cut off: fencing then
//!   keeps the higher term, since a new leader fences only lower terms);
//! * only the deadline passing starts an election (never a received
//!   message).

use crate::cluster::quorum_blocks::QEvent;
use crate::cluster::quorum_wire::MsgKind;
use crate::counter;
use crate::runtime::env::Entropy;
use alloc::rc::Rc;
use alloc::vec::Vec;

/// Election timeout: 250 ms plus up to 100 ms of jitter.
pub const ELECT_MIN_NS: u64 = 250_000_000;
pub const ELECT_VAR_NS: u64 = 100_000_000;
/// The leader's heartbeat interval.
pub const HB_IVAL_NS: u64 = 100_000_000;
/// Heartbeat timeout: default and bounds.
pub const HB_TIMEOUT_DEFAULT_NS: u64 = 10_000_000_000;
pub const HB_TIMEOUT_MIN_NS: u64 = 2_000_000_000;
pub const HB_TIMEOUT_MAX_NS: u64 = 60_000_000_000;
/// Heartbeat gaps at least this long are counted
/// (`quorum.heartbeat_gaps_3s`).
pub const HB_GAP_NOTED_NS: u64 = 3_000_000_000;
/// How often a member may look up a lower-term leader it hears in the
/// quorum blocks.
pub const DISK_CHECK_NS: u64 = 1_000_000_000;
/// Slots a quorum can have.
pub const MAX_SLOTS: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Our server's life, as the machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Idle,
    /// Asked to start for this term (fencing predecessors, then starting).
    Starting(u64),
    Up(u64),
    /// Asked to stop; waiting for it to report down.
    Stopping(u64),
}

/// Who a datagram goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every other configured slot.
    Others,
    Slot(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Msg {
        from: u8,
        term: u64,
        kind: MsgKind,
    },
    /// The time passed the machine's deadline (ignored if it did not).
    Timer,
    ServerUp,
    ServerDown,
    /// Our server was starting and the quorum blocks show `slot` leading
    /// a higher term (not stopped): step down and follow it.
    Yield {
        slot: u8,
    },
    /// The quorum blocks show `slot` leading `term` (the greatest ELECT
    /// not stopped) and we hear its heartbeats at that term, below ours
    /// (see [`Quorum::wants_disk_leader`]): follow it.
    LeaderOnDisk {
        slot: u8,
        term: u64,
    },
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: Dest,
        kind: MsgKind,
        term: u64,
    },
    /// Record these events in our quorum block, then flush.
    Write(Vec<(QEvent, u64)>),
    /// We lead this term: fence predecessors, then start the server.
    StartServer(u64),
    StopServer,
    /// The agent is done (after shutdown).
    Ended,
}

/// What the machine starts from.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub slot: u8,
    /// Configured slots (bit per slot), ours included.
    pub slots: u16,
    pub hb_timeout_ns: u64,
}

/// The machine.
pub struct Quorum {
    p: Params,
    needed: u32,
    /// Configured slots below ours (with fewer than 3 slots: the parity
    /// of the terms we stand in).
    rank: u32,
    /// Candidate in a quorum of 2: the other member spoke this candidacy.
    contested: bool,
    /// A lower-term leader we hear, to be checked against the quorum
    /// blocks (slot, term), and when we last asked.
    disk_check: Option<(u8, u64)>,
    disk_checked_ns: u64,
    rng: Rc<dyn Entropy>,
    role: Role,
    term: u64,
    /// The greatest term written to our block (or found at startup).
    persisted: u64,
    /// The greatest term we voted in (for ourselves included).
    voted: u64,
    votes: u16,
    leader: Option<u8>,
    leader_heard_ns: u64,
    deadline_ns: u64,
    server: ServerState,
    fence_written: bool,
    shutting_down: bool,
    ended: bool,
    /// Last datagram heard per slot (ns).
    heard: [Option<u64>; MAX_SLOTS],
}

/// Votes a candidate needs: a majority, or 1 with fewer than 3 slots
/// (with 2 slots a candidate still wins at once with both votes, and
/// alone only after an uncontested election timeout).
pub fn votes_needed(slots: u16) -> u32 {
    let n = slots.count_ones();
    if n < 3 {
        1
    } else {
        n / 2 + 1
    }
}

/// With fewer than 3 slots each slot stands in terms of its own parity,
/// so two concurrent winners never share a term.
fn split_terms(slots: u16) -> bool {
    slots.count_ones() == 2
}

impl Quorum {
    /// Start (rule 0) from `start_term`, the greatest term of any slot's
    /// block; `active_leader`: the slot of another member the blocks show
    /// leading (not stopped): it counts as heard now, so we neither stand
    /// nor vote for a heartbeat timeout unless it goes quiet.
    pub fn new(
        p: Params,
        start_term: u64,
        active_leader: Option<u8>,
        now: u64,
        rng: Rc<dyn Entropy>,
    ) -> (Quorum, Vec<Effect>) {
        assert!((p.slot as usize) < MAX_SLOTS && p.slots & (1 << p.slot) != 0);
        let active_leader = active_leader
            .filter(|&l| l != p.slot && (l as usize) < MAX_SLOTS && p.slots & (1 << l) != 0);
        let needed = if split_terms(p.slots) {
            2
        } else {
            votes_needed(p.slots)
        };
        let mut q = Quorum {
            p,
            needed,
            rank: (p.slots & ((1u16 << p.slot) - 1)).count_ones(),
            contested: false,
            disk_check: None,
            disk_checked_ns: 0,
            rng,
            role: Role::Follower,
            term: start_term,
            persisted: start_term,
            voted: start_term,
            votes: 0,
            leader: active_leader,
            leader_heard_ns: now,
            deadline_ns: 0,
            server: ServerState::Idle,
            fence_written: false,
            shutting_down: false,
            ended: false,
            heard: [None; MAX_SLOTS],
        };
        q.deadline_ns = if active_leader.is_some() {
            now.saturating_add(p.hb_timeout_ns)
        } else {
            q.elect_deadline(now)
        };
        (
            q,
            alloc::vec![Effect::Write(alloc::vec![(QEvent::Begin, start_term)])],
        )
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn leader(&self) -> Option<u8> {
        self.leader
    }
    pub fn server(&self) -> ServerState {
        self.server
    }
    pub fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }
    pub fn heard(&self, slot: usize) -> Option<u64> {
        self.heard.get(slot).copied().flatten()
    }
    pub fn persisted_term(&self) -> u64 {
        self.persisted
    }
    pub fn is_ended(&self) -> bool {
        self.ended
    }
    /// A lower-term leader the agent should look up in the quorum blocks
    /// (then answer with [`Input::LeaderOnDisk`] if they name it).
    pub fn wants_disk_leader(&self) -> Option<(u8, u64)> {
        self.disk_check
    }
    pub fn hb_timeout_ns(&self) -> u64 {
        self.p.hb_timeout_ns
    }

    /// Change the heartbeat timeout (clamped to 2–60 s); the next
    /// heartbeat arms the new value.
    pub fn set_hb_timeout(&mut self, ns: u64) {
        self.p.hb_timeout_ns = ns.clamp(HB_TIMEOUT_MIN_NS, HB_TIMEOUT_MAX_NS);
    }

    fn elect_deadline(&self, now: u64) -> u64 {
        now.saturating_add(ELECT_MIN_NS + self.rng.next_u64() % ELECT_VAR_NS)
    }

    /// Apply one input at time `now`.
    pub fn step(&mut self, now: u64, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.ended {
            return fx;
        }
        match input {
            Input::Msg { from, term, kind } => self.on_msg(now, from, term, kind, &mut fx),
            Input::Timer => {
                if now >= self.deadline_ns {
                    self.on_timeout(now, &mut fx);
                }
            }
            Input::ServerUp => {
                // rule 8
                if let ServerState::Starting(t) = self.server {
                    self.server = ServerState::Up(t);
                    if self.role == Role::Leader && self.term == t && !self.fence_written {
                        self.fence_written = true;
                        fx.push(Effect::Write(alloc::vec![(QEvent::Fence, t)]));
                    }
                }
            }
            Input::ServerDown => self.on_server_down(now, &mut fx),
            Input::LeaderOnDisk { slot, term } => {
                if self.role != Role::Leader
                    && term < self.term
                    && !self.hearing_leader(now)
                    && self.disk_check == Some((slot, term))
                {
                    counter!("quorum.followed_disk_leader").inc();
                    self.role = Role::Follower;
                    self.term = term;
                    self.votes = 0;
                    self.follow(now, slot);
                }
                self.disk_check = None;
            }
            Input::Yield { slot } => {
                if self.role == Role::Leader
                    && slot != self.p.slot
                    && (slot as usize) < MAX_SLOTS
                    && self.p.slots & (1 << slot) != 0
                {
                    counter!("quorum.yielded").inc();
                    self.role = Role::Follower;
                    self.votes = 0;
                    self.leader = Some(slot);
                    self.leader_heard_ns = now;
                    self.deadline_ns = now.saturating_add(self.p.hb_timeout_ns);
                }
            }
            Input::Shutdown => self.shutting_down = true,
        }
        // rule 9: a server may only run for the term we lead
        if let ServerState::Starting(t) | ServerState::Up(t) = self.server {
            if self.role != Role::Leader || self.term != t || self.shutting_down {
                self.server = ServerState::Stopping(t);
                fx.push(Effect::StopServer);
            }
        }
        // rule 13: once the server is down, resign and end
        if self.shutting_down && self.server == ServerState::Idle {
            if self.role == Role::Leader {
                fx.push(Effect::Send {
                    to: Dest::Others,
                    kind: MsgKind::Resignation,
                    term: self.term,
                });
                self.role = Role::Follower;
            }
            fx.push(Effect::Write(alloc::vec![(QEvent::End, self.term)]));
            fx.push(Effect::Ended);
            self.ended = true;
        }
        fx
    }

    fn persist_term(&mut self, fx: &mut Vec<Effect>) {
        if self.term > self.persisted {
            self.persisted = self.term;
            fx.push(Effect::Write(alloc::vec![(QEvent::Term, self.term)]));
        }
    }

    fn hearing_leader(&self, now: u64) -> bool {
        self.role == Role::Leader
            || (self.leader.is_some()
                && now < self.leader_heard_ns.saturating_add(self.p.hb_timeout_ns))
    }

    fn on_msg(&mut self, now: u64, from: u8, term: u64, kind: MsgKind, fx: &mut Vec<Effect>) {
        if from == self.p.slot || from as usize >= MAX_SLOTS || self.p.slots & (1 << from) == 0 {
            counter!("quorum.rx_ignored").inc();
            return;
        }
        self.heard[from as usize] = Some(now);
        // no usurping a leader we hear
        if kind == MsgKind::RequestVote && term > self.term && self.hearing_leader(now) {
            counter!("quorum.vote_requests_ignored").inc();
            return;
        }
        // an unanswered candidacy yields to a leader it hears (at a term
        // it has not persisted past: a leader of a term below one a
        // member voted in may be a stale one)
        if kind == MsgKind::Heartbeat
            && term < self.term
            && term >= self.persisted
            && self.role != Role::Leader
        {
            counter!("quorum.stepped_back").inc();
            self.role = Role::Follower;
            self.term = term;
            self.votes = 0;
            self.follow(now, from);
            return;
        }
        // a quorum of 2: the other member is up and in the race (a
        // candidate, or a leader at our term or above: lower ones we
        // cannot follow do not hold us back)
        if self.role == Role::Candidate && (term >= self.term || kind == MsgKind::RequestVote) {
            self.contested = true;
        }
        // rule 1
        if term < self.term {
            counter!("quorum.rx_old_term").inc();
            // a leader below a term we voted in (its successor never won,
            // or died): follow it if the quorum blocks say it is the
            // leader (the one clients find); asked at most once a second
            if kind == MsgKind::Heartbeat
                && self.role != Role::Leader
                && !self.hearing_leader(now)
                && now >= self.disk_checked_ns.saturating_add(DISK_CHECK_NS)
            {
                self.disk_checked_ns = now;
                self.disk_check = Some((from, term));
            }
            return;
        }
        // rule 2
        if term > self.term {
            if self.role == Role::Leader {
                counter!("quorum.leader_saw_higher_term").inc();
            }
            self.role = Role::Follower;
            self.term = term;
            self.votes = 0;
            self.leader = None;
            self.deadline_ns = if kind == MsgKind::Heartbeat {
                now.saturating_add(self.p.hb_timeout_ns)
            } else {
                self.elect_deadline(now)
            };
            self.persist_term(fx);
        }
        match kind {
            // rule 3 (a candidate of this term yields: the term has a leader)
            MsgKind::Heartbeat => {
                if self.role != Role::Leader {
                    self.role = Role::Follower;
                    self.votes = 0;
                    self.follow(now, from);
                } else {
                    counter!("quorum.two_leaders_one_term").inc();
                }
            }
            // rule 4
            MsgKind::Resignation => {
                if self.role == Role::Follower {
                    if self.leader == Some(from) {
                        self.leader = None;
                    }
                    self.deadline_ns = self.elect_deadline(now);
                }
            }
            // rule 6, 7
            MsgKind::Vote => {
                if self.role == Role::Candidate {
                    if self.votes & (1 << from) != 0 {
                        counter!("quorum.duplicate_votes").inc();
                    }
                    self.votes |= 1 << from;
                    // the term is answered: now it may be persisted
                    self.persist_term(fx);
                    if self.votes.count_ones() >= self.needed {
                        self.win(now, fx);
                    }
                }
            }
            // rule 12
            MsgKind::RequestVote => {
                if self.role == Role::Follower && self.voted < self.term {
                    self.persist_term(fx);
                    self.voted = self.term;
                    counter!("quorum.votes_cast").inc();
                    fx.push(Effect::Send {
                        to: Dest::Slot(from),
                        kind: MsgKind::Vote,
                        term: self.term,
                    });
                }
            }
        }
    }

    fn follow(&mut self, now: u64, from: u8) {
        // long gaps between a leader's heartbeats are worth knowing about
        if self.leader == Some(from) && now.saturating_sub(self.leader_heard_ns) >= HB_GAP_NOTED_NS
        {
            counter!("quorum.heartbeat_gaps_3s").inc();
        }
        self.leader = Some(from);
        self.leader_heard_ns = now;
        self.deadline_ns = now.saturating_add(self.p.hb_timeout_ns);
    }

    fn on_timeout(&mut self, now: u64, fx: &mut Vec<Effect>) {
        if self.role == Role::Leader {
            // rule 11
            fx.push(Effect::Send {
                to: Dest::Others,
                kind: MsgKind::Heartbeat,
                term: self.term,
            });
            self.deadline_ns = now.saturating_add(HB_IVAL_NS);
            return;
        }
        // rule 5
        if self.server != ServerState::Idle || self.shutting_down {
            self.deadline_ns = self.elect_deadline(now);
            return;
        }
        // a quorum of 2: an election timeout with no word from the other
        // member (it is down or cut off) wins alone
        if self.role == Role::Candidate
            && split_terms(self.p.slots)
            && !self.contested
            && self.votes == 1 << self.p.slot
        {
            counter!("quorum.won_alone").inc();
            self.win(now, fx);
            return;
        }
        counter!("quorum.elections").inc();
        self.role = Role::Candidate;
        self.contested = false;
        let mut t = self
            .term
            .max(self.voted)
            .max(self.persisted)
            .saturating_add(1);
        if split_terms(self.p.slots) && t % 2 != u64::from(self.rank) {
            t = t.saturating_add(1);
        }
        self.term = t;
        self.voted = self.term;
        self.votes = 1 << self.p.slot;
        self.leader = None;
        self.deadline_ns = self.elect_deadline(now);
        fx.push(Effect::Send {
            to: Dest::Others,
            kind: MsgKind::RequestVote,
            term: self.term,
        });
        if self.votes.count_ones() >= self.needed {
            self.win(now, fx);
        }
    }

    // rule 7
    fn win(&mut self, now: u64, fx: &mut Vec<Effect>) {
        counter!("quorum.elected").inc();
        self.role = Role::Leader;
        self.leader = Some(self.p.slot);
        self.persisted = self.term;
        fx.push(Effect::Write(alloc::vec![
            (QEvent::Term, self.term),
            (QEvent::Elect, self.term)
        ]));
        fx.push(Effect::Send {
            to: Dest::Others,
            kind: MsgKind::Heartbeat,
            term: self.term,
        });
        self.deadline_ns = now.saturating_add(HB_IVAL_NS);
        debug_assert_eq!(self.server, ServerState::Idle);
        self.server = ServerState::Starting(self.term);
        self.fence_written = false;
        fx.push(Effect::StartServer(self.term));
    }

    // rule 10
    fn on_server_down(&mut self, now: u64, fx: &mut Vec<Effect>) {
        let t = match self.server {
            ServerState::Idle => return,
            ServerState::Starting(t) | ServerState::Up(t) | ServerState::Stopping(t) => t,
        };
        if self.role == Role::Leader && self.term == t {
            self.role = Role::Follower;
            self.leader = None;
            fx.push(Effect::Send {
                to: Dest::Others,
                kind: MsgKind::Resignation,
                term: t,
            });
            self.deadline_ns = self.elect_deadline(now);
        }
        fx.push(Effect::Write(alloc::vec![(QEvent::Stop, t)]));
        self.server = ServerState::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::env::SeededEntropy;

    fn m(slot: u8, term: u64) -> Quorum {
        let p = Params {
            slot,
            slots: 0b111,
            hb_timeout_ns: HB_TIMEOUT_MIN_NS,
        };
        Quorum::new(p, term, None, 0, Rc::new(SeededEntropy::new(slot as u64))).0
    }

    fn sends(fx: &[Effect]) -> Vec<(Dest, MsgKind, u64)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { to, kind, term } => Some((*to, *kind, *term)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_timeout_makes_a_candidate_that_wins_with_a_majority_and_fences_on_up() {
        let mut a = m(0, 4);
        let mut b = m(1, 4);
        let fx = a.step(1_000_000_000, Input::Timer);
        assert_eq!(a.role(), Role::Candidate);
        // the new term is not persisted before an answer
        assert!(!fx.iter().any(|e| matches!(e, Effect::Write(_))));
        assert_eq!(
            sends(&fx),
            alloc::vec![(Dest::Others, MsgKind::RequestVote, 5)]
        );
        let fx = b.step(
            1_000_000_001,
            Input::Msg {
                from: 0,
                term: 5,
                kind: MsgKind::RequestVote,
            },
        );
        // the voter persists the term before its vote goes out
        assert_eq!(fx[0], Effect::Write(alloc::vec![(QEvent::Term, 5)]));
        assert_eq!(sends(&fx), alloc::vec![(Dest::Slot(0), MsgKind::Vote, 5)]);
        // a second candidate in the same term gets no vote
        let fx = b.step(
            1_000_000_002,
            Input::Msg {
                from: 2,
                term: 5,
                kind: MsgKind::RequestVote,
            },
        );
        assert!(sends(&fx).is_empty());
        let fx = a.step(
            1_000_000_003,
            Input::Msg {
                from: 1,
                term: 5,
                kind: MsgKind::Vote,
            },
        );
        assert_eq!(a.role(), Role::Leader);
        assert!(fx.contains(&Effect::Write(alloc::vec![(QEvent::Term, 5)])));
        assert!(fx.contains(&Effect::StartServer(5)));
        let fx = a.step(1_000_000_004, Input::ServerUp);
        assert_eq!(
            fx,
            alloc::vec![Effect::Write(alloc::vec![(QEvent::Fence, 5)])]
        );
        // a higher heartbeat dethrones it: the server is stopped, then STOP
        let fx = a.step(
            1_000_000_005,
            Input::Msg {
                from: 2,
                term: 9,
                kind: MsgKind::Heartbeat,
            },
        );
        assert!(fx.contains(&Effect::StopServer));
        assert_eq!(a.role(), Role::Follower);
        let fx = a.step(1_000_000_006, Input::ServerDown);
        assert_eq!(
            fx,
            alloc::vec![Effect::Write(alloc::vec![(QEvent::Stop, 5)])]
        );
    }

    #[test]
    fn a_member_hearing_its_leader_ignores_higher_vote_requests() {
        let mut b = m(1, 4);
        b.step(
            10,
            Input::Msg {
                from: 0,
                term: 4,
                kind: MsgKind::Heartbeat,
            },
        );
        let fx = b.step(
            20,
            Input::Msg {
                from: 2,
                term: 7,
                kind: MsgKind::RequestVote,
            },
        );
        assert!(fx.is_empty());
        assert_eq!((b.term(), b.leader()), (4, Some(0)));
        // a started member never votes in the term it started with
        let mut c = m(2, 4);
        let fx = c.step(
            5,
            Input::Msg {
                from: 0,
                term: 4,
                kind: MsgKind::RequestVote,
            },
        );
        assert!(sends(&fx).is_empty());
    }

    fn vote_req(from: u8, term: u64) -> Input {
        Input::Msg {
            from,
            term,
            kind: MsgKind::RequestVote,
        }
    }

    #[test]
    fn two_slots_stand_in_their_own_parity_and_win_alone_only_uncontested() {
        let p = |slot| Params {
            slot,
            slots: 0b11,
            hb_timeout_ns: HB_TIMEOUT_MIN_NS,
        };
        let rng = |s| Rc::new(SeededEntropy::new(s)) as Rc<dyn Entropy>;
        let (mut a, _) = Quorum::new(p(0), 0, None, 0, rng(1));
        let (mut b, _) = Quorum::new(p(1), 0, None, 0, rng(2));
        // both stand at once: slot 0 in an even term, slot 1 in an odd one
        a.step(1_000_000_000, Input::Timer);
        b.step(1_000_000_000, Input::Timer);
        assert_eq!(
            (a.role(), a.term(), b.role(), b.term()),
            (Role::Candidate, 2, Role::Candidate, 1)
        );
        // their requests cross: the lower term votes for the higher, the
        // higher one wins with both votes; nobody won term 1
        let fx = b.step(1_000_000_001, vote_req(0, 2));
        assert_eq!(sends(&fx), alloc::vec![(Dest::Slot(0), MsgKind::Vote, 2)]);
        a.step(1_000_000_001, vote_req(1, 1));
        assert_eq!(a.role(), Role::Candidate);
        let fx = a.step(
            1_000_000_002,
            Input::Msg {
                from: 1,
                term: 2,
                kind: MsgKind::Vote,
            },
        );
        assert!(fx.contains(&Effect::StartServer(2)));
        assert_eq!((b.role(), b.term()), (Role::Follower, 2));
        // a candidate that heard its partner's request does not win alone
        let (mut c, _) = Quorum::new(p(1), 2, None, 0, rng(3));
        c.step(1_000_000_000, Input::Timer);
        assert_eq!(c.term(), 3);
        c.step(1_000_000_001, vote_req(0, 2));
        let fx = c.step(2_000_000_000, Input::Timer);
        assert!(!fx.iter().any(|e| matches!(e, Effect::StartServer(_))));
        assert_eq!((c.role(), c.term()), (Role::Candidate, 5));
        // one that heard nothing for an election timeout does
        let fx = c.step(3_000_000_000, Input::Timer);
        assert!(fx.contains(&Effect::StartServer(5)));
    }

    #[test]
    fn a_started_member_defers_to_the_leader_the_blocks_show() {
        let p = Params {
            slot: 2,
            slots: 0b111,
            hb_timeout_ns: HB_TIMEOUT_MIN_NS,
        };
        let (mut c, _) = Quorum::new(p, 4, Some(0), 0, Rc::new(SeededEntropy::new(2)));
        // a candidate of a higher term asks before any heartbeat arrived
        let fx = c.step(10, vote_req(1, 6));
        assert!(sends(&fx).is_empty());
        assert_eq!((c.term(), c.leader()), (4, Some(0)));
        // that leader silent for a heartbeat timeout: now it votes
        let fx = c.step(HB_TIMEOUT_MIN_NS + 10, vote_req(1, 7));
        assert_eq!(sends(&fx), alloc::vec![(Dest::Slot(1), MsgKind::Vote, 7)]);
    }

    #[test]
    fn a_new_leader_that_finds_a_higher_one_on_disk_yields_and_follows_it() {
        let p = Params {
            slot: 1,
            slots: 0b11,
            hb_timeout_ns: HB_TIMEOUT_MIN_NS,
        };
        let (mut b, _) = Quorum::new(p, 0, None, 0, Rc::new(SeededEntropy::new(2)));
        b.step(1_000_000_000, Input::Timer);
        let fx = b.step(2_000_000_000, Input::Timer);
        assert!(fx.contains(&Effect::StartServer(1)));
        let fx = b.step(2_000_000_001, Input::Yield { slot: 0 });
        assert!(fx.contains(&Effect::StopServer));
        assert_eq!((b.role(), b.leader()), (Role::Follower, Some(0)));
        let fx = b.step(2_000_000_002, Input::ServerDown);
        assert_eq!(
            fx,
            alloc::vec![Effect::Write(alloc::vec![(QEvent::Stop, 1)])]
        );
    }

    #[test]
    fn an_unanswered_candidate_follows_the_leader_it_hears() {
        let mut c = m(2, 4);
        c.step(1_000_000_000, Input::Timer);
        c.step(2_000_000_000, Input::Timer);
        assert_eq!(
            (c.role(), c.term(), c.persisted_term()),
            (Role::Candidate, 6, 4)
        );
        c.step(
            2_000_000_001,
            Input::Msg {
                from: 0,
                term: 4,
                kind: MsgKind::Heartbeat,
            },
        );
        assert_eq!(
            (c.role(), c.term(), c.leader()),
            (Role::Follower, 4, Some(0))
        );
        // its next candidacy still goes past the terms it stood in
        c.step(9_000_000_000, Input::Timer);
        assert_eq!(c.term(), 7);
    }
}
