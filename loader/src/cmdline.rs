//! `cmdline.txt` on the ESP: `key=value` words over any number of lines,
//! `#` to the end of a line is a comment. The result is one line of words
//! separated by single spaces, as the kernel gets from PVH. Anything that
//! is not printable ASCII, or a line longer than the kernel keeps, is an
//! error: the loader then says so and boots with the built-in default.

/// The default command line (the same text `cargo xtask image` writes).
pub const DEFAULT_TEXT: &[u8] = include_bytes!("../cmdline.txt");

/// Longest command line kept, without the NUL (the kernel keeps 4096 bytes).
pub const MAX: usize = 4095;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// A byte that is not printable ASCII, tab, CR or LF, at this offset.
    BadByte { offset: usize, byte: u8 },
    /// The words do not fit in [`MAX`] bytes.
    TooLong,
}

impl CmdlineError {
    /// A one-line description for the console.
    pub fn describe(&self, out: &mut [u8]) -> usize {
        let mut w = Writer { out, len: 0 };
        match *self {
            CmdlineError::BadByte { offset, byte } => {
                w.put(b"byte 0x");
                w.hex(byte as u64, 2);
                w.put(b" at offset ");
                w.dec(offset as u64);
                w.put(b" is not printable ASCII");
            }
            CmdlineError::TooLong => w.put(b"longer than 4095 bytes"),
        }
        w.len
    }
}

/// Bounded byte writer for messages (no allocator in the loader).
pub struct Writer<'a> {
    pub out: &'a mut [u8],
    pub len: usize,
}

impl Writer<'_> {
    pub fn put(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.out.len() {
                self.out[self.len] = b;
                self.len += 1;
            }
        }
    }

    pub fn hex(&mut self, v: u64, digits: u32) {
        for i in (0..digits).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            self.put(&[if d < 10 { b'0' + d } else { b'a' + d - 10 }]);
        }
    }

    pub fn dec(&mut self, v: u64) {
        let mut buf = [0u8; 20];
        let mut n = v;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&buf[i..]);
    }
}

/// Turn the file's bytes into one command line in `out`; returns its length.
pub fn parse(text: &[u8], out: &mut [u8; MAX]) -> Result<usize, CmdlineError> {
    let mut len = 0;
    let mut offset = 0;
    for line in text.split(|&b| b == b'\n') {
        for (i, &b) in line.iter().enumerate() {
            let ok = b == b'\t' || b == b'\r' || (0x20..0x7f).contains(&b);
            if !ok {
                return Err(CmdlineError::BadByte {
                    offset: offset + i,
                    byte: b,
                });
            }
        }
        offset += line.len() + 1;
        let code = match line.iter().position(|&b| b == b'#') {
            Some(p) => &line[..p],
            None => line,
        };
        for word in code
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
        {
            let need = word.len() + usize::from(len > 0);
            if len + need > MAX {
                return Err(CmdlineError::TooLong);
            }
            if len > 0 {
                out[len] = b' ';
                len += 1;
            }
            out[len..len + word.len()].copy_from_slice(word);
            len += word.len();
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &[u8]) -> Result<String, CmdlineError> {
        let mut out = [0u8; MAX];
        parse(text, &mut out).map(|n| String::from_utf8(out[..n].to_vec()).unwrap())
    }

    #[test]
    fn words_over_lines_with_comments_become_one_line() {
        let got = run(b"# top\r\nnode=n1   ip=dhcp # trailing\n\n\tmeta=vda\n").unwrap();
        assert_eq!(got, "node=n1 ip=dhcp meta=vda");
        assert_eq!(run(b"").unwrap(), "");
    }

    #[test]
    fn the_default_file_parses() {
        let got = run(DEFAULT_TEXT).unwrap();
        assert!(got.starts_with("node="), "{got}");
        assert!(!got.contains('#'));
    }

    #[test]
    fn non_ascii_and_overlong_are_errors() {
        assert_eq!(
            run(b"node=a\nn\xc3\xa9").unwrap_err(),
            CmdlineError::BadByte {
                offset: 8,
                byte: 0xc3
            }
        );
        assert_eq!(
            run(b"a\0").unwrap_err(),
            CmdlineError::BadByte { offset: 1, byte: 0 }
        );
        let long = vec![b'x'; MAX + 1];
        assert_eq!(run(&long).unwrap_err(), CmdlineError::TooLong);
        let exact = vec![b'x'; MAX];
        assert_eq!(run(&exact).unwrap().len(), MAX);
        let mut msg = [0u8; 80];
        let n = CmdlineError::BadByte {
            offset: 12,
            byte: 0xc3,
        }
        .describe(&mut msg);
        assert_eq!(&msg[..n], b"byte 0xc3 at offset 12 is not printable ASCII");
    }
}
