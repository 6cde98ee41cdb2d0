//! The host fence agent's line protocol, and [`HostFence`]: a
//! [`FenceAgent`] that sends each fence request to an agent on the host
//! (`fence.agent=IP:PORT`) over a stream, while the operator's
//! [`ManualFence`] (`fence ack|fail RID`) can still answer: whichever
//! answers first wins.
//!
//! One request per connection, one line each way (docs/cluster.md):
//!
//! ```text
//! appliance -> agent   FENCE <rid, 16 hex> <addr | -> <reason> <term>\n
//! agent -> appliance   FENCED <rid>\n   |   ERROR <rid> <why...>\n
//! ```
//!
//! `addr` is `-` when the asking server knows only the rid (a mount that
//! did not recover). The agent answers `FENCED` only once the target can
//! no longer write the shared devices. A connection that fails or closes
//! before a whole answer is retried every [`RETRY_NS`] until the
//! registry's deadline; a malformed answer or `ERROR` fails the request.

use crate::cluster::fence::{FenceAgent, FenceError, FenceReason, FenceRequest, ManualFence};
use crate::cluster::transport::{LocalFut, Transport};
use crate::counter;
use crate::runtime::exec::Handle;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;

/// Longest answer line (with its newline) the appliance reads.
pub const MAX_ANSWER: usize = 256;
/// Pause between connection attempts.
pub const RETRY_NS: u64 = 1_000_000_000;

/// The request line for `req`.
pub fn request_line(req: &FenceRequest) -> String {
    let addr = if req.addr.is_empty() || req.addr.contains(char::is_whitespace) {
        "-"
    } else {
        req.addr.as_str()
    };
    format!(
        "FENCE {:016x} {} {} {}\n",
        req.rid,
        addr,
        req.reason.name(),
        req.term
    )
}

/// A parsed request line (what an agent reads; the host tool uses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    pub rid: u64,
    /// `None` for `-`.
    pub addr: Option<String>,
    pub reason: FenceReason,
    pub term: u64,
}

fn parse_rid(w: &str) -> Option<u64> {
    if w.is_empty() || w.len() > 16 || !w.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(w, 16).ok()
}

/// Parse one request line (without or with its newline).
pub fn parse_request(line: &str) -> Result<ParsedRequest, String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let w: Vec<&str> = line.split(' ').collect();
    if w.len() != 5 || w[0] != "FENCE" {
        return Err(format!("not 'FENCE RID ADDR REASON TERM': {line:?}"));
    }
    let rid = parse_rid(w[1]).ok_or_else(|| format!("bad rid {:?}", w[1]))?;
    let addr = match w[2] {
        "-" => None,
        "" => return Err("empty address".into()),
        a => Some(String::from(a)),
    };
    let reason = match w[3] {
        "client_recovery" => FenceReason::ClientRecovery,
        "client_reconnect" => FenceReason::ClientReconnect,
        "quorum_block_leader" => FenceReason::QuorumBlockLeader,
        r => return Err(format!("unknown reason {r:?}")),
    };
    let term = w[4]
        .parse::<u64>()
        .map_err(|_| format!("bad term {:?}", w[4]))?;
    Ok(ParsedRequest {
        rid,
        addr,
        reason,
        term,
    })
}

/// What the agent said about a rid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Fenced,
    Error(String),
}

/// Parse an answer line (without its newline) to the request for `rid`.
pub fn parse_answer(line: &str, rid: u64) -> Result<Answer, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let (r, why) = rest.split_once(' ').unwrap_or((rest, ""));
    let got = parse_rid(r).ok_or_else(|| format!("bad answer {line:?}"))?;
    if got != rid {
        return Err(format!(
            "answer for rid {got:016x}, asked for {rid:016x}: {line:?}"
        ));
    }
    match verb {
        "FENCED" if why.is_empty() => Ok(Answer::Fenced),
        "ERROR" => Ok(Answer::Error(if why.is_empty() {
            String::from("(no reason given)")
        } else {
            String::from(why)
        })),
        _ => Err(format!("bad answer {line:?}")),
    }
}

/// Accumulates stream bytes until one whole line.
#[derive(Default)]
pub struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// Feed bytes: `Ok(Some(line))` at the first newline, `Err` past
    /// [`MAX_ANSWER`] bytes or on bytes that are not text.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<String>, String> {
        self.buf.extend_from_slice(data);
        if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            if nl >= MAX_ANSWER {
                return Err(format!("answer longer than {MAX_ANSWER} bytes"));
            }
            let line = core::str::from_utf8(&self.buf[..nl])
                .map_err(|_| String::from("answer is not UTF-8"))?;
            return Ok(Some(String::from(line)));
        }
        if self.buf.len() >= MAX_ANSWER {
            return Err(format!("answer longer than {MAX_ANSWER} bytes"));
        }
        Ok(None)
    }
}

/// Why one exchange with the agent did not give an answer.
enum Attempt {
    /// Could not connect, or the stream ended early: try again.
    Retry(&'static str),
    /// The agent answered something that is not the protocol.
    Bad(String),
}

/// Sends fence requests to the host agent at `addr`; the operator's
/// [`ManualFence`] answers too, whichever is first.
pub struct HostFence {
    addr: String,
    net: Rc<dyn Transport>,
    manual: Rc<ManualFence>,
    handle: Handle,
}

impl HostFence {
    pub fn new(
        addr: &str,
        net: Rc<dyn Transport>,
        manual: Rc<ManualFence>,
        handle: Handle,
    ) -> HostFence {
        HostFence {
            addr: String::from(addr),
            net,
            manual,
            handle,
        }
    }

    async fn exchange(&self, line: &str, rid: u64) -> Result<Answer, Attempt> {
        let conn = self
            .net
            .connect(&self.addr)
            .await
            .map_err(|_| Attempt::Retry("connect failed"))?;
        let r = async {
            conn.send(line.as_bytes())
                .await
                .map_err(|_| Attempt::Retry("send failed"))?;
            let mut rd = LineReader::default();
            let mut buf = [0u8; 128];
            loop {
                let n = conn
                    .recv(&mut buf)
                    .await
                    .map_err(|_| Attempt::Retry("closed before an answer"))?;
                match rd.feed(&buf[..n]) {
                    Ok(Some(l)) => return parse_answer(&l, rid).map_err(Attempt::Bad),
                    Ok(None) => {}
                    Err(e) => return Err(Attempt::Bad(e)),
                }
            }
        }
        .await;
        conn.close();
        r
    }

    /// Ask the host agent until it answers (the registry's deadline ends
    /// this).
    async fn ask_host(&self, req: &FenceRequest) -> Result<(), FenceError> {
        let line = request_line(req);
        let mut tries = 0u64;
        loop {
            counter!("host_fence.attempts").inc();
            match self.exchange(&line, req.rid).await {
                Ok(Answer::Fenced) => {
                    counter!("host_fence.fenced").inc();
                    log::info!(
                        "fence: host agent {} fenced rid {:016x}",
                        self.addr,
                        req.rid
                    );
                    return Ok(());
                }
                Ok(Answer::Error(why)) => {
                    counter!("host_fence.errors").inc();
                    log::error!(
                        "fence: host agent {} could not fence rid {:016x}: {why}",
                        self.addr,
                        req.rid
                    );
                    return Err(FenceError::Failed(format!("host agent: {why}")));
                }
                Err(Attempt::Bad(e)) => {
                    counter!("host_fence.bad_answers").inc();
                    log::error!(
                        "fence: host agent {} for rid {:016x}: {e}",
                        self.addr,
                        req.rid
                    );
                    return Err(FenceError::Failed(format!("host agent: {e}")));
                }
                Err(Attempt::Retry(why)) => {
                    counter!("host_fence.retries").inc();
                    if tries == 0 {
                        log::warn!(
                            "fence: host agent {} for rid {:016x}: {why}; retrying",
                            self.addr,
                            req.rid
                        );
                    }
                    tries = tries.saturating_add(1);
                    self.handle.sleep_ns(RETRY_NS).await;
                }
            }
        }
    }
}

/// Whichever of two futures finishes first.
async fn first<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        b.as_mut().poll(cx)
    })
    .await
}

/// Drops the operator's entry for a rid when the request ends.
struct Forget<'a>(&'a ManualFence, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

impl FenceAgent for HostFence {
    fn fence(&self, req: FenceRequest) -> LocalFut<'_, Result<(), FenceError>> {
        Box::pin(async move {
            // whoever answered (or the deadline), the operator no longer
            // needs to
            let _forget = Forget(&self.manual, req.rid);
            first(self.manual.fence(req.clone()), self.ask_host(&req)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fence::{FenceRegistry, FenceState};
    use crate::cluster::transport::MemNet;
    use crate::runtime::exec::{Executor, Limits};

    const AGENT: &str = "10.0.2.2:7700";

    fn req(rid: u64, addr: &str) -> FenceRequest {
        FenceRequest {
            rid,
            addr: addr.into(),
            reason: FenceReason::ClientRecovery,
            term: 7,
        }
    }

    #[test]
    fn request_lines_round_trip_and_bad_requests_are_refused() {
        let l = request_line(&req(0xab, ""));
        assert_eq!(l, "FENCE 00000000000000ab - client_recovery 7\n");
        let p = parse_request(&l).unwrap();
        assert_eq!((p.rid, p.addr, p.term), (0xab, None, 7));
        let mut q = req(5, "10.77.0.10:7100");
        q.reason = FenceReason::QuorumBlockLeader;
        let p = parse_request(&request_line(&q)).unwrap();
        assert_eq!(p.addr.as_deref(), Some("10.77.0.10:7100"));
        assert_eq!(p.reason, FenceReason::QuorumBlockLeader);
        for bad in [
            "",
            "FENCE",
            "FENCE 1 - client_recovery",
            "FENCE xyz - client_recovery 1",
            "FENCE 1 - sneeze 1",
            "FENCE 1 - client_recovery -1",
            "FENCE 11112222333344445 - client_recovery 1",
            "fence 1 - client_recovery 1",
            "FENCE 1  client_recovery 1",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn answers_parse_and_malformed_ones_are_errors() {
        let rid = 0x1234;
        assert_eq!(
            parse_answer("FENCED 0000000000001234", rid),
            Ok(Answer::Fenced)
        );
        assert_eq!(parse_answer("FENCED 1234\r", rid), Ok(Answer::Fenced));
        assert_eq!(
            parse_answer("ERROR 1234 no such vm", rid),
            Ok(Answer::Error("no such vm".into()))
        );
        assert!(parse_answer("FENCED 1235", rid)
            .unwrap_err()
            .contains("asked for"));
        for bad in [
            "",
            "FENCED",
            "OK 1234",
            "FENCED 1234 extra",
            "FENCED zz",
            "ERROR",
        ] {
            assert!(parse_answer(bad, rid).is_err(), "{bad:?} accepted");
        }
        let mut rd = LineReader::default();
        assert_eq!(rd.feed(b"FENC"), Ok(None));
        assert_eq!(rd.feed(b"ED 1\nrest"), Ok(Some("FENCED 1".into())));
        let mut rd = LineReader::default();
        assert!(rd.feed(&[b'x'; MAX_ANSWER]).is_err());
        let mut rd = LineReader::default();
        assert!(rd.feed(b"\xff\xfe\n").is_err());
    }

    /// An agent on `net` that answers each connection with `answer(line)`
    /// (None: close without answering), `conns` times.
    fn serve(ex: &Executor, net: &MemNet, conns: usize, answer: fn(&str) -> Option<String>) {
        let l = net.listen(AGENT).unwrap();
        ex.handle()
            .spawn(async move {
                for _ in 0..conns {
                    let c = l.accept().await.unwrap();
                    let mut rd = LineReader::default();
                    let mut buf = [0u8; 64];
                    let line = loop {
                        let n = c.recv(&mut buf).await.unwrap();
                        if let Some(l) = rd.feed(&buf[..n]).unwrap() {
                            break l;
                        }
                    };
                    assert!(parse_request(&line).is_ok(), "{line}");
                    if let Some(a) = answer(&line) {
                        c.send(a.as_bytes()).await.unwrap();
                    }
                    c.close();
                }
            })
            .unwrap();
    }

    fn run(net: &MemNet, ex: &Executor, rid: u64) -> (Rc<FenceRegistry>, Rc<ManualFence>) {
        let man = ManualFence::new();
        let agent = HostFence::new(AGENT, Rc::new(net.clone()), man.clone(), ex.handle());
        let reg = FenceRegistry::new(Rc::new(agent), ex.handle());
        reg.start(req(rid, ""), 10_000_000_000);
        (reg, man)
    }

    fn rid_of(line: &str) -> String {
        String::from(line.split(' ').nth(1).unwrap())
    }

    #[test]
    fn host_answers_fenced_after_a_dropped_connection() {
        let ex = Executor::new(Limits::default());
        let net = MemNet::new();
        // the first connection closes unanswered (retried), the second fences
        static N: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
        serve(&ex, &net, 2, |l| {
            (N.fetch_add(1, core::sync::atomic::Ordering::SeqCst) > 0)
                .then(|| format!("FENCED {}\n", rid_of(l)))
        });
        let (reg, man) = run(&net, &ex, 0x42);
        ex.run_until_stalled(0);
        assert_eq!(reg.state(0x42), Some(FenceState::Pending));
        assert_eq!(man.waiting().len(), 1, "the operator sees it meanwhile");
        ex.run_until_stalled(RETRY_NS + 1);
        assert_eq!(reg.state(0x42), Some(FenceState::Fenced));
        assert!(man.waiting().is_empty(), "the operator's entry is gone");
        assert!(!man.ack(0x42));
    }

    #[test]
    fn host_error_and_garbage_fail_the_request() {
        let ex = Executor::new(Limits::default());
        let net = MemNet::new();
        serve(&ex, &net, 1, |l| {
            Some(format!("ERROR {} no such vm\n", rid_of(l)))
        });
        let (reg, _) = run(&net, &ex, 7);
        ex.run_until_stalled(0);
        match reg.state(7) {
            Some(FenceState::Error(FenceError::Failed(w))) => {
                assert!(w.contains("no such vm"), "{w}")
            }
            s => panic!("{s:?}"),
        }

        let ex = Executor::new(Limits::default());
        let net = MemNet::new();
        serve(&ex, &net, 1, |_| Some("HELLO there\n".into()));
        let (reg, _) = run(&net, &ex, 8);
        ex.run_until_stalled(0);
        match reg.state(8) {
            Some(FenceState::Error(FenceError::Failed(w))) => {
                assert!(w.contains("bad answer"), "{w}")
            }
            s => panic!("{s:?}"),
        }

        // an endless line without a newline
        let ex = Executor::new(Limits::default());
        let net = MemNet::new();
        serve(&ex, &net, 1, |_| Some("x".repeat(MAX_ANSWER * 2)));
        let (reg, _) = run(&net, &ex, 9);
        ex.run_until_stalled(0);
        match reg.state(9) {
            Some(FenceState::Error(FenceError::Failed(w))) => assert!(w.contains("longer"), "{w}"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn no_agent_times_out_unless_the_operator_acks() {
        let ex = Executor::new(Limits::default());
        let net = MemNet::new();
        let (reg, man) = run(&net, &ex, 3);
        ex.run_until_stalled(0);
        ex.run_until_stalled(5 * RETRY_NS);
        assert_eq!(reg.state(3), Some(FenceState::Pending));
        ex.run_until_stalled(11_000_000_000);
        assert_eq!(reg.state(3), Some(FenceState::Error(FenceError::TimedOut)));
        assert!(man.waiting().is_empty());

        // the operator acks while the agent is unreachable
        let ex = Executor::new(Limits::default());
        let net = MemNet::new();
        let (reg, man) = run(&net, &ex, 4);
        ex.run_until_stalled(2 * RETRY_NS);
        assert!(man.ack(4));
        ex.run_until_stalled(2 * RETRY_NS + 1);
        assert_eq!(reg.state(4), Some(FenceState::Fenced));
    }
}
