//! `scoutvm p9load`: a host-native 9P2000.L load generator that measures
//! a server alone, without a client kernel in the way.
//!
//! One TCP connection; N requests outstanding means N workers, each with
//! its own tag and fids and at most one request in flight, so the server
//! always has N requests to work on. A reader thread cuts replies into
//! frames; the calling thread sends requests and advances the workers.
//! Each op runs in its own subdirectory of a fresh run directory, with
//! its setup (files to walk to, a prefilled file to read) done first and
//! not timed. An op iteration is the op's whole request sequence (e.g.
//! walk + lcreate + clunk for `create`); its latency runs from the first
//! request sent to the last reply received.
//!
//! `Rlerror` answers are counted per op and the run goes on; a reply that
//! breaks the protocol (undecodable, unknown tag, wrong type, read data
//! that differs from what was written) ends the run with an error.
//! Data written and read follows [`pattern_byte`], a function of the file
//! offset, so every read checks what the server returned.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scoutvm_net::p9::wire::{self, GetattrMask, Rmsg, Tmsg, IOHDRSZ, NOFID, NOTAG};

/// Longest wait for any one reply before the run is declared stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The fids of the attach and of the run directory.
const ROOT_FID: u32 = 0;
const RUN_FID: u32 = 1;
/// Per worker two fids from here: a long-lived one and a scratch one.
const WORKER_FID_BASE: u32 = 100;
/// Largest reply the reader accepts before the version is negotiated.
const FRAME_MAX: u32 = wire::MSIZE_MAX + 4096;
const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;
const EOPNOTSUPP: u32 = 95;
/// Files a prefilled read file or a write region spans, in op sizes.
const FILE_SPAN_OPS: u64 = 16;
/// Files made for `walk` and `getattr` to look up.
const LOOKUP_FILES: u64 = 64;

/// One kind of load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Getattr,
    Walk,
    Create,
    Unlink,
    Read(u32),
    Write(u32),
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Getattr,
        Op::Walk,
        Op::Create,
        Op::Unlink,
        Op::Read(64 << 10),
        Op::Write(64 << 10),
        Op::Read(1 << 20),
        Op::Write(1 << 20),
    ];

    pub fn name(self) -> String {
        let size = |n: u32| {
            if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
                format!("{}m", n >> 20)
            } else {
                format!("{}k", n >> 10)
            }
        };
        match self {
            Op::Getattr => "getattr".into(),
            Op::Walk => "walk".into(),
            Op::Create => "create".into(),
            Op::Unlink => "unlink".into(),
            Op::Read(n) => format!("read{}", size(n)),
            Op::Write(n) => format!("write{}", size(n)),
        }
    }

    pub fn parse(s: &str) -> Result<Op, String> {
        Op::ALL
            .iter()
            .copied()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Op::ALL.iter().map(|o| o.name()).collect();
                format!("unknown op {s:?} (known: {})", names.join(","))
            })
    }

    fn bytes_per_iter(self) -> u64 {
        match self {
            Op::Read(n) | Op::Write(n) => n as u64,
            _ => 0,
        }
    }
}

/// Parse a comma-separated op list.
pub fn parse_ops(s: &str) -> Result<Vec<Op>, String> {
    s.split(',')
        .filter(|w| !w.is_empty())
        .map(Op::parse)
        .collect()
}

/// When an op's loop stops.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Seconds(f64),
    Count(u64),
}

/// What to run against which server.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: String,
    pub aname: String,
    pub msize: u32,
    pub outstanding: usize,
    pub budget: Budget,
    pub ops: Vec<Op>,
    pub uname: String,
    pub uid: u32,
    /// The run directory's name under the attach root (default: made
    /// up from the pid and the clock); each op works in `OPNAME-INDEX`
    /// below it, e.g. `write64k-5/data`.
    pub run_dir: Option<String>,
    /// Unlink by walk + `Tremove` from the start (without it, only after
    /// the server answers `Tunlinkat` with EOPNOTSUPP, as diod does).
    pub unlink_by_remove: bool,
}

impl Config {
    pub fn new(server: &str) -> Config {
        Config {
            server: server.into(),
            aname: String::new(),
            msize: 512 << 10,
            outstanding: 1,
            budget: Budget::Seconds(5.0),
            ops: Op::ALL.to_vec(),
            uname: "root".into(),
            uid: 0,
            run_dir: None,
            unlink_by_remove: false,
        }
    }
}

/// One op's figures.
#[derive(Clone, Debug)]
pub struct OpReport {
    pub op: Op,
    pub outstanding: usize,
    /// Iterations that completed without an error.
    pub ops: u64,
    /// Iterations answered with `Rlerror` (and the first errno seen).
    pub errors: u64,
    pub first_errno: Option<u32>,
    /// Data bytes read or written by the successful iterations.
    pub bytes: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl OpReport {
    pub fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn mb_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 / self.secs / 1e6
        } else {
            0.0
        }
    }

    /// The `P9LOAD ...` line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "P9LOAD op={} outstanding={} ops={} secs={:.2} ops_s={:.1}",
            self.op.name(),
            self.outstanding,
            self.ops,
            self.secs,
            self.ops_per_sec()
        );
        if self.op.bytes_per_iter() > 0 {
            s.push_str(&format!(" mb_s={:.2}", self.mb_per_sec()));
        }
        s.push_str(&format!(
            " p50_us={} p99_us={} errors={}",
            self.p50_us, self.p99_us, self.errors
        ));
        if let Some(e) = self.first_errno {
            s.push_str(&format!(" first_errno={e}"));
        }
        s
    }
}

/// The byte every written and read file holds at `offset`.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8 ^ (offset >> 12) as u8
}

fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// A reply frame and when it arrived.
type Arrival = Result<(Vec<u8>, Instant), String>;

/// A 9P2000.L client connection: blocking calls for setup and pipelined
/// sends for the load.
pub struct Client {
    sock: TcpStream,
    rx: Receiver<Arrival>,
    reader: Option<JoinHandle<()>>,
    msize: u32,
    buf: Vec<u8>,
}

impl Client {
    /// Connect, negotiate `msize` and 9P2000.L, attach `aname` as
    /// `uname`/`uid` on fid 0.
    pub fn connect(
        server: &str,
        msize: u32,
        uname: &str,
        aname: &str,
        uid: u32,
    ) -> Result<Client, String> {
        let sock = TcpStream::connect(server).map_err(|e| format!("connect {server}: {e}"))?;
        let _ = sock.set_nodelay(true);
        let mut rsock = sock.try_clone().map_err(|e| format!("socket: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("p9load-reader".into())
            .spawn(move || loop {
                let got = read_frame(&mut rsock);
                let end = got.is_err();
                if tx.send(got).is_err() || end {
                    return;
                }
            })
            .map_err(|e| format!("cannot start the reader thread: {e}"))?;
        let mut c = Client {
            sock,
            rx,
            reader: Some(reader),
            msize,
            buf: Vec::new(),
        };
        let reply = c.call(
            NOTAG,
            &Tmsg::Version {
                msize,
                version: wire::VERSION_9P2000_L,
            },
        )?;
        match decode(&reply)? {
            (_, Rmsg::Version { msize: m, version }) if version == wire::VERSION_9P2000_L => {
                if m > msize || m <= IOHDRSZ {
                    return Err(format!("server answered msize {m} to our {msize}"));
                }
                c.msize = m;
            }
            (_, Rmsg::Version { version, .. }) => {
                return Err(format!(
                    "server speaks {:?}, not 9P2000.L",
                    String::from_utf8_lossy(version)
                ))
            }
            (_, other) => return Err(unexpected("Tversion", &other)),
        }
        c.expect(
            &Tmsg::Attach {
                fid: ROOT_FID,
                afid: NOFID,
                uname: uname.as_bytes(),
                aname: aname.as_bytes(),
                n_uname: uid,
            },
            "Tattach",
            |r| matches!(r, Rmsg::Attach { .. }),
        )?;
        Ok(c)
    }

    /// The negotiated msize.
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// Data bytes one Tread/Twrite carries at most.
    pub fn iounit(&self) -> u32 {
        self.msize - IOHDRSZ
    }

    fn send(&mut self, tag: u16, msg: &Tmsg<'_>) -> Result<(), String> {
        self.buf.clear();
        msg.encode(tag, &mut self.buf)
            .map_err(|e| format!("encode: {e}"))?;
        self.sock
            .write_all(&self.buf)
            .map_err(|e| format!("send: {e}"))
    }

    fn recv(&self) -> Result<(Vec<u8>, Instant), String> {
        match self.rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(got) => got,
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "no reply from the server in {} s",
                REPLY_TIMEOUT.as_secs()
            )),
            Err(RecvTimeoutError::Disconnected) => Err("the connection ended".into()),
        }
    }

    /// Send one request and wait for its reply (nothing else in flight).
    pub fn call(&mut self, tag: u16, msg: &Tmsg<'_>) -> Result<Vec<u8>, String> {
        self.send(tag, msg)?;
        let (frame, _) = self.recv()?;
        if frame.len() > self.msize as usize && tag != NOTAG {
            return Err(format!("reply of {} bytes over msize", frame.len()));
        }
        let got = u16::from_le_bytes([frame[5], frame[6]]);
        if got != tag {
            return Err(format!("reply with tag {got}, expected {tag}"));
        }
        Ok(frame)
    }

    /// A call that must succeed with a reply `ok` accepts.
    pub fn expect(
        &mut self,
        msg: &Tmsg<'_>,
        what: &str,
        ok: impl Fn(&Rmsg<'_>) -> bool,
    ) -> Result<Vec<u8>, String> {
        let frame = self.call(0, msg)?;
        let (_, r) = decode(&frame)?;
        if let Rmsg::Lerror { ecode } = r {
            return Err(format!("{what}: the server answered errno {ecode}"));
        }
        if !ok(&r) {
            return Err(unexpected(what, &r));
        }
        Ok(frame)
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Result<(), String> {
        let n = names.len();
        self.expect(
            &Tmsg::Walk {
                fid,
                newfid,
                wnames: names.to_vec(),
            },
            "Twalk",
            |r| matches!(r, Rmsg::Walk { qids } if qids.len() == n),
        )
        .map(|_| ())
    }

    fn clunk(&mut self, fid: u32) -> Result<(), String> {
        self.expect(&Tmsg::Clunk { fid }, "Tclunk", |r| {
            matches!(r, Rmsg::Clunk {})
        })
        .map(|_| ())
    }

    fn mkdir(&mut self, dfid: u32, name: &str) -> Result<(), String> {
        self.expect(
            &Tmsg::Mkdir {
                dfid,
                name: name.as_bytes(),
                mode: 0o755,
                gid: 0,
            },
            &format!("Tmkdir {name}"),
            |r| matches!(r, Rmsg::Mkdir { .. }),
        )
        .map(|_| ())
    }

    /// Walk `dfid` to `fid` at `name` (a file, created if `create`) and
    /// open it with `flags`.
    fn open(
        &mut self,
        dfid: u32,
        fid: u32,
        name: &str,
        flags: u32,
        create: bool,
    ) -> Result<(), String> {
        if create {
            self.walk(dfid, fid, &[])?;
            self.expect(
                &Tmsg::Lcreate {
                    fid,
                    name: name.as_bytes(),
                    flags: flags | O_CREAT,
                    mode: 0o644,
                    gid: 0,
                },
                &format!("Tlcreate {name}"),
                |r| matches!(r, Rmsg::Lcreate { .. }),
            )?;
        } else {
            self.walk(dfid, fid, &[name.as_bytes()])?;
            self.expect(&Tmsg::Lopen { fid, flags }, "Tlopen", |r| {
                matches!(r, Rmsg::Lopen { .. })
            })?;
        }
        Ok(())
    }

    /// Read `len` bytes of the open `fid` at `offset` (short only at EOF).
    pub fn read_at(&mut self, fid: u32, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let count = (len - out.len()).min(self.iounit() as usize) as u32;
            let frame = self.expect(
                &Tmsg::Read {
                    fid,
                    offset: offset + out.len() as u64,
                    count,
                },
                "Tread",
                |r| matches!(r, Rmsg::Read { data } if data.len() <= count as usize),
            )?;
            let (_, r) = decode(&frame)?;
            let Rmsg::Read { data } = r else {
                unreachable!("checked by expect")
            };
            if data.is_empty() {
                break;
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Write the pattern over `[offset, offset + len)` of the open `fid`.
    fn write_pattern(&mut self, fid: u32, offset: u64, len: u64) -> Result<(), String> {
        let mut data = vec![0u8; self.iounit() as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(data.len() as u64) as usize;
            fill_pattern(offset + done, &mut data[..n]);
            let frame = self.expect(
                &Tmsg::Write {
                    fid,
                    offset: offset + done,
                    data: wire::Data(&data[..n]),
                },
                "Twrite",
                |r| matches!(r, Rmsg::Write { count } if *count as usize <= n && *count > 0),
            )?;
            let (_, r) = decode(&frame)?;
            let Rmsg::Write { count } = r else {
                unreachable!("checked by expect")
            };
            done += count as u64;
        }
        Ok(())
    }

    /// Open `path` (names from the attach root) read-only on `fid`.
    pub fn open_path(&mut self, fid: u32, path: &[&str]) -> Result<(), String> {
        let names: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
        self.walk(ROOT_FID, fid, &names)?;
        self.expect(
            &Tmsg::Lopen {
                fid,
                flags: O_RDONLY,
            },
            "Tlopen",
            |r| matches!(r, Rmsg::Lopen { .. }),
        )
        .map(|_| ())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read_frame(s: &mut TcpStream) -> Arrival {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)
        .map_err(|e| format!("the connection ended: {e}"))?;
    let size = u32::from_le_bytes(head);
    if (size as usize) < wire::HEADER_LEN || size > FRAME_MAX {
        return Err(format!("reply frame of size {size}"));
    }
    let mut frame = vec![0u8; size as usize];
    frame[..4].copy_from_slice(&head);
    s.read_exact(&mut frame[4..])
        .map_err(|e| format!("the connection ended mid-frame: {e}"))?;
    Ok((frame, Instant::now()))
}

fn decode(frame: &[u8]) -> Result<(u16, Rmsg<'_>), String> {
    wire::decode_reply(frame).map_err(|e| format!("bad reply from the server: {e}"))
}

fn unexpected(what: &str, r: &Rmsg<'_>) -> String {
    format!(
        "{what}: unexpected reply {}",
        wire::type_name(r.type_code())
    )
}

/// One worker's place in its current iteration.
struct Worker {
    tag: u16,
    /// Long-lived fid (an open file, or the getattr target).
    fid: u32,
    /// Scratch fid (walk, create).
    scratch: u32,
    /// Iteration number, step within it, and its start.
    iter: u64,
    step: u32,
    started: Option<Instant>,
    /// Read/write progress within the iteration.
    done: u64,
    /// The iteration hit `Rlerror`: finish its cleanup, then count it.
    failed: Option<u32>,
    name: String,
    /// This iteration unlinks by walk + `Tremove`.
    via_remove: bool,
}

/// What an op's files are.
struct OpSetup {
    /// The op's directory fid.
    dir: u32,
    /// Bytes of the read file or write region.
    span: u64,
    /// Names left for `unlink`.
    victims: Vec<String>,
    /// The server answered `Tunlinkat` with EOPNOTSUPP (diod 1.0.24):
    /// unlink as Linux then does, walk to the name and `Tremove`.
    unlink_by_remove: bool,
}

/// Run every configured op; one report per op, in order.
pub fn run(cfg: &Config) -> Result<Vec<OpReport>, String> {
    run_with(cfg, &mut |_| {})
}

/// [`run`], calling `each` with every report as soon as its op ends.
pub fn run_with(cfg: &Config, each: &mut dyn FnMut(&OpReport)) -> Result<Vec<OpReport>, String> {
    if cfg.outstanding == 0 || cfg.outstanding > 1024 {
        return Err(format!(
            "outstanding {} is not in 1..=1024",
            cfg.outstanding
        ));
    }
    let mut c = Client::connect(&cfg.server, cfg.msize, &cfg.uname, &cfg.aname, cfg.uid)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let run_dir = cfg
        .run_dir
        .clone()
        .unwrap_or_else(|| format!("p9load-{}-{nanos}", std::process::id()));
    c.mkdir(ROOT_FID, &run_dir)?;
    c.walk(ROOT_FID, RUN_FID, &[run_dir.as_bytes()])?;
    let mut reports = Vec::new();
    // Names `create` made, for `unlink` to remove.
    let mut created: Vec<String> = Vec::new();
    for (i, &op) in cfg.ops.iter().enumerate() {
        let dir_fid = 2 + i as u32;
        let dname = format!("{}-{i}", op.name());
        let mut setup = OpSetup {
            dir: dir_fid,
            span: 0,
            victims: Vec::new(),
            unlink_by_remove: cfg.unlink_by_remove,
        };
        if op == Op::Unlink && !created.is_empty() {
            // Unlink in the directory the creates went to.
            let cdir = cfg
                .ops
                .iter()
                .position(|&o| o == Op::Create)
                .expect("created implies a create op");
            c.walk(
                RUN_FID,
                dir_fid,
                &[format!("{}-{cdir}", Op::Create.name()).as_bytes()],
            )?;
            setup.victims = std::mem::take(&mut created);
        } else {
            c.mkdir(RUN_FID, &dname)?;
            c.walk(RUN_FID, dir_fid, &[dname.as_bytes()])?;
            prepare(&mut c, cfg, op, &mut setup)?;
        }
        let report = load(&mut c, cfg, op, &mut setup, &mut created)?;
        each(&report);
        reports.push(report);
        c.clunk(dir_fid)?;
    }
    c.clunk(RUN_FID)?;
    c.clunk(ROOT_FID)?;
    Ok(reports)
}

/// The op's untimed setup in its directory `setup.dir`.
fn prepare(c: &mut Client, cfg: &Config, op: Op, setup: &mut OpSetup) -> Result<(), String> {
    let tmp = WORKER_FID_BASE - 1;
    match op {
        Op::Getattr | Op::Walk => {
            for k in 0..LOOKUP_FILES {
                c.open(setup.dir, tmp, &format!("f{k}"), O_RDWR, true)?;
                c.clunk(tmp)?;
            }
        }
        Op::Create => {}
        Op::Unlink => {
            // Nothing created earlier: make the files now, untimed.
            let n = match cfg.budget {
                Budget::Count(n) => n,
                Budget::Seconds(s) => {
                    let deadline = Instant::now() + Duration::from_secs_f64(s);
                    let mut k = 0;
                    while Instant::now() < deadline {
                        c.open(setup.dir, tmp, &format!("u{k}"), O_RDWR, true)?;
                        c.clunk(tmp)?;
                        setup.victims.push(format!("u{k}"));
                        k += 1;
                    }
                    return Ok(());
                }
            };
            for k in 0..n {
                c.open(setup.dir, tmp, &format!("u{k}"), O_RDWR, true)?;
                c.clunk(tmp)?;
                setup.victims.push(format!("u{k}"));
            }
        }
        Op::Read(size) => {
            setup.span = size as u64 * FILE_SPAN_OPS;
            c.open(setup.dir, tmp, "data", O_WRONLY, true)?;
            c.write_pattern(tmp, 0, setup.span)?;
            c.clunk(tmp)?;
        }
        Op::Write(size) => {
            setup.span = size as u64 * FILE_SPAN_OPS;
            c.open(setup.dir, tmp, "data", O_WRONLY, true)?;
            c.clunk(tmp)?;
        }
    }
    Ok(())
}

/// Open each worker's long-lived fid for `op`.
fn open_worker(c: &mut Client, op: Op, dir: u32, w: &Worker) -> Result<(), String> {
    match op {
        Op::Getattr => c.walk(
            dir,
            w.fid,
            &[format!("f{}", w.tag as u64 % LOOKUP_FILES).as_bytes()],
        ),
        Op::Read(_) => c.open(dir, w.fid, "data", O_RDONLY, false),
        Op::Write(_) => c.open(dir, w.fid, "data", O_WRONLY, false),
        Op::Walk | Op::Create | Op::Unlink => Ok(()),
    }
}

fn load(
    c: &mut Client,
    cfg: &Config,
    op: Op,
    setup: &mut OpSetup,
    created: &mut Vec<String>,
) -> Result<OpReport, String> {
    let mut workers: Vec<Worker> = (0..cfg.outstanding)
        .map(|w| Worker {
            tag: w as u16,
            fid: WORKER_FID_BASE + 2 * w as u32,
            scratch: WORKER_FID_BASE + 2 * w as u32 + 1,
            iter: 0,
            step: 0,
            started: None,
            done: 0,
            failed: None,
            name: String::new(),
            via_remove: false,
        })
        .collect();
    for w in &workers {
        open_worker(c, op, setup.dir, w)?;
    }
    let iounit = c.iounit() as u64;
    let mut data = vec![0u8; iounit as usize];
    let mut lat: Vec<u64> = Vec::new();
    let (mut ok, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let mut first_errno = None;
    let mut next_iter = 0u64;
    let mut in_flight = 0usize;
    let t0 = Instant::now();
    let deadline = match cfg.budget {
        Budget::Seconds(s) => Some(t0 + Duration::from_secs_f64(s)),
        Budget::Count(_) => None,
    };
    // Names in unlink order: from the end of the list.
    setup.victims.reverse();
    let may_start = |next_iter: u64, setup: &OpSetup| {
        let budget = match (cfg.budget, deadline) {
            (Budget::Count(n), _) => next_iter < n,
            (_, Some(d)) => Instant::now() < d,
            _ => false,
        };
        budget && (op != Op::Unlink || !setup.victims.is_empty())
    };
    // Start every worker.
    for w in workers.iter_mut() {
        if !may_start(next_iter, setup) {
            break;
        }
        begin(w, next_iter, op, setup);
        next_iter += 1;
        send_step(c, op, w, setup, iounit, &mut data)?;
        in_flight += 1;
    }
    while in_flight > 0 {
        let (frame, at) = c.recv()?;
        if frame.len() > c.msize as usize {
            return Err(format!(
                "reply of {} bytes over msize {}",
                frame.len(),
                c.msize
            ));
        }
        let (tag, r) = decode(&frame)?;
        let Some(w) = workers
            .get_mut(tag as usize)
            .filter(|w| w.started.is_some())
        else {
            return Err(format!("reply with tag {tag}, which no request has"));
        };
        in_flight -= 1;
        match advance(op, w, &r, setup, iounit)? {
            Advance::More => {
                send_step(c, op, w, setup, iounit, &mut data)?;
                in_flight += 1;
                continue;
            }
            Advance::Done => {
                let start = w.started.take().expect("in an iteration");
                if let Some(e) = w.failed.take() {
                    errors += 1;
                    first_errno.get_or_insert(e);
                } else {
                    ok += 1;
                    bytes += op.bytes_per_iter();
                    lat.push(at.duration_since(start).as_micros() as u64);
                    if op == Op::Create {
                        created.push(std::mem::take(&mut w.name));
                    }
                }
            }
        }
        if may_start(next_iter, setup) {
            begin(w, next_iter, op, setup);
            next_iter += 1;
            send_step(c, op, w, setup, iounit, &mut data)?;
            in_flight += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for w in &workers {
        if matches!(op, Op::Getattr | Op::Read(_) | Op::Write(_)) {
            c.clunk(w.fid)?;
        }
    }
    lat.sort_unstable();
    let pct = |p: usize| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) * p) / 100]
        }
    };
    Ok(OpReport {
        op,
        outstanding: cfg.outstanding,
        ops: ok,
        errors,
        first_errno,
        bytes,
        secs,
        p50_us: pct(50),
        p99_us: pct(99),
    })
}

fn begin(w: &mut Worker, iter: u64, op: Op, setup: &mut OpSetup) {
    w.iter = iter;
    w.step = 0;
    w.done = 0;
    w.failed = None;
    w.via_remove = setup.unlink_by_remove;
    w.started = Some(Instant::now());
    w.name = match op {
        Op::Create => format!("c{iter}"),
        Op::Unlink => setup.victims.pop().expect("checked by may_start"),
        _ => String::new(),
    };
}

/// The file offset iteration `iter` of a read or write starts at.
fn iter_offset(iter: u64, size: u32, span: u64) -> u64 {
    (iter * size as u64) % span
}

fn send_step(
    c: &mut Client,
    op: Op,
    w: &Worker,
    setup: &OpSetup,
    iounit: u64,
    data: &mut [u8],
) -> Result<(), String> {
    let tag = w.tag;
    let dir = setup.dir;
    match (op, w.step) {
        (Op::Getattr, _) => c.send(
            tag,
            &Tmsg::Getattr {
                fid: w.fid,
                request_mask: GetattrMask(0x3fff),
            },
        ),
        (Op::Walk, 0) => {
            let name = format!("f{}", w.iter % LOOKUP_FILES);
            c.send(
                tag,
                &Tmsg::Walk {
                    fid: dir,
                    newfid: w.scratch,
                    wnames: vec![name.as_bytes()],
                },
            )
        }
        (Op::Create, 0) => c.send(
            tag,
            &Tmsg::Walk {
                fid: dir,
                newfid: w.scratch,
                wnames: Vec::new(),
            },
        ),
        (Op::Create, 1) => c.send(
            tag,
            &Tmsg::Lcreate {
                fid: w.scratch,
                name: w.name.as_bytes(),
                flags: O_RDWR | O_CREAT | O_EXCL,
                mode: 0o644,
                gid: 0,
            },
        ),
        (Op::Walk | Op::Create, _) => c.send(tag, &Tmsg::Clunk { fid: w.scratch }),
        (Op::Unlink, 0) if w.via_remove => c.send(
            tag,
            &Tmsg::Walk {
                fid: dir,
                newfid: w.scratch,
                wnames: vec![w.name.as_bytes()],
            },
        ),
        (Op::Unlink, _) if w.via_remove => c.send(tag, &Tmsg::Remove { fid: w.scratch }),
        (Op::Unlink, _) => c.send(
            tag,
            &Tmsg::Unlinkat {
                dirfd: dir,
                name: w.name.as_bytes(),
                flags: 0,
            },
        ),
        (Op::Read(size), _) => {
            let offset = iter_offset(w.iter, size, setup.span) + w.done;
            let count = (size as u64 - w.done).min(iounit) as u32;
            c.send(
                tag,
                &Tmsg::Read {
                    fid: w.fid,
                    offset,
                    count,
                },
            )
        }
        (Op::Write(size), _) => {
            let offset = iter_offset(w.iter, size, setup.span) + w.done;
            let n = (size as u64 - w.done).min(iounit) as usize;
            fill_pattern(offset, &mut data[..n]);
            c.send(
                tag,
                &Tmsg::Write {
                    fid: w.fid,
                    offset,
                    data: wire::Data(&data[..n]),
                },
            )
        }
    }
}

enum Advance {
    More,
    Done,
}

/// Take a reply for worker `w`'s current step.
fn advance(
    op: Op,
    w: &mut Worker,
    r: &Rmsg<'_>,
    setup: &mut OpSetup,
    iounit: u64,
) -> Result<Advance, String> {
    let bad = |step: u32| {
        Err(format!(
            "{} step {step}: unexpected reply {}",
            op.name(),
            wire::type_name(r.type_code())
        ))
    };
    if let Rmsg::Lerror { ecode } = r {
        if op == Op::Unlink && !w.via_remove && *ecode == EOPNOTSUPP {
            // Same iteration again, the other way.
            setup.unlink_by_remove = true;
            w.via_remove = true;
            w.step = 0;
            return Ok(Advance::More);
        }
        w.failed.get_or_insert(*ecode);
        // A create whose Tlcreate failed still holds its walked fid.
        if op == Op::Create && w.step == 1 {
            w.step = 2;
            return Ok(Advance::More);
        }
        return Ok(Advance::Done);
    }
    let step = w.step;
    w.step += 1;
    match (op, step, r) {
        (Op::Getattr, _, Rmsg::Getattr { .. }) => Ok(Advance::Done),
        (Op::Walk, 0, Rmsg::Walk { qids }) if qids.len() == 1 => Ok(Advance::More),
        (Op::Walk, 0, Rmsg::Walk { .. }) => {
            // A partial walk binds no fid: the name is missing.
            w.failed.get_or_insert(2);
            Ok(Advance::Done)
        }
        (Op::Create, 0, Rmsg::Walk { qids }) if qids.is_empty() => Ok(Advance::More),
        (Op::Create, 1, Rmsg::Lcreate { .. }) => Ok(Advance::More),
        (Op::Walk, 1, Rmsg::Clunk {}) | (Op::Create, 2, Rmsg::Clunk {}) => Ok(Advance::Done),
        (Op::Unlink, 0, Rmsg::Walk { qids }) if w.via_remove => {
            if qids.len() == 1 {
                Ok(Advance::More)
            } else {
                w.failed.get_or_insert(2);
                Ok(Advance::Done)
            }
        }
        (Op::Unlink, 1, Rmsg::Remove {}) if w.via_remove => Ok(Advance::Done),
        (Op::Unlink, _, Rmsg::Unlinkat {}) => Ok(Advance::Done),
        (Op::Read(size), _, Rmsg::Read { data }) => {
            let offset = iter_offset(w.iter, size, setup.span) + w.done;
            let asked = (size as u64 - w.done).min(iounit);
            if data.is_empty() || data.len() as u64 > asked {
                return Err(format!(
                    "{}: Rread of {} bytes for {asked} asked at offset {offset} of a {}-byte file",
                    op.name(),
                    data.len(),
                    setup.span
                ));
            }
            if let Some(i) = data
                .iter()
                .enumerate()
                .position(|(i, &b)| b != pattern_byte(offset + i as u64))
            {
                return Err(format!(
                    "{}: read data differs from what was written at file offset {}",
                    op.name(),
                    offset + i as u64
                ));
            }
            w.done += data.len() as u64;
            Ok(if w.done < size as u64 {
                Advance::More
            } else {
                Advance::Done
            })
        }
        (Op::Write(size), _, Rmsg::Write { count }) => {
            let asked = (size as u64 - w.done).min(iounit);
            if *count == 0 || *count as u64 > asked {
                return Err(format!("{}: Rwrite of {count} for {asked}", op.name()));
            }
            w.done += *count as u64;
            Ok(if w.done < size as u64 {
                Advance::More
            } else {
                Advance::Done
            })
        }
        _ => bad(step),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::parse(&op.name()), Ok(op));
        }
        assert_eq!(
            parse_ops("getattr,read1m").unwrap(),
            vec![Op::Getattr, Op::Read(1 << 20)]
        );
        assert!(Op::parse("read2k").is_err());
    }
}
