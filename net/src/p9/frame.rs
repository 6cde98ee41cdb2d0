//! Incremental 9P framing: bytes from a stream go in, whole frames come out.
//!
//! Owned by one connection; the server (and the test client) feed it what
//! the socket delivers. Invariants: it never buffers more than `msize`
//! bytes (a whole frame always fits, and a peer cannot make it grow), every
//! frame it hands out has a valid `size` field no larger than `msize`, and
//! after a framing error it stays failed: the stream cannot be resynced, so
//! the caller closes the connection.

use alloc::vec::Vec;

use super::wire::{frame_len, DecodeError, HEADER_LEN};

/// Cuts a byte stream into frames of at most `msize` bytes.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames.
    start: usize,
    msize: u32,
    failed: Option<DecodeError>,
}

impl FrameReader {
    /// A reader accepting frames of up to `msize` bytes: the server's
    /// largest msize before `Tversion`, the negotiated one after.
    pub fn new(msize: u32) -> FrameReader {
        assert!(msize as usize >= HEADER_LEN, "msize below the header size");
        FrameReader {
            buf: Vec::new(),
            start: 0,
            msize,
            failed: None,
        }
    }

    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// Change the frame bound (after `Rversion`). Frames already buffered
    /// are checked against the new bound when they are taken.
    pub fn set_msize(&mut self, msize: u32) {
        assert!(msize as usize >= HEADER_LEN, "msize below the header size");
        self.msize = msize;
    }

    /// Bytes fed and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes [`feed`](Self::feed) accepts now.
    pub fn room(&self) -> usize {
        (self.msize as usize).saturating_sub(self.buffered())
    }

    /// Take as many of `bytes` as there is room for; returns how many. Shaped
    /// for smoltcp's `TcpSocket::recv(|buf| (reader.feed(buf), ()))`.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        if n == 0 {
            return 0;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(&bytes[..n]);
        debug_assert!(self.buffered() <= self.msize as usize);
        n
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the
    /// framing error that ends this stream.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let pending = &self.buf[self.start..];
        let size = match frame_len(pending) {
            Ok(Some(size)) => size,
            Ok(None) => return Ok(None),
            Err(err) => return Err(self.fail(err)),
        };
        if size > self.msize as usize {
            return Err(self.fail(DecodeError::TooBig {
                size: size as u32,
                max: self.msize,
            }));
        }
        if pending.len() < size {
            return Ok(None);
        }
        let frame = if self.start == 0 && self.buf.len() == size {
            // The common case, one frame per read: hand the buffer over.
            core::mem::take(&mut self.buf)
        } else {
            let frame = pending[..size].to_vec();
            self.start += size;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            frame
        };
        debug_assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
        Ok(Some(frame))
    }

    fn fail(&mut self, err: DecodeError) -> DecodeError {
        self.failed = Some(err);
        err
    }
}
