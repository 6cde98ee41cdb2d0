//! The shell's line editor: bytes from the serial port in, echo bytes and
//! finished lines out. Printable ASCII, backspace/DEL, Ctrl-U (kill line),
//! Ctrl-C (drop line), and history on the up/down arrows (ESC [ A / B).
//! The line is a fixed-size `heapless::String`; input beyond it is refused
//! with a bell, and history keeps the last [`HISTORY_MAX`] lines.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Longest command line.
pub const LINE_MAX: usize = 256;
/// Lines of history kept.
pub const HISTORY_MAX: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Started,
    Csi,
}

/// Editing state of one console.
pub struct LineEditor {
    line: heapless::String<LINE_MAX>,
    history: VecDeque<String>,
    /// Index into history while browsing (0 = newest); None = editing.
    browsing: Option<usize>,
    esc: Esc,
    last_was_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub fn new() -> Self {
        LineEditor {
            line: heapless::String::new(),
            history: VecDeque::new(),
            browsing: None,
            esc: Esc::None,
            last_was_cr: false,
        }
    }

    /// The line being edited.
    pub fn current(&self) -> &str {
        &self.line
    }

    pub fn history(&self) -> impl Iterator<Item = &str> {
        self.history.iter().map(|s| s.as_str())
    }

    fn erase_line(&mut self, echo: &mut Vec<u8>) {
        for _ in 0..self.line.len() {
            echo.extend_from_slice(b"\x08 \x08");
        }
        self.line.clear();
    }

    fn show(&mut self, text: &str, echo: &mut Vec<u8>) {
        self.erase_line(echo);
        for c in text.chars() {
            if self.line.push(c).is_err() {
                break;
            }
        }
        echo.extend_from_slice(self.line.as_bytes());
    }

    fn history_step(&mut self, older: bool, echo: &mut Vec<u8>) {
        if self.history.is_empty() {
            echo.push(0x07);
            return;
        }
        let next = match (self.browsing, older) {
            (None, true) => Some(0),
            (None, false) => None,
            (Some(i), true) => Some((i + 1).min(self.history.len() - 1)),
            (Some(0), false) => None,
            (Some(i), false) => Some(i - 1),
        };
        self.browsing = next;
        let text = match next {
            Some(i) => self.history[self.history.len() - 1 - i].clone(),
            None => String::new(),
        };
        self.show(&text, echo);
    }

    /// Feed one input byte. Bytes to echo are appended to `echo`; a
    /// finished line is returned (already added to history if non-blank).
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Option<String> {
        let was_cr = core::mem::replace(&mut self.last_was_cr, false);
        match self.esc {
            Esc::Started => {
                self.esc = if byte == b'[' { Esc::Csi } else { Esc::None };
                return None;
            }
            Esc::Csi => {
                // Final bytes of a CSI sequence are 0x40..=0x7e.
                if (0x40..=0x7e).contains(&byte) {
                    self.esc = Esc::None;
                    match byte {
                        b'A' => self.history_step(true, echo),
                        b'B' => self.history_step(false, echo),
                        _ => {}
                    }
                }
                return None;
            }
            Esc::None => {}
        }
        match byte {
            0x1b => self.esc = Esc::Started,
            b'\n' if was_cr => {}
            b'\r' | b'\n' => {
                self.last_was_cr = byte == b'\r';
                echo.extend_from_slice(b"\r\n");
                let line = self.line.trim().to_string();
                self.line.clear();
                self.browsing = None;
                if !line.is_empty() && self.history.back() != Some(&line) {
                    if self.history.len() == HISTORY_MAX {
                        self.history.pop_front();
                    }
                    self.history.push_back(line.clone());
                }
                return Some(line);
            }
            0x08 | 0x7f if self.line.pop().is_some() => echo.extend_from_slice(b"\x08 \x08"),
            0x15 => self.erase_line(echo),
            0x03 => {
                self.line.clear();
                self.browsing = None;
                echo.extend_from_slice(b"^C\r\n");
                return Some(String::new());
            }
            0x20..=0x7e => {
                if self.line.push(byte as char).is_ok() {
                    echo.push(byte);
                } else {
                    echo.push(0x07);
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(ed: &mut LineEditor, input: &[u8]) -> (Vec<String>, Vec<u8>) {
        let mut echo = Vec::new();
        let mut lines = Vec::new();
        for &b in input {
            if let Some(l) = ed.feed(b, &mut echo) {
                lines.push(l);
            }
        }
        (lines, echo)
    }

    #[test]
    fn typing_backspace_and_crlf() {
        let mut ed = LineEditor::new();
        let (lines, echo) = feed_all(&mut ed, b"helpx\x7f\r\nver\x08\x08\x08version\r");
        assert_eq!(lines, vec!["help".to_string(), "version".to_string()]);
        assert!(echo.starts_with(b"helpx\x08 \x08\r\n"));
        // Backspace on an empty line echoes nothing.
        let (_, echo) = feed_all(&mut ed, b"\x7f");
        assert!(echo.is_empty());
    }

    #[test]
    fn history_up_and_down() {
        let mut ed = LineEditor::new();
        feed_all(&mut ed, b"one\rtwo\rtwo\r\r");
        assert_eq!(ed.history().collect::<Vec<_>>(), vec!["one", "two"]);
        feed_all(&mut ed, b"\x1b[A");
        assert_eq!(ed.current(), "two");
        feed_all(&mut ed, b"\x1b[A\x1b[A");
        assert_eq!(ed.current(), "one");
        feed_all(&mut ed, b"\x1b[B");
        assert_eq!(ed.current(), "two");
        feed_all(&mut ed, b"\x1b[B");
        assert_eq!(ed.current(), "");
        let (lines, _) = feed_all(&mut ed, b"\x1b[A\r");
        assert_eq!(lines, vec!["two".to_string()]);
    }

    #[test]
    fn line_is_bounded_and_ctrl_keys_work() {
        let mut ed = LineEditor::new();
        let long = vec![b'x'; LINE_MAX + 10];
        let (_, echo) = feed_all(&mut ed, &long);
        assert_eq!(ed.current().len(), LINE_MAX);
        assert_eq!(echo.iter().filter(|&&b| b == 0x07).count(), 10);
        feed_all(&mut ed, b"\x15");
        assert_eq!(ed.current(), "");
        let (lines, _) = feed_all(&mut ed, b"abc\x03");
        assert_eq!(lines, vec![String::new()]);
        // Unknown escape sequences are swallowed.
        let (lines, _) = feed_all(&mut ed, b"\x1b[1;5Cok\r");
        assert_eq!(lines, vec!["ok".to_string()]);
    }
}
