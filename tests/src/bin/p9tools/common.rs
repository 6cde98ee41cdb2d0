//! Shared by the guest tools (p9check, p9fsx, p9bench): a seeded RNG,
//! position-addressable data patterns and checksums, xattr syscalls, and
//! small helpers for errors. Built static and run inside the Linux guest
//! against a 9P mount; nothing here is specific to one server.
#![allow(dead_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// splitmix64: small, seeded, good enough to pick operations and bytes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The byte at `offset` of the pattern named `key`: any range of a file can
/// be regenerated and checked without keeping a copy.
pub fn pattern_fill(key: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = 0;
    let mut off = offset;
    while pos < buf.len() {
        let word = mix(key ^ (off / 8).wrapping_mul(0xd6e8_feb8_6659_fd93)).to_le_bytes();
        let skip = (off % 8) as usize;
        let n = (8 - skip).min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&word[skip..skip + n]);
        pos += n;
        off += n as u64;
    }
}

/// A streaming 64-bit checksum (FNV-1a over 8-byte words, then mixed).
#[derive(Clone, Debug)]
pub struct Checksum {
    h: u64,
    len: u64,
    tail: Vec<u8>,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            h: 0xcbf2_9ce4_8422_2325,
            len: 0,
            tail: Vec::new(),
        }
    }
}

impl Checksum {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let n = (8 - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.tail.len() == 8 {
                let w = u64::from_le_bytes(self.tail[..].try_into().unwrap());
                self.word(w);
                self.tail.clear();
            }
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        self.tail.extend_from_slice(chunks.remainder());
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29);
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.h;
        for &b in &self.tail {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        mix(h ^ self.len)
    }

    pub fn of(data: &[u8]) -> u64 {
        let mut c = Checksum::default();
        c.update(data);
        c.finish()
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// `setxattr(2)`; `flags` is 0, `XATTR_CREATE` (1) or `XATTR_REPLACE` (2).
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: valid NUL-terminated strings and a live buffer of `value.len()`.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getxattr(2)`, sizing the buffer with a first call.
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(path)?, cname(name)?);
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the value's size.
        let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` is live and `buf.len()` bytes long.
        let got =
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// `listxattr(2)`: the names, sorted.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path)?;
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the list's size.
        let size = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` is live and `buf.len()` bytes long.
        let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        let mut names: Vec<String> = buf
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        names.sort();
        return Ok(names);
    }
}

/// `removexattr(2)`.
pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ask the guest kernel to drop clean page cache, so reads go to the server
/// (best effort: needs root).
pub fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3");
}

/// An errno of an io::Error, or -1 when there is none.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Parse `--name value` style options into (name, value) pairs plus
/// positional arguments.
pub struct Args {
    pub positional: Vec<String>,
    pub options: Vec<(String, String)>,
}

impl Args {
    pub fn parse(args: impl Iterator<Item = String>, flags: &[&str]) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = args.peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if flags.contains(&name) {
                    options.push((name.to_string(), "1".to_string()));
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    options.push((name.to_string(), v));
                }
            } else {
                positional.push(a);
            }
        }
        Ok(Args {
            positional,
            options,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: bad number {v:?}")),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Names given that are not in `known`.
    pub fn unknown(&self, known: &[&str]) -> Option<String> {
        self.options
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()))
            .map(|(n, _)| format!("unknown option --{n}"))
    }
}
