//! The fids of one 9P connection: what each names and what state it is in.
//!
//! Owned by a connection; request handlers look fids up, add the ones
//! `Tattach`/`Twalk`/`Txattrwalk` make and take them out on `Tclunk` and
//! `Tremove`. A fid names an inode (by number: inode numbers are never
//! reused, so a fid of a deleted inode fails with `ENOENT`, it never
//! reaches another file) and remembers the identity it acts as. An open fid
//! counts as an open of the inode in the filesystem, which keeps an
//! unlinked file alive until the fid is clunked. Invariants: at most `max`
//! fids; a fid number is in the table once; state moves Walked ->
//! Opening -> Open (or Walked -> Xattr*) and never back.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use scoutvm_fs::posix::types::{
    Ino, O_ACCMODE, O_APPEND, O_RDONLY, O_RDWR, O_WRONLY, S_IFDIR, S_IFMT,
};

use super::access::Identity;

/// A pending `Txattrcreate`: the value arrives by `Twrite`, is set on
/// `Tclunk`.
#[derive(Debug)]
pub struct XattrWrite {
    pub name: Vec<u8>,
    pub size: usize,
    pub flags: u32,
    pub value: Vec<u8>,
}

/// What a fid can be used for.
#[derive(Debug)]
pub enum FidState {
    /// Names a file; not open.
    Walked,
    /// A `Tlopen`/`Tlcreate` is under way.
    Opening,
    /// Open with these Linux open flags; counts as an open of the inode.
    Open { flags: u32 },
    /// `Txattrwalk` result: the value (or the NUL-separated name list).
    XattrRead(Rc<[u8]>),
    /// `Txattrcreate`: collecting a value to set at clunk.
    XattrWrite(XattrWrite),
}

/// One fid.
#[derive(Debug)]
pub struct Fid {
    pub ino: Ino,
    /// `S_IFMT` bits of the inode (a file's type never changes).
    pub ftype: u32,
    pub ident: Rc<Identity>,
    /// The attach root this fid descends from; `..` stops there.
    pub root: Ino,
    /// Directory and name it was reached by (for `Tremove`/`Trename`);
    /// `None` for an attach root.
    pub parent: RefCell<Option<(Ino, Vec<u8>)>>,
    pub state: RefCell<FidState>,
}

impl Fid {
    pub fn new(
        ino: Ino,
        mode: u32,
        ident: Rc<Identity>,
        root: Ino,
        parent: Option<(Ino, Vec<u8>)>,
    ) -> Fid {
        Fid {
            ino,
            ftype: mode & S_IFMT,
            ident,
            root,
            parent: RefCell::new(parent),
            state: RefCell::new(FidState::Walked),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.ftype == S_IFDIR
    }

    /// Open flags if open.
    pub fn open_flags(&self) -> Option<u32> {
        match *self.state.borrow() {
            FidState::Open { flags } => Some(flags),
            _ => None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_flags().is_some()
    }

    /// Open for reading?
    pub fn readable(&self) -> bool {
        self.open_flags()
            .is_some_and(|f| matches!(f & O_ACCMODE, O_RDONLY | O_RDWR))
    }

    /// Open for writing? Returns whether writes append.
    pub fn writable(&self) -> Option<bool> {
        self.open_flags()
            .filter(|f| matches!(f & O_ACCMODE, O_WRONLY | O_RDWR))
            .map(|f| f & O_APPEND != 0)
    }
}

/// Why a fid could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FidError {
    /// The number is taken.
    InUse,
    /// The table holds `max` fids.
    TooMany,
}

/// The fid table of one connection.
#[derive(Debug)]
pub struct FidTable {
    map: BTreeMap<u32, Rc<Fid>>,
    max: usize,
}

impl FidTable {
    pub fn new(max: usize) -> FidTable {
        assert!(max > 0);
        FidTable {
            map: BTreeMap::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, fid: u32) -> Option<Rc<Fid>> {
        self.map.get(&fid).cloned()
    }

    pub fn contains(&self, fid: u32) -> bool {
        self.map.contains_key(&fid)
    }

    /// Add a new fid.
    pub fn insert(&mut self, no: u32, fid: Rc<Fid>) -> Result<(), FidError> {
        if self.map.contains_key(&no) {
            return Err(FidError::InUse);
        }
        if self.map.len() >= self.max {
            return Err(FidError::TooMany);
        }
        self.map.insert(no, fid);
        debug_assert!(self.map.len() <= self.max);
        Ok(())
    }

    /// Put `fid` in place of the existing fid `no` (a walk onto itself, a
    /// create turning a directory fid into the new file).
    pub fn replace(&mut self, no: u32, fid: Rc<Fid>) -> Option<Rc<Fid>> {
        let old = self.map.get_mut(&no)?;
        Some(core::mem::replace(old, fid))
    }

    pub fn remove(&mut self, no: u32) -> Option<Rc<Fid>> {
        self.map.remove(&no)
    }

    /// Take every fid out (connection teardown, `Tversion`).
    pub fn drain(&mut self) -> Vec<(u32, Rc<Fid>)> {
        core::mem::take(&mut self.map).into_iter().collect()
    }

    /// How many fids are open.
    pub fn open_count(&self) -> usize {
        self.map.values().filter(|f| f.is_open()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoutvm_fs::posix::types::{O_APPEND, O_WRONLY, S_IFREG};

    #[test]
    fn table_bounds_and_states() {
        let id = Rc::new(Identity::new(b"root", 0, false));
        let mut t = FidTable::new(2);
        let f = |ino| Rc::new(Fid::new(ino, S_IFREG | 0o644, id.clone(), 1, None));
        t.insert(1, f(10)).unwrap();
        assert_eq!(t.insert(1, f(11)), Err(FidError::InUse));
        t.insert(2, f(12)).unwrap();
        assert_eq!(t.insert(3, f(13)), Err(FidError::TooMany));
        assert_eq!(t.replace(2, f(14)).unwrap().ino, 12);
        assert!(t.replace(9, f(1)).is_none());
        assert_eq!(t.get(2).unwrap().ino, 14);
        let x = t.get(1).unwrap();
        assert!(!x.is_open() && !x.readable() && x.writable().is_none());
        *x.state.borrow_mut() = FidState::Open {
            flags: O_WRONLY | O_APPEND,
        };
        assert!(!x.readable());
        assert_eq!(x.writable(), Some(true));
        assert_eq!(t.open_count(), 1);
        assert_eq!(t.remove(1).unwrap().ino, 10);
        assert_eq!(t.drain().len(), 1);
        assert!(t.is_empty());
    }
}
