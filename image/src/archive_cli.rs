//! The archival subcommands of `scoutvm`, with the reference tool's names
//! and flags: `stat`, `release`, `stage`, `data-waiting`,
//! `data-wait-err`, `walk-inodes`, `get-referring-entries`, `ino-path`, `setattr`,
//! `punch-offline`, `move-blocks`, `search-xattrs`, `read-xattr-totals`,
//! `read-xattr-index`. Each works on a path inside a mounted
//! volume (`scoutvm mount`) and speaks the mount's control xattrs
//! (`scoutvm_fs::posix::archive_ctl`, docs/archival.md) with
//! `getxattr(2)`/`setxattr(2)`: no ioctl numbers, nothing but a path.
//! With `--node ADDR:PORT` (and `--token` or `SCOUTVM_TOKEN`) the same
//! requests go to a running appliance's admin API (`scoutvm_net::api`)
//! and PATH names a file from the volume's root; the output is the same.
//!
//! A request is an [`Op`]; [`call`] carries it either way and hands back
//! the control channel's text answer (the API's JSON is turned into it),
//! so each subcommand is written once.

use clap::Args;
use scoutvm_fs::posix::archive::{dwo_parse, WalkEntry, WalkIndex};
use scoutvm_fs::posix::archive_ctl::{
    next_indx_entry, next_totals_name, parse_indx_entry, parse_named_record, parse_search_answer,
    search_name, totals_line, walk_name,
};
use scoutvm_fs::posix::mount::{IndxEntry, XattrTotal};
use scoutvm_fs::tools::mkfs::parse_size;
use scoutvm_image::api_client::{ApiClient, ApiError};
use scoutvm_net::api::json::{self, ObjWriter, Value};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::process::ExitCode;

/// Bytes of archived data per stage request (15 blocks: the request and
/// its header stay under the kernel's 64 KiB xattr value limit).
const STAGE_CHUNK: usize = 15 * 4096;
/// Bytes per stage request to a node (base64 in JSON stays under the
/// API's 260 KiB body).
const STAGE_CHUNK_NODE: usize = 32 * 4096;
/// Largest answer the control channel gives.
const ANSWER_MAX: usize = 64 << 10;
/// The environment variable with the API token.
pub const TOKEN_ENV: &str = "SCOUTVM_TOKEN";

/// Where the requests go: `--node` and its token.
#[derive(Args, Clone, Default)]
pub struct NodeArgs {
    /// Talk to a running appliance's admin API at ADDR:PORT instead of a
    /// mount (PATH is then from the volume's root)
    #[arg(long = "node", value_name = "ADDR:PORT")]
    node: Option<String>,
    /// The admin API's bearer token (default: $SCOUTVM_TOKEN)
    #[arg(long = "token", value_name = "TOKEN", requires = "node")]
    token: Option<String>,
}

/// A FUSE mount's control xattrs, or a node's admin API.
pub enum Target {
    Mount,
    Node(RefCell<ApiClient>),
}

impl Target {
    fn of(a: &NodeArgs) -> Result<Target, String> {
        let Some(addr) = &a.node else {
            return Ok(Target::Mount);
        };
        let token = match &a.token {
            Some(t) => t.clone(),
            None => std::env::var(TOKEN_ENV)
                .map_err(|_| format!("--node needs --token TOKEN or {TOKEN_ENV}"))?,
        };
        Ok(Target::Node(RefCell::new(ApiClient::new(addr, &token))))
    }

    fn is_node(&self) -> bool {
        matches!(self, Target::Node(_))
    }

    /// The path a request goes through: any path of the mount (required
    /// there), nothing for a node.
    fn any_path(&self, p: Option<String>) -> Result<String, String> {
        match (self, p) {
            (Target::Node(_), p) => Ok(p.unwrap_or_else(|| "/".into())),
            (Target::Mount, Some(p)) => Ok(p),
            (Target::Mount, None) => Err("a path in a mounted volume is needed (-p PATH)".into()),
        }
    }
}

/// One archival request, whichever way it goes.
pub enum Op<'a> {
    Stat,
    Release {
        vers: u64,
        off: u64,
        len: u64,
    },
    Stage {
        vers: u64,
        off: u64,
        data: &'a [u8],
    },
    DataWaiting {
        ino: u64,
        iblock: u64,
    },
    DataWaitErr {
        ino: u64,
        vers: u64,
        off: u64,
        count: u64,
        ops: u8,
        err: i64,
    },
    Walk {
        index: WalkIndex,
        first: WalkEntry,
        last: WalkEntry,
    },
    Setattr {
        vers: Option<u64>,
        size: Option<u64>,
        offline: bool,
        ctime: Option<String>,
        crtime: Option<String>,
    },
    PunchOffline {
        vers: u64,
        off: u64,
        len: u64,
    },
    /// Asked of the target file; the source by inode on a mount, by path
    /// on a node.
    MoveBlocks {
        from_ino: u64,
        from_path: &'a str,
        from_off: u64,
        len: u64,
        to_off: u64,
        vers: u64,
        stage: bool,
    },
    Referring {
        ino: u64,
        dir: u64,
        pos: u64,
    },
    InoPath {
        ino: u64,
        dir: u64,
        pos: u64,
    },
    Search {
        name: &'a str,
        first: u64,
        last: u64,
    },
    Totals {
        from: [u64; 3],
    },
    Index {
        first: IndxEntry,
        last: IndxEntry,
    },
}

/// Why a request failed.
pub enum CallErr {
    /// The mount's errno.
    Os(rustix::io::Errno),
    Api(ApiError),
}

impl Op<'_> {
    /// The control xattr: its name and, for a set, its value.
    fn ctl(&self) -> (String, Option<Vec<u8>>) {
        let set = |n: &str, v: String| (format!("scoutvm.ctl.{n}"), Some(v.into_bytes()));
        match self {
            Op::Stat => ("scoutvm.ctl.stat".into(), None),
            Op::Release { vers, off, len } => set("release", format!("{vers} {off} {len}")),
            Op::Stage { vers, off, data } => {
                let mut v = format!("{vers} {off}\n").into_bytes();
                v.extend_from_slice(data);
                ("scoutvm.ctl.stage".into(), Some(v))
            }
            Op::DataWaiting { ino, iblock } => {
                (format!("scoutvm.ctl.data_waiting.{ino}.{iblock}"), None)
            }
            Op::DataWaitErr {
                ino,
                vers,
                off,
                count,
                ops,
                err,
            } => set(
                "data_wait_err",
                format!("{ino} {vers} {off} {count} {ops} {err}"),
            ),
            Op::Walk { index, first, last } => (walk_name(*index, *first, *last), None),
            Op::Setattr {
                vers,
                size,
                offline,
                ctime,
                crtime,
            } => {
                let f = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                set(
                    "setattr",
                    format!(
                        "{} {} {} {} {}",
                        f(vers.map(|v| v.to_string())),
                        f(size.map(|v| v.to_string())),
                        u8::from(*offline),
                        f(ctime.clone()),
                        f(crtime.clone())
                    ),
                )
            }
            Op::PunchOffline { vers, off, len } => {
                set("punch_offline", format!("{vers} {off} {len}"))
            }
            Op::MoveBlocks {
                from_ino,
                from_off,
                len,
                to_off,
                vers,
                stage,
                ..
            } => set(
                "move_blocks",
                format!(
                    "{from_ino} {from_off} {len} {to_off} {vers} {}",
                    u8::from(*stage)
                ),
            ),
            Op::Referring { ino, dir, pos } => {
                (format!("scoutvm.ctl.referring.{ino}.{dir}.{pos}"), None)
            }
            Op::InoPath { ino, dir, pos } => {
                (format!("scoutvm.ctl.ino_path.{ino}.{dir}.{pos}"), None)
            }
            Op::Search { name, first, last } => (search_name(*first, *last, name), None),
            Op::Totals { from: [a, b, c] } => (format!("scoutvm.ctl.totals.{a}.{b}.{c}"), None),
            Op::Index { first: f, last: l } => (
                format!(
                    "scoutvm.ctl.indx.{}.{}.{}.{}.{}.{}",
                    f.major, f.minor, f.ino, l.major, l.minor, l.ino
                ),
                None,
            ),
        }
    }

    /// The API endpoint and JSON body; `path` names the file.
    fn api(&self, path: &str) -> (&'static str, String) {
        let mut w = ObjWriter::new();
        let op = match self {
            Op::Stat => {
                w.str("path", path);
                "stat"
            }
            Op::Release { vers, off, len } => {
                w.str("path", path)
                    .u64("data_version", *vers)
                    .u64("offset", *off)
                    .u64("length", *len);
                "release"
            }
            Op::Stage { vers, off, data } => {
                w.str("path", path)
                    .u64("data_version", *vers)
                    .u64("offset", *off)
                    .str("data", &json::base64_encode(data));
                "stage"
            }
            Op::DataWaiting { ino, iblock } => {
                w.u64("after_ino", *ino).u64("after_iblock", *iblock);
                "data-waiting"
            }
            Op::DataWaitErr {
                ino,
                vers,
                off,
                count,
                ops,
                err,
            } => {
                w.u64("ino", *ino)
                    .u64("data_version", *vers)
                    .u64("offset", *off)
                    .u64("count", *count)
                    .u64("ops", u64::from(*ops))
                    .i64("err", *err);
                "data-wait-err"
            }
            Op::Walk { index, first, last } => {
                w.str("index", index.name())
                    .u64("first", first.major)
                    .u64("first_ino", first.ino)
                    .u64("last", last.major)
                    .u64("last_ino", last.ino);
                "walk-inodes"
            }
            Op::Setattr {
                vers,
                size,
                offline,
                ctime,
                crtime,
            } => {
                w.str("path", path);
                if let Some(v) = vers {
                    w.u64("data_version", *v);
                }
                if let Some(v) = size {
                    w.u64("size", *v);
                }
                w.raw("offline", if *offline { "true" } else { "false" });
                if let Some(t) = ctime {
                    w.str("ctime", t);
                }
                if let Some(t) = crtime {
                    w.str("crtime", t);
                }
                "setattr"
            }
            Op::PunchOffline { vers, off, len } => {
                w.str("path", path)
                    .u64("data_version", *vers)
                    .u64("offset", *off)
                    .u64("length", *len);
                "punch-offline"
            }
            Op::MoveBlocks {
                from_path,
                from_off,
                len,
                to_off,
                vers,
                stage,
                ..
            } => {
                w.str("path", path)
                    .str("from_path", from_path)
                    .u64("from_offset", *from_off)
                    .u64("length", *len)
                    .u64("to_offset", *to_off)
                    .u64("data_version", *vers)
                    .raw("stage", if *stage { "true" } else { "false" });
                "move-blocks"
            }
            Op::Referring { ino, dir, pos } => {
                w.u64("ino", *ino).u64("dir", *dir).u64("pos", *pos);
                "get-referring-entries"
            }
            Op::InoPath { ino, dir, pos } => {
                w.u64("ino", *ino).u64("dir", *dir).u64("pos", *pos);
                "ino-path"
            }
            Op::Search { name, first, last } => {
                w.str("name", name)
                    .u64("first_ino", *first)
                    .u64("last_ino", *last);
                "search-xattrs"
            }
            Op::Totals { from: [a, b, c] } => {
                w.raw("from", &format!("[{a},{b},{c}]"));
                "read-xattr-totals"
            }
            Op::Index { first, last } => {
                w.u64("first_major", u64::from(first.major))
                    .u64("first_minor", first.minor)
                    .u64("first_ino", first.ino)
                    .u64("last_major", u64::from(last.major))
                    .u64("last_minor", last.minor)
                    .u64("last_ino", last.ino);
                "read-xattr-index"
            }
        };
        (op, w.finish())
    }

    /// The API's answer as the control channel's text answer.
    fn text(&self, v: &Value) -> Result<Vec<u8>, String> {
        let bad = || "malformed answer from the node".to_string();
        let num = |x: &Value, k: &str| x.get(k).and_then(Value::as_u64).ok_or_else(bad);
        let list = |k: &str| v.get(k).and_then(Value::as_array).ok_or_else(bad);
        let mut out = String::new();
        match self {
            Op::Stat => {
                for f in STAT_FIELDS {
                    let val = match v.get(f) {
                        Some(Value::Str(s)) => s.clone(),
                        Some(x) => x.as_u64().ok_or_else(bad)?.to_string(),
                        None => return Err(bad()),
                    };
                    let _ = writeln!(out, "{f} {val}");
                }
            }
            Op::DataWaiting { .. } => {
                for e in list("entries")? {
                    let ops = e.get("ops").and_then(Value::as_str).ok_or_else(bad)?;
                    let _ = writeln!(
                        out,
                        "ino {} iblock {} ops {ops}",
                        num(e, "ino")?,
                        num(e, "iblock")?
                    );
                }
            }
            Op::Search { .. } => {
                let _ = writeln!(out, "last {}", num(v, "last_ino")?);
                for i in list("inos")? {
                    let _ = writeln!(out, "{}", i.as_u64().ok_or_else(bad)?);
                }
            }
            Op::Totals { .. } => {
                for e in list("entries")? {
                    let name = match e.get("name").and_then(Value::as_array) {
                        Some([a, b, c]) => [a, b, c].map(Value::as_u64),
                        _ => return Err(bad()),
                    };
                    let [Some(a), Some(b), Some(c)] = name else {
                        return Err(bad());
                    };
                    let signed = |k: &str| e.get(k).and_then(Value::as_i64).ok_or_else(bad);
                    let t = XattrTotal {
                        name: [a, b, c],
                        total: signed("total")?,
                        count: signed("count")?,
                    };
                    let _ = writeln!(out, "{}", totals_line(&t));
                }
            }
            Op::Walk { .. } | Op::Index { .. } => {
                for e in list("entries")? {
                    let _ = writeln!(
                        out,
                        "{} {} {}",
                        num(e, "major")?,
                        num(e, "minor")?,
                        num(e, "ino")?
                    );
                }
            }
            Op::Referring { .. } | Op::InoPath { .. } => {
                let (key, name, with_ino) = match self {
                    Op::Referring { .. } => ("entries", "name", true),
                    _ => ("paths", "path", false),
                };
                let mut bytes = Vec::new();
                for e in list(key)? {
                    let n = json::bytes_of(e, name).ok_or_else(bad)?;
                    let mut head = format!("{} {} ", num(e, "dir")?, num(e, "pos")?);
                    if with_ino {
                        let _ = write!(head, "{} {} ", num(e, "ino")?, num(e, "type")?);
                    }
                    let _ = write!(head, "{} ", n.len());
                    bytes.extend_from_slice(head.as_bytes());
                    bytes.extend_from_slice(&n);
                    bytes.push(b'\n');
                }
                return Ok(bytes);
            }
            _ => {}
        }
        Ok(out.into_bytes())
    }
}

/// Carry `op` on the file `path` to its target: the text answer (empty
/// for a change).
pub fn call(t: &Target, path: &str, op: &Op) -> Result<Vec<u8>, CallErr> {
    match t {
        Target::Mount => {
            let (name, value) = op.ctl();
            match value {
                None => ctl_get_raw(path, &name).map_err(CallErr::Os),
                Some(v) => ctl_set(path, &name, &v)
                    .map(|()| Vec::new())
                    .map_err(CallErr::Os),
            }
        }
        Target::Node(c) => {
            let (endpoint, body) = op.api(path);
            let v = c.borrow_mut().call(endpoint, &body).map_err(CallErr::Api)?;
            op.text(&v).map_err(|e| CallErr::Api(ApiError::Io(e)))
        }
    }
}

fn call_err(what: &str, e: CallErr) -> ExitCode {
    match e {
        CallErr::Os(e) => os_err(what, e),
        CallErr::Api(e) => {
            eprintln!("scoutvm: {what} failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// [`call`] with a text answer.
fn call_text(t: &Target, path: &str, op: &Op) -> Result<String, CallErr> {
    call(t, path, op).map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[derive(Args)]
pub struct StatArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Print only this field's value
    #[arg(short = 's', long = "single-field", value_name = "FIELD")]
    single_field: Option<String>,
    /// A file in a mounted volume
    path: String,
}

#[derive(Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A file in a mounted volume
    path: String,
    /// The data_version the file was archived at
    #[arg(short = 'V', long = "data-version", value_name = "VERS")]
    data_version: u64,
    /// Byte offset (4 KiB aligned; K/M/G/T suffixes, 0x hex)
    #[arg(short = 'o', long = "offset", value_name = "OFFSET", value_parser = size)]
    offset: u64,
    /// Byte length (4 KiB multiple)
    #[arg(short = 'l', long = "length", value_name = "LENGTH", value_parser = size)]
    length: u64,
}

#[derive(Args)]
pub struct StageArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The archived copy, read from its start
    archive: String,
    /// A file in a mounted volume
    path: String,
    /// The data_version the file was archived at
    #[arg(short = 'V', long = "data-version", value_name = "VERS")]
    data_version: u64,
    /// Byte offset in the file (4 KiB aligned)
    #[arg(short = 'o', long = "offset", value_name = "OFFSET", value_parser = size)]
    offset: u64,
    /// Bytes to stage
    #[arg(short = 'l', long = "length", value_name = "LENGTH", value_parser = size)]
    length: u64,
}

#[derive(Args)]
pub struct DataWaitingArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// List after this inode ...
    #[arg(short = 'I', long = "inode", value_name = "INO", default_value_t = 0)]
    inode: u64,
    /// ... and this block
    #[arg(short = 'B', long = "block", value_name = "BLOCK", default_value_t = 0)]
    block: u64,
    /// A path in a mounted volume (not with --node)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
}

#[derive(Args)]
pub struct DataWaitErrArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (not with --node)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// The inode whose waiters fail
    #[arg(short = 'I', long = "inode", value_name = "INO")]
    inode: u64,
    /// Its data_version
    #[arg(short = 'V', long = "data-version", value_name = "VERS")]
    data_version: u64,
    /// First byte of the range
    #[arg(short = 'F', long = "offset", value_name = "OFFSET", value_parser = size)]
    offset: u64,
    /// Bytes in the range
    #[arg(short = 'C', long = "count", value_name = "COUNT", value_parser = size)]
    count: u64,
    /// Operations to fail: read, write, change_size (comma-separated)
    #[arg(short = 'O', long = "op", value_name = "OP")]
    op: String,
    /// The negative errno they get (e.g. -5)
    #[arg(
        short = 'E',
        long = "err",
        value_name = "ERR",
        allow_hyphen_values = true
    )]
    err: i64,
}

#[derive(Args)]
pub struct WalkArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (or give it last)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// meta_seq or data_seq
    index: String,
    /// First major (seq) to return
    #[arg(allow_hyphen_values = true)]
    first: String,
    /// Last major (seq) to return; -1: no limit (the walk stops at the
    /// stable seq)
    #[arg(allow_hyphen_values = true)]
    last: String,
    /// A path in a mounted volume
    trailing_path: Option<String>,
}

#[derive(Args)]
pub struct SetattrArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The data_version to set (non-zero; the file's must be 0)
    #[arg(short = 'V', long = "data-version", value_name = "VERS")]
    data_version: Option<u64>,
    /// The size to set (the file must be empty)
    #[arg(short = 's', long = "size", value_name = "SIZE", value_parser = size)]
    size: Option<u64>,
    /// Make the whole size one offline extent (needs -s)
    #[arg(short = 'o', long = "offline")]
    offline: bool,
    /// ctime, SEC.NSEC
    #[arg(short = 't', long = "ctime", value_name = "SEC.NSEC", value_parser = time)]
    ctime: Option<String>,
    /// crtime, SEC.NSEC
    #[arg(short = 'r', long = "crtime", value_name = "SEC.NSEC", value_parser = time)]
    crtime: Option<String>,
    /// A new, empty regular file in a mounted volume
    path: String,
}

#[derive(Args)]
pub struct PunchOfflineArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A file in a mounted volume
    path: String,
    /// The file's data_version
    #[arg(short = 'V', long = "data-version", value_name = "VERS")]
    data_version: u64,
    /// Byte offset (4 KiB aligned)
    #[arg(short = 'o', long = "offset", value_name = "OFFSET", value_parser = size)]
    offset: u64,
    /// Byte length (4 KiB multiple, not 0)
    #[arg(short = 'l', long = "length", value_name = "LENGTH", value_parser = size)]
    length: u64,
}

/// The reference's `move-blocks FROM_FILE --from-offset OFFSET --length
/// LENGTH TO_FILE --to-offset OFFSET`, plus `--stage -V VERS` (the
/// reference ioctl's STAGE flag, which its tool does not offer).
#[derive(Args)]
pub struct MoveBlocksArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The file whose extents move (a hole is left behind)
    from_path: String,
    /// Byte offset in the from file of the region to move (4 KiB aligned)
    #[arg(short = 'f', long = "from-offset", value_name = "OFFSET", value_parser = size)]
    from_offset: u64,
    /// Length in bytes of the region (a 4 KiB multiple, or ending at the
    /// from file's size)
    #[arg(short = 'l', long = "length", value_name = "LENGTH", value_parser = size)]
    length: u64,
    /// The file the extents move into
    to_path: String,
    /// Byte offset in the to file where the region goes (4 KiB aligned)
    #[arg(short = 't', long = "to-offset", value_name = "OFFSET", value_parser = size)]
    to_offset: u64,
    /// Move into offline extents of the to file (a stage that copies
    /// nothing; its data_version stays)
    #[arg(short = 's', long = "stage", requires = "data_version")]
    stage: bool,
    /// With --stage: the to file's data_version
    #[arg(
        short = 'V',
        long = "data-version",
        value_name = "VERS",
        requires = "stage"
    )]
    data_version: Option<u64>,
}

#[derive(Args)]
pub struct ReferringArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (default: the current directory)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// The inode number whose entries to print
    #[arg(value_name = "INODE-NUM", value_parser = size)]
    ino: u64,
}

#[derive(Args)]
pub struct TotalsArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (or give it last; default: the current
    /// directory)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// A path in a mounted volume
    trailing_path: Option<String>,
}

#[derive(Args)]
pub struct InoPathArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (or give it last; default: the current
    /// directory)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// The inode number whose paths to print
    #[arg(value_name = "INODE-NUM", value_parser = size)]
    ino: u64,
    /// A path in a mounted volume
    trailing_path: Option<String>,
}

fn time(s: &str) -> Result<String, String> {
    scoutvm_fs::posix::archive_ctl::timespec(Some(s))
        .map(|t| format!("{}.{:09}", t.sec, t.nsec))
        .map_err(|_| format!("bad time '{s}' (SEC.NSEC)"))
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn os_err(what: &str, e: rustix::io::Errno) -> ExitCode {
    let io = std::io::Error::from_raw_os_error(e.raw_os_error());
    eprintln!("scoutvm: {what} failed: {io}");
    ExitCode::from(1)
}

fn ctl_get_raw(path: &str, name: &str) -> Result<Vec<u8>, rustix::io::Errno> {
    let mut buf = vec![0u8; ANSWER_MAX];
    let n = rustix::fs::getxattr(path, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

fn ctl_set(path: &str, name: &str, value: &[u8]) -> Result<(), rustix::io::Errno> {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty())
}

const STAT_FIELDS: [&str; 7] = [
    "meta_seq",
    "data_seq",
    "data_version",
    "online_blocks",
    "offline_blocks",
    "crtime",
    "size",
];

pub fn cmd_stat(a: StatArgs) -> Result<ExitCode, String> {
    if let Some(f) = &a.single_field {
        if !STAT_FIELDS.contains(&f.as_str()) {
            return Err(format!(
                "unknown field '{f}' (one of {})",
                STAT_FIELDS.join(", ")
            ));
        }
    }
    let t = Target::of(&a.node)?;
    let ans = match call_text(&t, &a.path, &Op::Stat) {
        Ok(s) => s,
        Err(e) => return Ok(call_err("stat", e)),
    };
    for line in ans.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        match &a.single_field {
            Some(f) if f == k => println!("{v}"),
            Some(_) => {}
            None => println!("  {k}: {v}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Carry a change and say how it went.
fn change(t: &Target, path: &str, what: &str, op: &Op) -> ExitCode {
    match call(t, path, op) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => call_err(what, e),
    }
}

pub fn cmd_release(a: ReleaseArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let op = Op::Release {
        vers: a.data_version,
        off: a.offset,
        len: a.length,
    };
    Ok(change(&t, &a.path, "release", &op))
}

pub fn cmd_stage(a: StageArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let mut f = match std::fs::File::open(&a.archive) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("scoutvm: failed to open '{}': {e}", a.archive);
            return Ok(ExitCode::from(1));
        }
    };
    let step = if t.is_node() {
        STAGE_CHUNK_NODE
    } else {
        STAGE_CHUNK
    };
    let mut done = 0u64;
    let mut chunk = vec![0u8; step];
    while done < a.length {
        let n = (a.length - done).min(step as u64) as usize;
        if let Err(e) = f.read_exact(&mut chunk[..n]) {
            eprintln!("scoutvm: reading '{}' at {done}: {e}", a.archive);
            return Ok(ExitCode::from(1));
        }
        let off = a
            .offset
            .checked_add(done)
            .ok_or("offset + length overflows")?;
        let op = Op::Stage {
            vers: a.data_version,
            off,
            data: &chunk[..n],
        };
        if let Err(e) = call(&t, &a.path, &op) {
            return Ok(call_err("stage", e));
        }
        done += n as u64;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_data_waiting(a: DataWaitingArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let path = t.any_path(a.path)?;
    let (mut ino, mut iblock) = (a.inode, a.block);
    loop {
        let ans = match call_text(&t, &path, &Op::DataWaiting { ino, iblock }) {
            Ok(s) => s,
            Err(e) => return Ok(call_err("data-waiting", e)),
        };
        if ans.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for line in ans.lines() {
            println!("{line}");
            // "ino N iblock N ops X": the next cursor
            let w: Vec<&str> = line.split(' ').collect();
            match (
                w.get(1).and_then(|s| s.parse().ok()),
                w.get(3).and_then(|s| s.parse().ok()),
            ) {
                (Some(i), Some(b)) => (ino, iblock) = (i, b),
                _ => {
                    eprintln!("scoutvm: data-waiting: bad answer line '{line}'");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
}

pub fn cmd_data_wait_err(a: DataWaitErrArgs) -> Result<ExitCode, String> {
    let mut ops = 0u8;
    for name in a.op.split(',') {
        ops |= dwo_parse(name).ok_or(format!("unknown op '{name}' (read, write, change_size)"))?;
    }
    let t = Target::of(&a.node)?;
    let path = t.any_path(a.path)?;
    let op = Op::DataWaitErr {
        ino: a.inode,
        vers: a.data_version,
        off: a.offset,
        count: a.count,
        ops,
        err: a.err,
    };
    Ok(change(&t, &path, "data-wait-err", &op))
}

/// A walk bound: a u64, or -1 for the largest.
fn walk_bound(s: &str) -> Result<u64, String> {
    if s == "-1" {
        return Ok(u64::MAX);
    }
    parse_size(s)
}

pub fn cmd_walk_inodes(a: WalkArgs) -> Result<ExitCode, String> {
    let index = WalkIndex::parse(&a.index).ok_or(format!(
        "unknown index '{}' (meta_seq or data_seq)",
        a.index
    ))?;
    let t = Target::of(&a.node)?;
    let path = t.any_path(a.path.or(a.trailing_path))?;
    let mut first = WalkEntry {
        major: walk_bound(&a.first)?,
        minor: 0,
        ino: 0,
    };
    let last = WalkEntry {
        major: walk_bound(&a.last)?,
        ..WalkEntry::MAX
    };
    loop {
        let ans = match call_text(&t, &path, &Op::Walk { index, first, last }) {
            Ok(s) => s,
            Err(e) => return Ok(call_err("walk-inodes", e)),
        };
        if ans.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for line in ans.lines() {
            println!("{line}");
            let w: Vec<u64> = line.split(' ').filter_map(|s| s.parse().ok()).collect();
            let [major, _minor, ino] = w[..] else {
                eprintln!("scoutvm: walk-inodes: bad answer line '{line}'");
                return Ok(ExitCode::from(1));
            };
            first = match ino.checked_add(1) {
                Some(i) => WalkEntry {
                    major,
                    minor: 0,
                    ino: i,
                },
                None => match major.checked_add(1) {
                    Some(m) => WalkEntry {
                        major: m,
                        minor: 0,
                        ino: 0,
                    },
                    None => return Ok(ExitCode::SUCCESS),
                },
            };
        }
    }
}

/// Page through a names answer (`get-referring-entries` or `ino-path`),
/// handing each record to `each`: `(dir, pos, numbers, name)`.
fn names_pages(
    t: &Target,
    path: &str,
    what: &str,
    op: impl Fn(u64, u64) -> Op<'static>,
    numbers: usize,
    mut each: impl FnMut(u64, u64, &[u64], &[u8]) -> std::io::Result<()>,
) -> Result<ExitCode, String> {
    let (mut dir, mut pos) = (0u64, 0u64);
    loop {
        let ans = match call(t, path, &op(dir, pos)) {
            Ok(a) => a,
            Err(e) => return Ok(call_err(what, e)),
        };
        if ans.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        let mut rest = &ans[..];
        while !rest.is_empty() {
            let Some((r, tail)) = parse_named_record(rest, numbers) else {
                eprintln!("scoutvm: {what}: bad answer");
                return Ok(ExitCode::from(1));
            };
            rest = tail;
            let (d, p) = (r.dir, r.pos);
            if let Err(e) = each(d, p, &r.numbers, r.name) {
                return Err(format!("writing the output: {e}"));
            }
            (dir, pos) = match p.checked_add(1) {
                Some(p) => (d, p),
                None => match d.checked_add(1) {
                    Some(d) => (d, 0),
                    None => return Ok(ExitCode::SUCCESS),
                },
            };
        }
    }
}

/// `dir D pos P type T name NAME` a line, as the reference tool prints.
pub fn cmd_get_referring_entries(a: ReferringArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let path = a.path.unwrap_or_else(|| ".".into());
    let ino = a.ino;
    let mut out = std::io::stdout().lock();
    let op = |dir, pos| Op::Referring { ino, dir, pos };
    names_pages(
        &t,
        &path,
        "get-referring-entries",
        op,
        2,
        |d, p, nums, name| {
            write!(out, "dir {d} pos {p} type {} name ", nums[1])?;
            out.write_all(name)?;
            out.write_all(b"\n")
        },
    )
}

/// Every path to the inode, relative to the mount's root, a line each.
pub fn cmd_ino_path(a: InoPathArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let path = a.path.or(a.trailing_path).unwrap_or_else(|| ".".into());
    let ino = a.ino;
    let mut out = std::io::stdout().lock();
    let op = |dir, pos| Op::InoPath { ino, dir, pos };
    names_pages(&t, &path, "ino-path", op, 0, |_, _, _, name| {
        out.write_all(name)?;
        out.write_all(b"\n")
    })
}

pub fn cmd_setattr(a: SetattrArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let op = Op::Setattr {
        vers: a.data_version,
        size: a.size,
        offline: a.offline,
        ctime: a.ctime,
        crtime: a.crtime,
    };
    Ok(change(&t, &a.path, "setattr", &op))
}

pub fn cmd_punch_offline(a: PunchOfflineArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let op = Op::PunchOffline {
        vers: a.data_version,
        off: a.offset,
        len: a.length,
    };
    Ok(change(&t, &a.path, "punch-offline", &op))
}

pub fn cmd_move_blocks(a: MoveBlocksArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let from_ino = match t {
        Target::Node(_) => 0,
        Target::Mount => {
            // the control request names the source by inode: both files
            // must be on the one mount (EXDEV, as the reference)
            let stat = |p: &str| rustix::fs::stat(p).map_err(|e| os_err("move-blocks", e));
            let (from, to) = match (stat(&a.from_path), stat(&a.to_path)) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(code), _) | (_, Err(code)) => return Ok(code),
            };
            if from.st_dev != to.st_dev {
                return Ok(os_err("move-blocks", rustix::io::Errno::XDEV));
            }
            from.st_ino
        }
    };
    let op = Op::MoveBlocks {
        from_ino,
        from_path: &a.from_path,
        from_off: a.from_offset,
        len: a.length,
        to_off: a.to_offset,
        vers: a.data_version.unwrap_or(0),
        stage: a.stage,
    };
    Ok(change(&t, &a.to_path, "move-blocks", &op))
}

/// `A.B.C` of a totals answer line `A.B.C = TOTAL, COUNT`.
fn totals_name(line: &str) -> Option<[u64; 3]> {
    let (name, _) = line.split_once(" = ")?;
    let mut it = name.split('.').map(|s| s.parse::<u64>().ok());
    let n = [it.next()??, it.next()??, it.next()??];
    it.next().is_none().then_some(n)
}

#[derive(Args)]
pub struct IndexArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (default: the current directory)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// First position, MAJOR.MINOR.INO
    first: String,
    /// Last position, MAJOR.MINOR.INO
    last: String,
}

pub fn cmd_read_xattr_index(a: IndexArgs) -> Result<ExitCode, String> {
    let pos = |s: &str| parse_indx_entry(s).ok_or(format!("bad position '{s}' (MAJOR.MINOR.INO)"));
    let mut first = pos(&a.first)?;
    let last = pos(&a.last)?;
    if first > last {
        return Err(format!(
            "first position {} is past the last {}",
            a.first, a.last
        ));
    }
    let t = Target::of(&a.node)?;
    let path = a.path.unwrap_or_else(|| ".".into());
    loop {
        let ans = match call_text(&t, &path, &Op::Index { first, last }) {
            Ok(s) => s,
            Err(e) => return Ok(call_err("read-xattr-index", e)),
        };
        let mut end = None;
        for line in ans.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let e = (f.len() == 3)
                .then(|| parse_indx_entry(&f.join(".")))
                .flatten();
            let Some(e) = e else {
                eprintln!("scoutvm: read-xattr-index: bad answer line '{line}'");
                return Ok(ExitCode::from(1));
            };
            println!("{}.{}.{}", e.major, e.minor, e.ino);
            end = Some(e);
        }
        match end.and_then(next_indx_entry) {
            Some(n) if n <= last => first = n,
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}

pub fn cmd_read_xattr_totals(a: TotalsArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let path = a.path.or(a.trailing_path).unwrap_or_else(|| ".".into());
    let mut from = [0u64; 3];
    loop {
        let ans = match call_text(&t, &path, &Op::Totals { from }) {
            Ok(s) => s,
            Err(e) => return Ok(call_err("read-xattr-totals", e)),
        };
        if ans.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for line in ans.lines() {
            println!("{line}");
            let Some(n) = totals_name(line) else {
                eprintln!("scoutvm: read-xattr-totals: bad answer line '{line}'");
                return Ok(ExitCode::from(1));
            };
            match next_totals_name(n) {
                Some(next) => from = next,
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    }
}

#[derive(Args)]
pub struct SearchXattrsArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A path in a mounted volume (not with --node)
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    path: Option<String>,
    /// The full `.srch.`-tagged xattr name (e.g. scoutfs.srch.tape)
    #[arg(value_name = "XATTR-NAME")]
    name: String,
}

/// `search-xattrs`: print, one a line, the inode numbers of the files
/// that have the `.srch.` xattr (the mount checks every candidate).
pub fn cmd_search_xattrs(a: SearchXattrsArgs) -> Result<ExitCode, String> {
    let t = Target::of(&a.node)?;
    let path = t.any_path(a.path)?;
    let mut from = 0u64;
    loop {
        let op = Op::Search {
            name: &a.name,
            first: from,
            last: u64::MAX,
        };
        let ans = match call_text(&t, &path, &op) {
            Ok(s) => s,
            Err(e) => return Ok(call_err("search-xattrs", e)),
        };
        let Some((last, inos)) = parse_search_answer(&ans) else {
            eprintln!("scoutvm: search-xattrs: bad answer '{ans}'");
            return Ok(ExitCode::from(1));
        };
        for ino in inos {
            println!("{ino}");
        }
        // a capped answer covers less: go on after it
        match last.checked_add(1) {
            Some(n) if n > from => from = n,
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}
