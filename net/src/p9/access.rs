//! Who a 9P client is and whether it may attach at all.
//!
//! Owns the client-network allow-list ([`AllowList`] of IPv4 [`Cidr`]s,
//! from `p9.allow=`) and the mapping of a `Tattach`'s `uname`/`n_uname` to
//! an [`Identity`] (uid, learned groups, root squash). The server calls
//! these at attach and builds every operation's `Cred` from the fid's
//! identity. Invariants: an identity's uid never changes; its learned
//! groups are bounded by [`GROUPS_MAX`]; a squashed root never acts as 0.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use scoutvm_fs::format::super_block::parse_ipv4;
use scoutvm_fs::posix::types::Cred;

/// `n_uname` when the client sends none (Linux `INVALID_UID`).
pub const NONUNAME: u32 = u32::MAX;
/// The uid (and gid) of `nobody`: unknown users and a squashed root.
pub const NOBODY: u32 = 65534;
/// Groups an identity learns from the gids its creations carry.
pub const GROUPS_MAX: usize = 16;
/// CIDRs an allow-list holds at most.
pub const ALLOW_MAX: usize = 32;

/// An IPv4 network, `A.B.C.D/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 4],
    pub prefix: u8,
}

impl Cidr {
    /// Parse `A.B.C.D/N` or a bare address (a /32).
    pub fn parse(s: &str) -> Result<Cidr, &'static str> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = parse_ipv4(a).ok_or("bad IPv4 address")?;
        let prefix = match p {
            None => 32,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= 32 && !p.starts_with('+') => n,
                _ => return Err("bad prefix length (0..=32)"),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }

    /// The network of `addr/prefix` (host bits cleared).
    pub fn network(addr: [u8; 4], prefix: u8) -> Cidr {
        let c = Cidr {
            addr,
            prefix: prefix.min(32),
        };
        Cidr {
            addr: (u32::from_be_bytes(addr) & c.mask()).to_be_bytes(),
            prefix: c.prefix,
        }
    }

    pub fn contains(&self, a: [u8; 4]) -> bool {
        let m = self.mask();
        u32::from_be_bytes(a) & m == u32::from_be_bytes(self.addr) & m
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.addr;
        write!(f, "{}.{}.{}.{}/{}", a[0], a[1], a[2], a[3], self.prefix)
    }
}

/// The client networks that may attach. Empty means nobody.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<Cidr>,
}

impl AllowList {
    /// Everyone (`0.0.0.0/0`).
    pub fn any() -> AllowList {
        AllowList {
            nets: alloc::vec![Cidr {
                addr: [0; 4],
                prefix: 0
            }],
        }
    }

    pub fn of(nets: Vec<Cidr>) -> AllowList {
        AllowList { nets }
    }

    /// `CIDR[,CIDR...]`, or `any`.
    pub fn parse(s: &str) -> Result<AllowList, String> {
        if s == "any" {
            return Ok(AllowList::any());
        }
        let mut nets = Vec::new();
        for part in s.split(',') {
            if nets.len() == ALLOW_MAX {
                return Err(alloc::format!("more than {ALLOW_MAX} networks"));
            }
            nets.push(Cidr::parse(part).map_err(|e| alloc::format!("'{part}': {e}"))?);
        }
        Ok(AllowList { nets })
    }

    pub fn allows(&self, a: [u8; 4]) -> bool {
        self.nets.iter().any(|n| n.contains(a))
    }

    pub fn nets(&self) -> &[Cidr] {
        &self.nets
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("(nobody)");
        }
        for (i, n) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// The uid a `Tattach` names: `n_uname` when given, else `uname` as
/// `root`, `nobody` or a decimal uid. `None`: an unknown user name.
pub fn uid_of(uname: &[u8], n_uname: u32) -> Option<u32> {
    if n_uname != NONUNAME {
        return Some(n_uname);
    }
    match uname {
        b"root" => Some(0),
        b"nobody" | b"" => Some(NOBODY),
        _ => {
            let s = core::str::from_utf8(uname).ok()?;
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u32>().ok().filter(|&u| u != NONUNAME)
        }
    }
}

/// One user of a connection: the uid every fid attached by it acts as.
#[derive(Debug)]
pub struct Identity {
    /// The effective uid (after root squash).
    pub uid: u32,
    /// What the client asked for.
    pub uname: String,
    pub asked_uid: u32,
    pub squashed: bool,
    /// gids this user created files with (the client sends the caller's
    /// fsgid in every create): its primary group and groups it is in.
    groups: RefCell<Vec<u32>>,
}

impl Identity {
    /// The identity for `asked_uid`; with `root_squash`, root becomes
    /// `nobody`.
    pub fn new(uname: &[u8], asked_uid: u32, root_squash: bool) -> Identity {
        let squashed = root_squash && asked_uid == 0;
        Identity {
            uid: if squashed { NOBODY } else { asked_uid },
            uname: String::from_utf8_lossy(&uname[..uname.len().min(64)]).into_owned(),
            asked_uid,
            squashed,
            groups: RefCell::new(Vec::new()),
        }
    }

    /// A gid the client says this user creates files with (`Tlcreate`,
    /// `Tmkdir`, ...), after squashing; learned as one of its groups.
    pub fn creation_gid(&self, gid: u32) -> u32 {
        let gid = if self.squashed && gid == 0 {
            NOBODY
        } else {
            gid
        };
        let mut g = self.groups.borrow_mut();
        if !g.contains(&gid) && g.len() < GROUPS_MAX {
            g.push(gid);
        }
        gid
    }

    /// The primary gid: the first one learned, else the uid (user private
    /// groups), `nobody`'s for a squashed root.
    pub fn gid(&self) -> u32 {
        if self.uid == 0 {
            return 0;
        }
        self.groups.borrow().first().copied().unwrap_or(self.uid)
    }

    /// Who operations on this identity's fids run as.
    pub fn cred(&self) -> Cred {
        if self.uid == 0 {
            return Cred::root();
        }
        Cred {
            uid: self.uid,
            gid: self.gid(),
            groups: self.groups.borrow().clone(),
        }
    }

    /// The cred of a creation that carries `gid` (the new file's group).
    pub fn cred_creating(&self, gid: u32) -> Cred {
        let gid = self.creation_gid(gid);
        let mut c = self.cred();
        c.gid = gid;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_match() {
        let c = Cidr::parse("10.0.2.0/24").unwrap();
        assert!(c.contains([10, 0, 2, 2]));
        assert!(c.contains([10, 0, 2, 255]));
        assert!(!c.contains([10, 0, 3, 1]));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix, 32);
        assert!(Cidr::parse("1.2.3.4").unwrap().contains([1, 2, 3, 4]));
        assert!(!Cidr::parse("1.2.3.4").unwrap().contains([1, 2, 3, 5]));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains([200, 1, 1, 1]));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.4/33",
            "1.2.3.4/",
            "a.b.c.d",
            "1..2.3",
            "1.2.3.4/+8",
            "1.2.3.0001",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cidr::network([10, 0, 2, 15], 24),
            Cidr::parse("10.0.2.0/24").unwrap()
        );
        assert_eq!(
            alloc::format!("{}", Cidr::network([10, 0, 2, 15], 24)),
            "10.0.2.0/24"
        );
    }

    #[test]
    fn allow_list() {
        let a = AllowList::parse("10.0.2.0/24,192.168.1.7").unwrap();
        assert!(a.allows([10, 0, 2, 9]));
        assert!(a.allows([192, 168, 1, 7]));
        assert!(!a.allows([192, 168, 1, 8]));
        assert!(AllowList::parse("any").unwrap().allows([8, 8, 8, 8]));
        assert!(AllowList::parse("10.0.0.0/8,").is_err());
        assert!(!AllowList::default().allows([127, 0, 0, 1]));
        assert_eq!(alloc::format!("{a}"), "10.0.2.0/24,192.168.1.7/32");
    }

    #[test]
    fn uids_and_squash() {
        assert_eq!(uid_of(b"whatever", 1000), Some(1000));
        assert_eq!(uid_of(b"root", NONUNAME), Some(0));
        assert_eq!(uid_of(b"nobody", NONUNAME), Some(NOBODY));
        assert_eq!(uid_of(b"1001", NONUNAME), Some(1001));
        assert_eq!(uid_of(b"alice", NONUNAME), None);
        assert_eq!(uid_of(b"4294967295", NONUNAME), None);
        assert_eq!(uid_of(b"99999999999", NONUNAME), None);

        let r = Identity::new(b"root", 0, true);
        assert_eq!((r.uid, r.squashed), (NOBODY, true));
        assert_eq!(r.cred().uid, NOBODY);
        assert_eq!(r.cred_creating(0).gid, NOBODY);
        let r = Identity::new(b"root", 0, false);
        assert_eq!(r.cred(), Cred::root());

        let u = Identity::new(b"", 1000, true);
        assert_eq!(u.cred(), Cred::user(1000, 1000));
        assert_eq!(u.cred_creating(100).gid, 100);
        let c = u.cred();
        assert_eq!(c.gid, 100);
        assert!(c.in_group(100));
        for g in 0..100 {
            u.creation_gid(2000 + g);
        }
        assert_eq!(u.cred().groups.len(), GROUPS_MAX);
    }
}
