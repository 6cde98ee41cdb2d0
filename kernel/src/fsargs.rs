//! Argument parsing of the shell's volume commands (`mkfs`, `ls`, paths),
//! kept free of hardware so it is unit-tested on the host. The commands
//! themselves (`fscmds.rs` in the binary) call these and print the
//! one-line errors they return.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use scoutvm_fs::format::super_block::QuorumConfig;
use scoutvm_fs::format::{FORMAT_VERSION_MAX, LG_BLOCK_SIZE, SM_BLOCK_SIZE};
use scoutvm_fs::tools::mkfs;

/// Longest path the shell resolves, in components.
pub const PATH_DEPTH_MAX: usize = 64;

/// What `mkfs` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MkfsArgs {
    pub force: bool,
    pub allow_small: bool,
    pub fmt_vers: u64,
    /// 0: the whole device.
    pub max_meta_bytes: u64,
    pub max_data_bytes: u64,
    pub zone_blocks: u64,
    /// Empty: the caller picks slot 0 at the node's address.
    pub qconf: QuorumConfig,
    pub quorum_given: bool,
}

pub const MKFS_USAGE: &str =
    "mkfs [-f] [-A] [-V 1|2] [-m SIZE] [-d SIZE] [-z BLOCKS] [-Q NR,ADDR,PORT]...";

/// Parse `mkfs` options (the host tool's flags; the devices are the
/// node's, so none are named).
pub fn parse_mkfs(args: &[String]) -> Result<MkfsArgs, String> {
    let mut a = MkfsArgs {
        force: false,
        allow_small: false,
        fmt_vers: FORMAT_VERSION_MAX,
        max_meta_bytes: 0,
        max_data_bytes: 0,
        zone_blocks: 0,
        qconf: QuorumConfig::default(),
        quorum_given: false,
    };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let mut value = || -> Result<&str, String> {
            i += 1;
            args.get(i)
                .map(|s| s.as_str())
                .ok_or_else(|| format!("option {flag} needs a value"))
        };
        match flag {
            "-f" => a.force = true,
            "-A" => a.allow_small = true,
            "-V" => {
                let v = value()?;
                a.fmt_vers = match v.parse::<u64>() {
                    Ok(n) if (1..=FORMAT_VERSION_MAX).contains(&n) => n,
                    _ => return Err(format!("format version '{v}' must be 1 or 2")),
                };
            }
            "-m" | "-d" => {
                let v = value()?;
                let n = mkfs::parse_size(v)?;
                let unit = if flag == "-m" {
                    LG_BLOCK_SIZE
                } else {
                    SM_BLOCK_SIZE
                } as u64;
                let n = n - n % unit;
                if n == 0 {
                    return Err(format!("size '{v}' is smaller than one block"));
                }
                if flag == "-m" {
                    a.max_meta_bytes = n;
                } else {
                    a.max_data_bytes = n;
                }
            }
            "-z" => {
                let v = value()?;
                a.zone_blocks = v
                    .parse()
                    .map_err(|_| format!("invalid zone blocks '{v}'"))?;
            }
            "-Q" => {
                let v = value()?;
                mkfs::parse_quorum_slot(&mut a.qconf, v)?;
                a.quorum_given = true;
            }
            other => return Err(format!("unknown argument '{other}' (usage: {MKFS_USAGE})")),
        }
        i += 1;
    }
    Ok(a)
}

/// The components of an absolute or relative path (relative to the
/// root): `.` dropped, `..` kept for the filesystem to resolve.
pub fn path_components(path: &str) -> Result<Vec<&str>, String> {
    if path.is_empty() {
        return Err("empty path".to_string());
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.len() > PATH_DEPTH_MAX {
        return Err(format!("path deeper than {PATH_DEPTH_MAX} components"));
    }
    if let Some(p) = parts.iter().find(|p| p.len() > 255) {
        return Err(format!("name too long: {}...", &p[..16]));
    }
    Ok(parts)
}

/// Split a path into its parent's components and the last name.
pub fn parent_and_name(path: &str) -> Result<(Vec<&str>, &str), String> {
    let mut parts = path_components(path)?;
    match parts.pop() {
        Some("..") | None => Err(format!("'{path}' names no entry")),
        Some(name) => Ok((parts, name)),
    }
}

/// `ls` options: `-l` and at most one path.
pub fn parse_ls(args: &[String]) -> Result<(bool, String), String> {
    let mut long = false;
    let mut path = None;
    for a in args {
        match a.as_str() {
            "-l" => long = true,
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown option '{s}' (usage: ls [-l] [PATH])"))
            }
            s => {
                if path.replace(s.to_string()).is_some() {
                    return Err("usage: ls [-l] [PATH]".to_string());
                }
            }
        }
    }
    Ok((long, path.unwrap_or_else(|| "/".to_string())))
}

/// `rwxr-xr-x` with the type letter in front.
pub fn mode_string(mode: u32) -> String {
    use scoutvm_fs::posix::types::*;
    let t = match mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFLNK => 'l',
        S_IFCHR => 'c',
        S_IFBLK => 'b',
        S_IFIFO => 'p',
        S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for (shift, special, lo, hi) in [
        (6, S_ISUID, 's', 'S'),
        (3, S_ISGID, 's', 'S'),
        (0, S_ISVTX, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => lo,
            (true, false) => hi,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// The `df` table, as the reference `scoutfs df` lays it out: a row for
/// the metadata device (64 KiB blocks) and one for the data device (4 KiB
/// blocks), each `(total, free)` in its own blocks, never added together;
/// every column right-aligned to its widest cell.
pub fn df_table(meta: (u64, u64), data: (u64, u64)) -> String {
    let row = |kind: &str, size: &str, (total, free): (u64, u64)| {
        let used = total.saturating_sub(free);
        let pct = used.saturating_mul(100).checked_div(total).unwrap_or(0);
        [
            kind.to_string(),
            size.to_string(),
            total.to_string(),
            used.to_string(),
            free.to_string(),
            pct.to_string(),
        ]
    };
    let header = ["Type", "Size", "Total", "Used", "Free", "Use%"].map(|c| c.to_string());
    let rows = [
        header,
        row("MetaData", "64KB", meta),
        row("Data", "4KB", data),
    ];
    let mut out = String::new();
    for r in &rows {
        for (c, cell) in r.iter().enumerate() {
            let width = rows.iter().map(|r| r[c].len()).max().unwrap_or(0);
            out.push_str(&format!("{cell:>width$}  "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(|w| w.to_string()).collect()
    }

    #[test]
    fn mkfs_options() {
        let a = parse_mkfs(&args("-f -A -V 1 -m 1G -d 4G -Q 0,10.0.2.15,7100")).unwrap();
        assert!(a.force && a.allow_small && a.quorum_given);
        assert_eq!(a.fmt_vers, 1);
        assert_eq!(a.max_meta_bytes, 1 << 30);
        assert_eq!(a.max_data_bytes, 4 << 30);
        assert_eq!(a.qconf.configured().count(), 1);
        let d = parse_mkfs(&[]).unwrap();
        assert!(!d.force && !d.quorum_given);
        assert_eq!(d.fmt_vers, FORMAT_VERSION_MAX);
        for bad in [
            "-V 3",
            "-V",
            "-m",
            "-m 1K",
            "-m zz",
            "-Q 0,1.2.3",
            "-x",
            "meta.img",
            "-z q",
        ] {
            assert!(parse_mkfs(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_and_ls() {
        assert_eq!(path_components("/a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert!(path_components("/").unwrap().is_empty());
        assert!(path_components("").is_err());
        let deep = "/x".repeat(PATH_DEPTH_MAX + 1);
        assert!(path_components(&deep).is_err());
        assert!(path_components(&"n".repeat(300)).is_err());
        assert_eq!(parent_and_name("/a/b").unwrap(), (vec!["a"], "b"));
        assert_eq!(parent_and_name("b").unwrap(), (vec![], "b"));
        assert!(parent_and_name("/").is_err());
        assert!(parent_and_name("/a/..").is_err());
        assert_eq!(parse_ls(&args("-l /x")).unwrap(), (true, "/x".to_string()));
        assert_eq!(parse_ls(&[]).unwrap(), (false, "/".to_string()));
        assert!(parse_ls(&args("-z")).is_err());
        assert!(parse_ls(&args("/a /b")).is_err());
    }

    #[test]
    fn modes() {
        use scoutvm_fs::posix::types::*;
        assert_eq!(mode_string(S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(S_IFREG | 0o4644), "-rwSr--r--");
        assert_eq!(mode_string(S_IFREG | 0o2755), "-rwxr-sr-x");
        assert_eq!(mode_string(S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(S_IFLNK | 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn df_keeps_metadata_and_data_apart() {
        let t = df_table((16_384, 12_000), (262_144, 262_000));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[0]),
            ["Type", "Size", "Total", "Used", "Free", "Use%"]
        );
        assert_eq!(
            cells(lines[1]),
            ["MetaData", "64KB", "16384", "4384", "12000", "26"]
        );
        assert_eq!(
            cells(lines[2]),
            ["Data", "4KB", "262144", "144", "262000", "0"]
        );
        // Right-aligned columns: every row is as long as the header.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
    }

    #[test]
    fn df_survives_empty_and_inconsistent_counts() {
        // No blocks at all, and more free than total (never a panic).
        let t = df_table((0, 0), (10, 20));
        assert!(t.lines().nth(1).unwrap().ends_with(" 0  "), "{t}");
        assert!(t.lines().nth(2).unwrap().contains(" 0  "), "{t}");
    }
}
