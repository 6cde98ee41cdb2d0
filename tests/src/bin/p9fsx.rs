//! p9fsx: a seeded fsx-like random-operation exerciser, run inside the Linux
//! guest. Every operation is applied to a tree on the mount under test and
//! to a reference tree (default: the guest's tmpfs), and the outcomes —
//! data read, names listed, attributes, errno — must match. xattrs are
//! compared with an in-memory model (tmpfs in Linux 6.1 has no user xattrs).
//!
//! Exits 0 with `P9FSX ok seed=S ops=N`, or 1 with `P9FSX FAIL seed=S
//! op=K ...` and the last operations, so a failure replays from its seed.

#[path = "p9tools/common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use common::{errno_of, getxattr, listxattr, removexattr, setxattr, Args, Rng};

const USAGE: &str = "usage: p9fsx DIR [--seed S] [--ops N] [--ref REFDIR] [--max-size BYTES] [--verbose] [--no-fd-stat]
  --no-fd-stat: do not fstat held files (for path-based servers that cannot stat an unlinked open file)";

const DIRS: [&str; 4] = ["d0", "d1", "d0/d2", "d1/d3"];
const PARENTS: [&str; 5] = ["", "d0", "d1", "d0/d2", "d1/d3"];
const NAMES: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];
const XATTRS: [&str; 3] = ["user.a", "user.bb", "user.ccc"];
const HELD: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Write {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    Read {
        path: String,
        off: u64,
        len: usize,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Readdir {
        path: String,
    },
    Stat {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Fsync {
        path: String,
    },
    Hold {
        slot: usize,
        path: String,
    },
    HeldWrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    HeldRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    Release {
        slot: usize,
    },
    SetXattr {
        path: String,
        name: &'static str,
        len: usize,
        seed: u64,
        flags: i32,
    },
    GetXattr {
        path: String,
        name: &'static str,
    },
    RemoveXattr {
        path: String,
        name: &'static str,
    },
    ListXattr {
        path: String,
    },
}

/// What an operation returned, compared between the two trees.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Bytes(Vec<u8>),
    Names(Vec<String>),
    /// kind, size (0 for dirs), nlink (0 for dirs), permission bits
    Stat(char, u64, u64, u32),
    Err(i32),
}

fn outcome<T>(r: io::Result<T>, f: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => f(v),
        Err(e) => Outcome::Err(errno_of(&e)),
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// One of the two trees.
struct Side {
    root: PathBuf,
    held: Vec<Option<File>>,
    /// fstat held files (off for path-based servers such as diod, which
    /// cannot stat a file that was unlinked while open).
    fd_stat: bool,
}

impl Side {
    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Write {
                path,
                off,
                len,
                seed,
            } => outcome(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(self.p(path))
                    .and_then(|f| f.write_all_at(&data(*seed, *len), *off)),
                |_| Outcome::Done,
            ),
            Op::Append { path, len, seed } => outcome(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(self.p(path))
                    .and_then(|mut f| f.write_all(&data(*seed, *len))),
                |_| Outcome::Done,
            ),
            Op::Read { path, off, len } => outcome(
                File::open(self.p(path)).and_then(|f| read_at_most(&f, *off, *len)),
                Outcome::Bytes,
            ),
            Op::Truncate { path, len } => outcome(
                OpenOptions::new()
                    .write(true)
                    .open(self.p(path))
                    .and_then(|f| f.set_len(*len)),
                |_| Outcome::Done,
            ),
            Op::Rename { from, to } => {
                outcome(fs::rename(self.p(from), self.p(to)), |_| Outcome::Done)
            }
            Op::Link { from, to } => {
                outcome(fs::hard_link(self.p(from), self.p(to)), |_| Outcome::Done)
            }
            Op::Symlink { target, path } => {
                outcome(std::os::unix::fs::symlink(target, self.p(path)), |_| {
                    Outcome::Done
                })
            }
            Op::Readlink { path } => outcome(fs::read_link(self.p(path)), |t| {
                Outcome::Bytes(t.into_os_string().into_encoded_bytes())
            }),
            Op::Unlink { path } => outcome(fs::remove_file(self.p(path)), |_| Outcome::Done),
            Op::Mkdir { path } => outcome(
                fs::DirBuilder::new().mode(0o755).create(self.p(path)),
                |_| Outcome::Done,
            ),
            Op::Rmdir { path } => outcome(fs::remove_dir(self.p(path)), |_| Outcome::Done),
            Op::Readdir { path } => outcome(list(&self.p(path)), Outcome::Names),
            Op::Stat { path } => outcome(fs::symlink_metadata(self.p(path)), |m| stat_of(&m)),
            Op::Chmod { path, mode } => outcome(
                fs::set_permissions(self.p(path), fs::Permissions::from_mode(*mode)),
                |_| Outcome::Done,
            ),
            Op::Fsync { path } => {
                outcome(File::open(self.p(path)).and_then(|f| f.sync_all()), |_| {
                    Outcome::Done
                })
            }
            Op::Hold { slot, path } => {
                let r = OpenOptions::new().read(true).write(true).open(self.p(path));
                outcome(r, |f| {
                    self.held[*slot] = Some(f);
                    Outcome::Done
                })
            }
            Op::HeldWrite {
                slot,
                off,
                len,
                seed,
            } => match &self.held[*slot] {
                None => Outcome::Err(libc::EBADF),
                Some(f) => outcome(f.write_all_at(&data(*seed, *len), *off), |_| Outcome::Done),
            },
            Op::HeldRead { slot, off, len } => match &self.held[*slot] {
                None => Outcome::Err(libc::EBADF),
                Some(f) => outcome(
                    read_at_most(f, *off, *len).and_then(|b| {
                        let size = if self.fd_stat { f.metadata()?.len() } else { 0 };
                        Ok((b, size))
                    }),
                    |(mut b, size)| {
                        // The size through the fd must agree too.
                        b.extend_from_slice(&size.to_le_bytes());
                        Outcome::Bytes(b)
                    },
                ),
            },
            Op::Release { slot } => match self.held[*slot].take() {
                None => Outcome::Err(libc::EBADF),
                Some(_) => Outcome::Done,
            },
            Op::SetXattr { .. }
            | Op::GetXattr { .. }
            | Op::RemoveXattr { .. }
            | Op::ListXattr { .. } => {
                unreachable!("xattr ops go through apply_xattr")
            }
        }
    }
}

fn read_at_most(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir)? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn stat_of(m: &fs::Metadata) -> Outcome {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else {
        '?'
    };
    let (size, nlink) = match kind {
        'd' => (0, 0),
        // Symlink sizes are the target length everywhere; keep them.
        _ => (m.len(), m.nlink()),
    };
    let perm = if kind == 'l' { 0 } else { m.mode() & 0o7777 };
    Outcome::Stat(kind, size, nlink, perm)
}

/// xattrs of the reference side, keyed by the reference inode number.
#[derive(Default)]
struct XattrModel {
    by_ino: HashMap<u64, BTreeMap<&'static str, Vec<u8>>>,
}

struct Fsx {
    rng: Rng,
    max_size: u64,
    test: Side,
    reference: Side,
    model: XattrModel,
    log: VecDeque<String>,
    verbose: bool,
}

impl Fsx {
    fn any_path(&mut self) -> String {
        let parent = *self.rng.pick(&PARENTS);
        let name = if self.rng.chance(25) {
            // A directory name in a place it may or may not belong.
            let d = *self.rng.pick(&DIRS);
            return d.to_string();
        } else {
            *self.rng.pick(&NAMES)
        };
        if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        }
    }

    fn file_path(&mut self) -> String {
        let parent = *self.rng.pick(&PARENTS);
        let name = *self.rng.pick(&NAMES);
        if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        }
    }

    fn gen_op(&mut self) -> Op {
        let r = &mut self.rng;
        let max = self.max_size;
        let small = |r: &mut Rng| -> usize {
            if r.chance(20) {
                r.below(64 * 1024) as usize + 1
            } else {
                r.below(4096) as usize + 1
            }
        };
        match r.below(100) {
            0..=17 => {
                let len = small(r);
                let off = r.below(max);
                Op::Write {
                    path: self.file_path(),
                    off,
                    len,
                    seed: self.rng.next_u64(),
                }
            }
            18..=22 => {
                let len = small(r);
                Op::Append {
                    path: self.file_path(),
                    len,
                    seed: self.rng.next_u64(),
                }
            }
            23..=37 => {
                let off = r.below(max);
                let len = small(r);
                Op::Read {
                    path: self.file_path(),
                    off,
                    len,
                }
            }
            38..=43 => {
                let len = r.below(max);
                Op::Truncate {
                    path: self.file_path(),
                    len,
                }
            }
            44..=49 => Op::Rename {
                from: self.any_path(),
                to: self.any_path(),
            },
            50..=53 => Op::Link {
                from: self.file_path(),
                to: self.file_path(),
            },
            54..=55 => {
                let target = if r.chance(50) {
                    "f0".to_string()
                } else {
                    "../missing/target".to_string()
                };
                Op::Symlink {
                    target,
                    path: self.file_path(),
                }
            }
            56 => Op::Readlink {
                path: self.file_path(),
            },
            57..=62 => Op::Unlink {
                path: self.file_path(),
            },
            63..=67 => {
                let d = *r.pick(&DIRS);
                Op::Mkdir {
                    path: d.to_string(),
                }
            }
            68..=69 => {
                let d = *r.pick(&DIRS);
                Op::Rmdir {
                    path: d.to_string(),
                }
            }
            70..=73 => {
                let d = *r.pick(&PARENTS);
                Op::Readdir {
                    path: d.to_string(),
                }
            }
            74..=77 => Op::Stat {
                path: self.any_path(),
            },
            78..=79 => {
                let mode = *r.pick(&[0o600, 0o644, 0o640, 0o755, 0o700, 0o444]);
                Op::Chmod {
                    path: self.any_path(),
                    mode,
                }
            }
            80 => Op::Fsync {
                path: self.file_path(),
            },
            81..=82 => {
                let slot = r.below(HELD as u64) as usize;
                Op::Hold {
                    slot,
                    path: self.file_path(),
                }
            }
            83..=84 => {
                let slot = r.below(HELD as u64) as usize;
                let off = r.below(max);
                let len = small(r);
                Op::HeldWrite {
                    slot,
                    off,
                    len,
                    seed: self.rng.next_u64(),
                }
            }
            85..=86 => {
                let slot = r.below(HELD as u64) as usize;
                let off = r.below(max);
                let len = small(r);
                Op::HeldRead { slot, off, len }
            }
            87 => Op::Release {
                slot: r.below(HELD as u64) as usize,
            },
            88..=91 => {
                let name = *r.pick(&XATTRS);
                let len = r.below(300) as usize + 1;
                let flags = *r.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]);
                Op::SetXattr {
                    path: self.file_path(),
                    name,
                    len,
                    seed: self.rng.next_u64(),
                    flags,
                }
            }
            92..=94 => {
                let name = *r.pick(&XATTRS);
                Op::GetXattr {
                    path: self.file_path(),
                    name,
                }
            }
            95..=96 => {
                let name = *r.pick(&XATTRS);
                Op::RemoveXattr {
                    path: self.file_path(),
                    name,
                }
            }
            _ => Op::ListXattr {
                path: self.file_path(),
            },
        }
    }

    /// The reference inode an xattr call on `rel` reaches (xattr calls
    /// follow symlinks).
    fn ref_ino(&self, rel: &str) -> Option<u64> {
        fs::metadata(self.reference.p(rel)).ok().map(|m| m.ino())
    }

    /// xattr ops: the real syscalls on the test side, the model on the
    /// reference side (keyed by the reference file's inode).
    fn apply_xattr(&mut self, op: &Op) -> (Outcome, Outcome) {
        let path = match op {
            Op::SetXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::ListXattr { path } => path.clone(),
            _ => unreachable!(),
        };
        let tp = self.test.p(&path);
        let ino = self.ref_ino(&path);
        let exists_ref = fs::metadata(self.reference.p(&path));
        let missing = |m: &io::Result<fs::Metadata>| match m {
            Err(e) => Some(Outcome::Err(errno_of(e))),
            Ok(_) => None,
        };
        match op {
            Op::SetXattr {
                name,
                len,
                seed,
                flags,
                ..
            } => {
                let value = data(*seed, *len);
                let t = outcome(setxattr(&tp, name, &value, *flags), |_| Outcome::Done);
                let r = missing(&exists_ref).unwrap_or_else(|| {
                    let Some(ino) = ino else {
                        return Outcome::Err(libc::EPERM);
                    };
                    let attrs = self.model.by_ino.entry(ino).or_default();
                    if *flags == libc::XATTR_CREATE && attrs.contains_key(name) {
                        Outcome::Err(libc::EEXIST)
                    } else if *flags == libc::XATTR_REPLACE && !attrs.contains_key(name) {
                        Outcome::Err(libc::ENODATA)
                    } else {
                        attrs.insert(name, value);
                        Outcome::Done
                    }
                });
                (t, r)
            }
            Op::GetXattr { name, .. } => {
                let t = outcome(getxattr(&tp, name), Outcome::Bytes);
                let r = missing(&exists_ref).unwrap_or_else(|| {
                    match ino
                        .and_then(|i| self.model.by_ino.get(&i))
                        .and_then(|a| a.get(name))
                    {
                        Some(v) => Outcome::Bytes(v.clone()),
                        None => Outcome::Err(libc::ENODATA),
                    }
                });
                (t, r)
            }
            Op::RemoveXattr { name, .. } => {
                let t = outcome(removexattr(&tp, name), |_| Outcome::Done);
                let r = missing(&exists_ref).unwrap_or_else(|| {
                    match ino
                        .and_then(|i| self.model.by_ino.get_mut(&i))
                        .and_then(|a| a.remove(name))
                    {
                        Some(_) => Outcome::Done,
                        None => Outcome::Err(libc::ENODATA),
                    }
                });
                (t, r)
            }
            Op::ListXattr { .. } => {
                let t = outcome(listxattr(&tp), |names| {
                    Outcome::Names(
                        names
                            .into_iter()
                            .filter(|n| n.starts_with("user."))
                            .collect(),
                    )
                });
                let r = missing(&exists_ref).unwrap_or_else(|| {
                    let names = ino
                        .and_then(|i| self.model.by_ino.get(&i))
                        .map(|a| a.keys().map(|k| k.to_string()).collect())
                        .unwrap_or_default();
                    Outcome::Names(names)
                });
                (t, r)
            }
            _ => unreachable!(),
        }
    }

    fn step(&mut self, n: u64) -> Result<(), String> {
        let op = self.gen_op();
        let desc = format!("#{n} {op:?}");
        if self.verbose {
            println!("{desc}");
        }
        self.log.push_back(desc.clone());
        if self.log.len() > 25 {
            self.log.pop_front();
        }
        let (t, r) = match &op {
            Op::SetXattr { .. }
            | Op::GetXattr { .. }
            | Op::RemoveXattr { .. }
            | Op::ListXattr { .. } => self.apply_xattr(&op),
            _ => {
                // A file newly created on the reference side is a new inode:
                // forget any model xattrs of an old inode with its number.
                let created_path = match &op {
                    Op::Write { path, .. } | Op::Append { path, .. } | Op::Mkdir { path } => {
                        Some(path.clone())
                    }
                    _ => None,
                };
                let existed = created_path.as_ref().map(|p| self.ref_ino(p).is_some());
                let t = self.test.apply(&op);
                let r = self.reference.apply(&op);
                if let (Some(p), Some(false)) = (created_path, existed) {
                    if let Some(ino) = self.ref_ino(&p) {
                        self.model.by_ino.remove(&ino);
                    }
                }
                (t, r)
            }
        };
        if t != r {
            return Err(format!(
                "{desc}: test tree gave {}, reference gave {}",
                show(&t),
                show(&r)
            ));
        }
        if n % 50 == 49 {
            self.compare_trees()
                .map_err(|e| format!("after {desc}: {e}"))?;
        }
        Ok(())
    }

    /// Walk both trees: same names, types, sizes, link counts, modes,
    /// symlink targets and file contents.
    fn compare_trees(&self) -> Result<(), String> {
        for parent in PARENTS {
            let t = list(&self.test.p(parent));
            let r = list(&self.reference.p(parent));
            let (t, r) = match (t, r) {
                (Ok(t), Ok(r)) => (t, r),
                (Err(a), Err(b)) if errno_of(&a) == errno_of(&b) => continue,
                (t, r) => return Err(format!("listing {parent:?}: test {t:?} reference {r:?}")),
            };
            if t != r {
                return Err(format!("listing {parent:?}: test {t:?} reference {r:?}"));
            }
            for name in t {
                let rel = if parent.is_empty() {
                    name
                } else {
                    format!("{parent}/{name}")
                };
                let (tm, rm) = (
                    fs::symlink_metadata(self.test.p(&rel))
                        .map_err(|e| format!("lstat {rel}: {e}"))?,
                    fs::symlink_metadata(self.reference.p(&rel))
                        .map_err(|e| format!("lstat {rel}: {e}"))?,
                );
                let (ts, rs) = (stat_of(&tm), stat_of(&rm));
                if ts != rs {
                    return Err(format!("stat {rel}: test {ts:?} reference {rs:?}"));
                }
                if tm.is_file() {
                    let a = fs::read(self.test.p(&rel)).map_err(|e| format!("read {rel}: {e}"))?;
                    let b =
                        fs::read(self.reference.p(&rel)).map_err(|e| format!("read {rel}: {e}"))?;
                    if a != b {
                        let at = a
                            .iter()
                            .zip(&b)
                            .position(|(x, y)| x != y)
                            .unwrap_or(a.len().min(b.len()));
                        return Err(format!(
                            "content of {rel} differs from byte {at} (sizes {} {})",
                            a.len(),
                            b.len()
                        ));
                    }
                } else if tm.file_type().is_symlink() {
                    let a = fs::read_link(self.test.p(&rel))
                        .map_err(|e| format!("readlink {rel}: {e}"))?;
                    let b = fs::read_link(self.reference.p(&rel))
                        .map_err(|e| format!("readlink {rel}: {e}"))?;
                    if a != b {
                        return Err(format!("symlink {rel}: test {a:?} reference {b:?}"));
                    }
                }
            }
        }
        Ok(())
    }
}

fn show(o: &Outcome) -> String {
    match o {
        Outcome::Bytes(b) if b.len() > 32 => format!(
            "Bytes({} bytes, checksum {:016x})",
            b.len(),
            common::Checksum::of(b)
        ),
        Outcome::Err(e) => format!("Err({})", io::Error::from_raw_os_error(*e)),
        o => format!("{o:?}"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("P9FSX FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let args = Args::parse(std::env::args().skip(1), &["verbose", "no-fd-stat"])?;
    if let Some(e) = args.unknown(&["seed", "ops", "ref", "max-size", "verbose", "no-fd-stat"]) {
        return Err(format!("{e}\n{USAGE}"));
    }
    let [dir] = &args.positional[..] else {
        return Err(USAGE.to_string());
    };
    let seed: u64 = args.num("seed", 1)?;
    let ops: u64 = args.num("ops", 2000)?;
    let max_size: u64 = args.num("max-size", 256 * 1024)?;
    if max_size == 0 {
        return Err("--max-size must be positive".into());
    }
    let test_root = Path::new(dir).join(format!("p9fsx.{seed}"));
    let ref_root = match args.get("ref") {
        Some(r) => PathBuf::from(r),
        None => std::env::temp_dir().join(format!("p9fsx-ref.{seed}")),
    };
    for root in [&test_root, &ref_root] {
        if root.exists() {
            fs::remove_dir_all(root).map_err(|e| format!("clean {}: {e}", root.display()))?;
        }
        fs::create_dir_all(root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
    }
    let mut fsx = Fsx {
        rng: Rng::new(seed),
        max_size,
        test: Side {
            root: test_root.clone(),
            held: (0..HELD).map(|_| None).collect(),
            fd_stat: !args.flag("no-fd-stat"),
        },
        reference: Side {
            root: ref_root.clone(),
            held: (0..HELD).map(|_| None).collect(),
            fd_stat: !args.flag("no-fd-stat"),
        },
        model: XattrModel::default(),
        log: VecDeque::new(),
        verbose: args.flag("verbose"),
    };
    for n in 0..ops {
        if let Err(e) = fsx.step(n) {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "P9FSX last operations (seed {seed}):");
            for l in &fsx.log {
                let _ = writeln!(out, "  {l}");
            }
            return Err(format!("seed={seed} {e}"));
        }
    }
    for slot in 0..HELD {
        fsx.test.held[slot] = None;
        fsx.reference.held[slot] = None;
    }
    fsx.compare_trees()
        .map_err(|e| format!("seed={seed} at the end: {e}"))?;
    fs::remove_dir_all(&ref_root).map_err(|e| format!("clean {}: {e}", ref_root.display()))?;
    Ok(format!(
        "P9FSX ok seed={seed} ops={ops} tree={}",
        test_root.display()
    ))
}
