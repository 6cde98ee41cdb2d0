//! POSIX permission rules, as Linux applies them (`generic_permission`,
//! `inode_owner_or_capable`, the sticky-bit check, setattr's chown/chmod
//! rules). Pure functions over a caller's [`Cred`] and an inode's mode and
//! owner; `vfs::Mount` calls them before touching any item.
//!
//! uid 0 holds every capability (DAC override, CHOWN, FOWNER, FSETID,
//! MKNOD, SYS_ADMIN), like root in the initial user namespace.

use crate::errno::{Errno, FsResult};
use crate::posix::types::{Cred, MAY_EXEC, MAY_READ, MAY_WRITE, S_IFDIR, S_IFMT, S_ISVTX};

/// What a permission check needs to know about an inode.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub fn is_root(cred: &Cred) -> bool {
    cred.uid == 0
}

/// `generic_permission`: `mask` is a combination of `MAY_READ`,
/// `MAY_WRITE`, `MAY_EXEC`. `EACCES` when denied.
pub fn check(cred: &Cred, o: Owner, mask: u32) -> FsResult<()> {
    let mask = mask & (MAY_READ | MAY_WRITE | MAY_EXEC);
    if is_root(cred) {
        // DAC override: all but exec of a file with no exec bit at all.
        let is_dir = o.mode & S_IFMT == S_IFDIR;
        if mask & MAY_EXEC == 0 || is_dir || o.mode & 0o111 != 0 {
            return Ok(());
        }
        return Err(Errno::EACCES);
    }
    let bits = if cred.uid == o.uid {
        (o.mode >> 6) & 7
    } else if cred.in_group(o.gid) {
        (o.mode >> 3) & 7
    } else {
        o.mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// `inode_owner_or_capable`: the owner, or CAP_FOWNER.
pub fn owner_or_capable(cred: &Cred, o: Owner) -> bool {
    is_root(cred) || cred.uid == o.uid
}

/// Sticky directories only let the file's owner, the directory's owner or
/// CAP_FOWNER remove or rename an entry. True when the caller is refused.
pub fn sticky_denies(cred: &Cred, dir: Owner, victim: Owner) -> bool {
    dir.mode & S_ISVTX != 0 && !is_root(cred) && cred.uid != victim.uid && cred.uid != dir.uid
}

/// May the caller change the owner to `uid` (chown's uid half)?
pub fn may_chown_uid(cred: &Cred, o: Owner, uid: u32) -> bool {
    is_root(cred) || (cred.uid == o.uid && uid == o.uid)
}

/// May the caller change the group to `gid`?
pub fn may_chown_gid(cred: &Cred, o: Owner, gid: u32) -> bool {
    is_root(cred) || (cred.uid == o.uid && (gid == o.gid || cred.in_group(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posix::types::S_IFREG;

    fn file(mode: u32, uid: u32, gid: u32) -> Owner {
        Owner {
            mode: S_IFREG | mode,
            uid,
            gid,
        }
    }

    #[test]
    fn owner_group_other_classes() {
        let o = file(0o640, 10, 20);
        let owner = Cred::user(10, 99);
        let member = Cred {
            uid: 11,
            gid: 5,
            groups: alloc::vec![20],
        };
        let other = Cred::user(12, 30);
        assert!(check(&owner, o, MAY_READ | MAY_WRITE).is_ok());
        assert_eq!(check(&owner, o, MAY_EXEC), Err(Errno::EACCES));
        assert!(check(&member, o, MAY_READ).is_ok());
        assert_eq!(check(&member, o, MAY_WRITE), Err(Errno::EACCES));
        assert_eq!(check(&other, o, MAY_READ), Err(Errno::EACCES));
        // the owner class is used even when it grants less than others
        let odd = file(0o077, 10, 20);
        assert_eq!(check(&owner, odd, MAY_READ), Err(Errno::EACCES));
    }

    #[test]
    fn root_overrides_but_needs_an_exec_bit() {
        let root = Cred::root();
        assert!(check(&root, file(0o000, 1, 1), MAY_READ | MAY_WRITE).is_ok());
        assert_eq!(
            check(&root, file(0o644, 1, 1), MAY_EXEC),
            Err(Errno::EACCES)
        );
        assert!(check(&root, file(0o001, 1, 1), MAY_EXEC).is_ok());
        let dir = Owner {
            mode: S_IFDIR,
            uid: 1,
            gid: 1,
        };
        assert!(check(&root, dir, MAY_EXEC | MAY_WRITE).is_ok());
    }

    #[test]
    fn sticky_and_chown_rules() {
        let dir = Owner {
            mode: S_IFDIR | 0o1777,
            uid: 1,
            gid: 1,
        };
        let f = file(0o644, 2, 2);
        assert!(sticky_denies(&Cred::user(3, 3), dir, f));
        assert!(!sticky_denies(&Cred::user(2, 3), dir, f));
        assert!(!sticky_denies(&Cred::user(1, 3), dir, f));
        assert!(!sticky_denies(&Cred::root(), dir, f));
        let me = Cred {
            uid: 2,
            gid: 2,
            groups: alloc::vec![7],
        };
        assert!(may_chown_uid(&me, f, 2));
        assert!(!may_chown_uid(&me, f, 3));
        assert!(may_chown_gid(&me, f, 7));
        assert!(!may_chown_gid(&me, f, 8));
        assert!(!may_chown_gid(&Cred::user(3, 7), f, 7));
    }
}
