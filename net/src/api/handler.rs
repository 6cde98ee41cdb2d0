//! The admin API's requests: check the bearer token, route
//! `POST /v1/OPERATION`, read the JSON fields, call the [`Mount`], answer
//! JSON. Every archival operation of docs/archival.md has an endpoint
//! named like the CLI subcommand; a file is named by `"path"` (from the
//! volume's root) or `"ino"`. Errors are a status and
//! `{"error":REASON[,"errno":N,"errname":NAME]}` on one line: 400 for a
//! malformed request, 401 without the token, 404 for an unknown endpoint
//! or a missing file, the filesystem's errno otherwise (docs/archival.md).

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;

use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::archive::{
    dwo_names, dwo_parse, MoveBlocks, SetAttrMore, WalkEntry, WalkIndex, MB_STAGE,
};
use scoutvm_fs::posix::archive_ctl::{timespec, NAMES_BUDGET};
use scoutvm_fs::posix::mount::{IndxEntry, Mount};
use scoutvm_fs::posix::types::{Cred, Ino};
use scoutvm_fs::runtime::env::Timespec;

use super::http::{Request, Response};
use super::json::{self, bytes_member, ObjWriter, Value};

/// Most entries one listing answer holds (callers page).
pub const MAX_ENTRIES: usize = 1000;
/// Longest `"path"` a request may name.
pub const MAX_PATH: usize = 4096;

/// The endpoints, `/v1/` + these.
pub const ENDPOINTS: &[&str] = &[
    "stat",
    "release",
    "stage",
    "data-waiting",
    "data-wait-err",
    "walk-inodes",
    "setattr",
    "punch-offline",
    "move-blocks",
    "get-referring-entries",
    "ino-path",
    "search-xattrs",
    "read-xattr-totals",
    "read-xattr-index",
];

/// A failed request: its status and one line of reason.
#[derive(Debug)]
struct Fail {
    status: u16,
    reason: String,
    errno: Option<Errno>,
}

fn bad(reason: impl Into<String>) -> Fail {
    Fail {
        status: 400,
        reason: reason.into(),
        errno: None,
    }
}

/// The status of a filesystem error.
pub fn errno_status(e: Errno) -> u16 {
    match e {
        Errno::ENOENT => 404,
        Errno::EPERM | Errno::EACCES => 403,
        Errno::ESTALE => 409,
        Errno::EAGAIN => 503,
        Errno::EIO | Errno::ENOSPC | Errno::EUCLEAN | Errno::ENOMEM => 500,
        _ if e.0 > 0 && e.0 < 4096 => 400,
        _ => 500,
    }
}

fn fs_fail(what: &str, e: Errno) -> Fail {
    Fail {
        status: errno_status(e),
        reason: format!("{what}: {e}"),
        errno: Some(e),
    }
}

/// The fields of a request body and what the endpoint reads of them.
struct Fields<'a> {
    members: &'a [(String, Value)],
}

impl<'a> Fields<'a> {
    /// Reject members the endpoint does not know (a typo should not be a
    /// silent default).
    fn only(&self, allowed: &[&str]) -> Result<(), Fail> {
        for (k, _) in self.members {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(format!("unknown field '{k}'")));
            }
        }
        Ok(())
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.members.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    fn opt_u64(&self, k: &str) -> Result<Option<u64>, Fail> {
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(format!("field '{k}': expected an unsigned 64-bit integer"))),
        }
    }

    fn u64(&self, k: &str) -> Result<u64, Fail> {
        self.opt_u64(k)?
            .ok_or_else(|| bad(format!("missing field '{k}'")))
    }

    fn str(&self, k: &str) -> Result<Option<&'a str>, Fail> {
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| bad(format!("field '{k}': expected a string"))),
        }
    }

    fn time(&self, k: &str) -> Result<Option<Timespec>, Fail> {
        match self.str(k)? {
            None => Ok(None),
            Some(s) => timespec(Some(s))
                .map(Some)
                .map_err(|_| bad(format!("field '{k}': expected \"SEC.NSEC\""))),
        }
    }

    /// An `.indx.` position from `PREFIX_major`, `PREFIX_minor`,
    /// `PREFIX_ino`, each `dflt`'s where missing.
    fn indx(&self, prefix: &str, dflt: IndxEntry) -> Result<IndxEntry, Fail> {
        let k = |f: &str| format!("{prefix}_{f}");
        let major = match self.opt_u64(&k("major"))? {
            None => dflt.major,
            Some(m) => {
                u8::try_from(m).map_err(|_| bad(format!("field '{prefix}_major': 0 to 255")))?
            }
        };
        Ok(IndxEntry {
            major,
            minor: self.opt_u64(&k("minor"))?.unwrap_or(dflt.minor),
            ino: self.opt_u64(&k("ino"))?.unwrap_or(dflt.ino),
        })
    }

    /// A listing's `max`: at most [`MAX_ENTRIES`], 1 or more.
    fn max(&self) -> Result<usize, Fail> {
        match self.opt_u64("max")? {
            None => Ok(MAX_ENTRIES),
            Some(0) => Err(bad("field 'max': must be at least 1")),
            Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_ENTRIES).min(MAX_ENTRIES)),
        }
    }
}

/// Constant-time comparison (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Is `t` a token the API takes: 8 to 256 visible ASCII characters.
pub fn token_ok(t: &str) -> bool {
    (8..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic())
}

/// The admin API over one mount.
pub struct Api {
    mount: Rc<Mount>,
    token: Vec<u8>,
}

impl Api {
    /// `token` must pass [`token_ok`] (the caller says why not).
    pub fn new(mount: Rc<Mount>, token: &str) -> Api {
        assert!(token_ok(token), "API token checked by the caller");
        Api {
            mount,
            token: token.as_bytes().to_vec(),
        }
    }

    pub fn mount(&self) -> &Mount {
        &self.mount
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(h) = &req.authorization else {
            return false;
        };
        let Some(sp) = h.iter().position(|&b| b == b' ') else {
            return false;
        };
        h[..sp].eq_ignore_ascii_case(b"bearer") && same(h[sp + 1..].trim_ascii(), &self.token)
    }

    /// Answer one request.
    pub async fn handle(&self, req: &Request) -> Response {
        let mut r = match self.answer(req).await {
            Ok(body) => Response::json(200, body),
            Err(f) => {
                let mut w = ObjWriter::new();
                w.str("error", &f.reason);
                if let Some(e) = f.errno {
                    w.u64("errno", e.0 as u64).str("errname", e.name());
                }
                Response::json(f.status, w.finish())
            }
        };
        r.close = req.close;
        r
    }

    async fn answer(&self, req: &Request) -> Result<String, Fail> {
        if !self.authorized(req) {
            return Err(Fail {
                status: 401,
                reason: "missing or wrong bearer token".into(),
                errno: None,
            });
        }
        let Some(op) = req.path.strip_prefix("/v1/") else {
            return Err(Fail {
                status: 404,
                reason: format!("no endpoint {} (POST /v1/OPERATION)", req.path),
                errno: None,
            });
        };
        if !ENDPOINTS.contains(&op) {
            return Err(Fail {
                status: 404,
                reason: format!("no endpoint /v1/{op}"),
                errno: None,
            });
        }
        if req.method != "POST" {
            return Err(Fail {
                status: 405,
                reason: format!("{} /v1/{op}: use POST", req.method),
                errno: None,
            });
        }
        let body = if req.body.iter().all(u8::is_ascii_whitespace) {
            Value::Obj(Vec::new())
        } else {
            json::parse(&req.body)
                .map_err(|e| bad(format!("body is not JSON: {} at byte {}", e.reason, e.at)))?
        };
        let Value::Obj(members) = &body else {
            return Err(bad("body must be a JSON object"));
        };
        let f = Fields { members };
        match op {
            "stat" => self.stat(&f).await,
            "release" => self.release(&f).await,
            "stage" => self.stage(&f).await,
            "data-waiting" => self.data_waiting(&f),
            "data-wait-err" => self.data_wait_err(&f).await,
            "walk-inodes" => self.walk_inodes(&f).await,
            "setattr" => self.setattr(&f).await,
            "punch-offline" => self.punch_offline(&f).await,
            "move-blocks" => self.move_blocks(&f).await,
            "get-referring-entries" => self.referring(&f).await,
            "search-xattrs" => self.search_xattrs(&f).await,
            "read-xattr-totals" => self.read_xattr_totals(&f).await,
            "read-xattr-index" => self.read_xattr_index(&f).await,
            _ => self.ino_path(&f).await,
        }
    }

    /// The file a request names: `"ino"` or `"path"` (exactly one).
    async fn target(&self, f: &Fields<'_>) -> Result<Ino, Fail> {
        match (f.opt_u64("ino")?, f.str("path")?) {
            (Some(_), Some(_)) => Err(bad("give 'ino' or 'path', not both")),
            (None, None) => Err(bad("missing field 'path' (or 'ino')")),
            (Some(0), None) => Err(bad("field 'ino': inode 0 does not exist")),
            (Some(ino), None) => Ok(ino),
            (None, Some(p)) => self.resolve(p).await,
        }
    }

    /// The inode at `path`, from the root, as root.
    async fn resolve(&self, path: &str) -> Result<Ino, Fail> {
        if path.len() > MAX_PATH {
            return Err(bad("field 'path': longer than 4096 bytes"));
        }
        let mut ino = scoutvm_fs::format::ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if name == ".." || name.contains('\0') {
                return Err(bad("field 'path': '..' and NUL are not accepted"));
            }
            ino = self
                .mount
                .lookup(&Cred::root(), ino, name.as_bytes())
                .await
                .map_err(|e| fs_fail(path, e))?
                .ino;
        }
        Ok(ino)
    }

    async fn stat(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["path", "ino"])?;
        let ino = self.target(f).await?;
        let s = self
            .mount
            .stat_more(ino)
            .await
            .map_err(|e| fs_fail("stat", e))?;
        let mut w = ObjWriter::new();
        w.u64("ino", ino)
            .u64("meta_seq", s.meta_seq)
            .u64("data_seq", s.data_seq)
            .u64("data_version", s.data_version)
            .u64("online_blocks", s.online_blocks)
            .u64("offline_blocks", s.offline_blocks)
            .str("crtime", &format!("{}.{:09}", s.crtime.sec, s.crtime.nsec))
            .u64("size", s.size);
        Ok(w.finish())
    }

    async fn release(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["path", "ino", "data_version", "offset", "length"])?;
        let ino = self.target(f).await?;
        let (vers, off, len) = (f.u64("data_version")?, f.u64("offset")?, f.u64("length")?);
        self.mount
            .release_data(ino, off, len, vers)
            .await
            .map_err(|e| fs_fail("release", e))?;
        Ok("{}".into())
    }

    async fn stage(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["path", "ino", "data_version", "offset", "data"])?;
        let ino = self.target(f).await?;
        let (vers, off) = (f.u64("data_version")?, f.u64("offset")?);
        let data = f
            .str("data")?
            .ok_or_else(|| bad("missing field 'data' (base64)"))?;
        let bytes = json::base64_decode(data).ok_or_else(|| bad("field 'data': not base64"))?;
        self.mount
            .stage(ino, vers, off, &bytes)
            .await
            .map_err(|e| fs_fail("stage", e))?;
        let mut w = ObjWriter::new();
        w.u64("staged", bytes.len() as u64);
        Ok(w.finish())
    }

    fn data_waiting(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["after_ino", "after_iblock", "max"])?;
        let ino = f.opt_u64("after_ino")?.unwrap_or(0);
        let block = f.opt_u64("after_iblock")?.unwrap_or(0);
        let items = self
            .mount
            .data_waiting(ino, block, f.max()?)
            .into_iter()
            .map(|e| {
                let mut w = ObjWriter::new();
                w.u64("ino", e.ino)
                    .u64("iblock", e.iblock)
                    .str("ops", &dwo_names(e.ops));
                w.finish()
            })
            .collect();
        let mut w = ObjWriter::new();
        w.objects("entries", items);
        Ok(w.finish())
    }

    async fn data_wait_err(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&[
            "path",
            "ino",
            "data_version",
            "offset",
            "count",
            "ops",
            "err",
        ])?;
        let ino = self.target(f).await?;
        let (vers, off, count) = (f.u64("data_version")?, f.u64("offset")?, f.u64("count")?);
        let ops = match f.get("ops") {
            Some(Value::Str(s)) => {
                let mut m = 0u8;
                for n in s.split(',') {
                    m |= dwo_parse(n.trim()).ok_or_else(|| {
                        bad(format!(
                            "field 'ops': unknown op '{n}' (read, write, change_size)"
                        ))
                    })?;
                }
                m
            }
            Some(v) => v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| bad("field 'ops': expected \"read,write,change_size\" or a mask"))?,
            None => return Err(bad("missing field 'ops'")),
        };
        let err = f
            .get("err")
            .ok_or_else(|| bad("missing field 'err'"))?
            .as_i64()
            .ok_or_else(|| bad("field 'err': expected a negative errno"))?;
        let n = self
            .mount
            .data_wait_err(ino, vers, off, count, ops, err)
            .await
            .map_err(|e| fs_fail("data-wait-err", e))?;
        let mut w = ObjWriter::new();
        w.u64("failed", n);
        Ok(w.finish())
    }

    async fn walk_inodes(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["index", "first", "first_ino", "last", "last_ino", "max"])?;
        let index = f
            .str("index")?
            .ok_or_else(|| bad("missing field 'index'"))?;
        let index =
            WalkIndex::parse(index).ok_or_else(|| bad("field 'index': meta_seq or data_seq"))?;
        // `last` -1: no limit (the walk stops at the stable seq)
        let last = match f.get("last") {
            Some(v) if v.as_i64() == Some(-1) => u64::MAX,
            _ => f.u64("last")?,
        };
        let first = WalkEntry {
            major: f.u64("first")?,
            minor: 0,
            ino: f.opt_u64("first_ino")?.unwrap_or(0),
        };
        let last = WalkEntry {
            major: last,
            minor: u32::MAX,
            ino: f.opt_u64("last_ino")?.unwrap_or(u64::MAX),
        };
        let found = self
            .mount
            .walk_inodes(index, first, last, f.max()?)
            .await
            .map_err(|e| fs_fail("walk-inodes", e))?;
        let items = found
            .into_iter()
            .map(|e| {
                let mut w = ObjWriter::new();
                w.u64("major", e.major)
                    .u64("minor", u64::from(e.minor))
                    .u64("ino", e.ino);
                w.finish()
            })
            .collect();
        let mut w = ObjWriter::new();
        w.objects("entries", items);
        Ok(w.finish())
    }

    async fn setattr(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&[
            "path",
            "ino",
            "data_version",
            "size",
            "offline",
            "ctime",
            "crtime",
        ])?;
        let ino = self.target(f).await?;
        let offline = match f.get("offline") {
            None | Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad("field 'offline': expected true or false"))?,
        };
        let sa = SetAttrMore {
            data_version: f.opt_u64("data_version")?,
            size: f.opt_u64("size")?,
            offline,
            ctime: f.time("ctime")?,
            crtime: f.time("crtime")?,
        };
        self.mount
            .setattr_more(ino, &sa)
            .await
            .map_err(|e| fs_fail("setattr", e))?;
        Ok("{}".into())
    }

    async fn punch_offline(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["path", "ino", "data_version", "offset", "length"])?;
        let ino = self.target(f).await?;
        let (vers, off, len) = (f.u64("data_version")?, f.u64("offset")?, f.u64("length")?);
        self.mount
            .punch_offline(ino, vers, off, len)
            .await
            .map_err(|e| fs_fail("punch-offline", e))?;
        Ok("{}".into())
    }

    /// `move-blocks`, asked of the target (`"path"` or `"ino"`); the
    /// source is `"from_path"` or `"from_ino"`. `"stage": true` moves into
    /// the target's offline extents, checked against `"data_version"`.
    async fn move_blocks(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&[
            "path",
            "ino",
            "from_path",
            "from_ino",
            "from_offset",
            "length",
            "to_offset",
            "data_version",
            "stage",
        ])?;
        let to = self.target(f).await?;
        let from = match (f.opt_u64("from_ino")?, f.str("from_path")?) {
            (Some(_), Some(_)) => return Err(bad("give 'from_ino' or 'from_path', not both")),
            (None, None) => return Err(bad("missing field 'from_path' (or 'from_ino')")),
            (Some(0), None) => return Err(bad("field 'from_ino': inode 0 does not exist")),
            (Some(ino), None) => ino,
            (None, Some(p)) => self.resolve(p).await?,
        };
        let stage = match f.get("stage") {
            None | Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad("field 'stage': expected true or false"))?,
        };
        let mb = MoveBlocks {
            from,
            from_off: f.u64("from_offset")?,
            len: f.u64("length")?,
            to_off: f.u64("to_offset")?,
            data_version: f.opt_u64("data_version")?.unwrap_or(0),
            flags: if stage { MB_STAGE } else { 0 },
        };
        self.mount
            .move_blocks(&Cred::root(), to, &mb)
            .await
            .map_err(|e| fs_fail("move-blocks", e))?;
        Ok("{}".into())
    }

    async fn referring(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["path", "ino", "dir", "pos", "max"])?;
        let ino = self.target(f).await?;
        let (dir, pos) = (
            f.opt_u64("dir")?.unwrap_or(0),
            f.opt_u64("pos")?.unwrap_or(0),
        );
        let found = self
            .mount
            .referring_entries(ino, dir, pos, f.max()?)
            .await
            .map_err(|e| fs_fail("get-referring-entries", e))?;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for e in found {
            // names of up to 255 bytes: bounded like the xattr channel
            if bytes >= NAMES_BUDGET {
                break;
            }
            bytes += e.name.len();
            let mut w = ObjWriter::new();
            w.u64("dir", e.dir)
                .u64("pos", e.pos)
                .u64("ino", e.ino)
                .u64("type", u64::from(e.dtype));
            bytes_member(&mut w, "name", &e.name);
            items.push(w.finish());
        }
        let mut w = ObjWriter::new();
        w.objects("entries", items);
        Ok(w.finish())
    }

    async fn ino_path(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["path", "ino", "dir", "pos", "max"])?;
        let ino = self.target(f).await?;
        let mut cur = Some((
            f.opt_u64("dir")?.unwrap_or(0),
            f.opt_u64("pos")?.unwrap_or(0),
        ));
        let max = f.max()?;
        let (mut items, mut bytes) = (Vec::new(), 0usize);
        while let Some((dir, pos)) = cur {
            if items.len() >= max || bytes >= NAMES_BUDGET {
                break;
            }
            let Some(p) = self
                .mount
                .ino_path(ino, dir, pos)
                .await
                .map_err(|e| fs_fail("ino-path", e))?
            else {
                break;
            };
            bytes += p.path.len();
            let mut w = ObjWriter::new();
            w.u64("dir", p.dir).u64("pos", p.pos);
            bytes_member(&mut w, "path", &p.path);
            items.push(w.finish());
            cur = match p.pos.checked_add(1) {
                Some(n) => Some((p.dir, n)),
                None => p.dir.checked_add(1).map(|d| (d, 0)),
            };
        }
        let mut w = ObjWriter::new();
        w.objects("paths", items);
        Ok(w.finish())
    }

    /// The inodes with the `.srch.` xattr `name` from `first_ino` to
    /// `last_ino`; `last_ino` of the answer says how far it covers (less
    /// than asked when `max` capped it: ask again from the next inode).
    async fn search_xattrs(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["name", "first_ino", "last_ino", "max"])?;
        let name = f.str("name")?.ok_or_else(|| bad("missing field 'name'"))?;
        let first = f.opt_u64("first_ino")?.unwrap_or(0);
        let last = f.opt_u64("last_ino")?.unwrap_or(u64::MAX);
        if first > last {
            return Err(bad("field 'first_ino': past 'last_ino'"));
        }
        let r = self
            .mount
            .search_xattrs(name.as_bytes(), first, last, f.max()?)
            .await
            .map_err(|e| fs_fail("search-xattrs", e))?;
        let mut w = ObjWriter::new();
        w.u64("last_ino", r.last_ino)
            .raw("inos", &u64_array(r.inos));
        Ok(w.finish())
    }

    /// The `.totl.` totals from the name `from` (`[A,B,C]`) on.
    async fn read_xattr_totals(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&["from", "max"])?;
        let from = match f.get("from") {
            None | Some(Value::Null) => [0; 3],
            Some(v) => totl_name(v, "from")?,
        };
        let found = self
            .mount
            .read_xattr_totals(from, f.max()?)
            .await
            .map_err(|e| fs_fail("read-xattr-totals", e))?;
        let items = found
            .into_iter()
            .map(|t| {
                let mut w = ObjWriter::new();
                w.raw("name", &u64_array(t.name))
                    .i64("total", t.total)
                    .i64("count", t.count);
                w.finish()
            })
            .collect();
        let mut w = ObjWriter::new();
        w.objects("entries", items);
        Ok(w.finish())
    }

    /// The `.indx.` index from the position `first_*` to `last_*`
    /// (inclusive; the whole index by default).
    async fn read_xattr_index(&self, f: &Fields<'_>) -> Result<String, Fail> {
        f.only(&[
            "first_major",
            "first_minor",
            "first_ino",
            "last_major",
            "last_minor",
            "last_ino",
            "max",
        ])?;
        let first = f.indx(
            "first",
            IndxEntry {
                major: 0,
                minor: 0,
                ino: 0,
            },
        )?;
        let last = f.indx(
            "last",
            IndxEntry {
                major: u8::MAX,
                minor: u64::MAX,
                ino: u64::MAX,
            },
        )?;
        if first > last {
            return Err(bad("the first position is past the last"));
        }
        let found = self
            .mount
            .read_xattr_index(first, last, f.max()?)
            .await
            .map_err(|e| fs_fail("read-xattr-index", e))?;
        let items = found
            .into_iter()
            .map(|e| {
                let mut w = ObjWriter::new();
                w.u64("major", u64::from(e.major))
                    .u64("minor", e.minor)
                    .u64("ino", e.ino);
                w.finish()
            })
            .collect();
        let mut w = ObjWriter::new();
        w.objects("entries", items);
        Ok(w.finish())
    }
}

/// `[A,B,C]` of unsigned integers (a `.totl.` name).
fn totl_name(v: &Value, k: &str) -> Result<[u64; 3], Fail> {
    let why = || {
        bad(format!(
            "field '{k}': expected [A,B,C] of unsigned integers"
        ))
    };
    match v.as_array() {
        Some([a, b, c]) => Ok([
            a.as_u64().ok_or_else(why)?,
            b.as_u64().ok_or_else(why)?,
            c.as_u64().ok_or_else(why)?,
        ]),
        _ => Err(why()),
    }
}

/// JSON text of an array of unsigned integers.
fn u64_array(v: impl IntoIterator<Item = u64>) -> String {
    let mut s = String::from("[");
    for (i, n) in v.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{n}"));
    }
    s.push(']');
    s
}

impl core::fmt::Debug for Api {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Api { token: <hidden> }")
    }
}
