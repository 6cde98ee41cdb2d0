//! A `BlockDev` over a file or a block device, for the host tools.
//!
//! Reads and writes are positioned (`pread`/`pwrite`), `flush` is
//! `fdatasync`, and the size is the file length (or, for a block device,
//! where seeking to the end lands).

use scoutvm_fs::dev::{check_request, BlockDev, IoError};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct FileDev {
    file: File,
    size: u64,
}

impl FileDev {
    /// Open an existing file or device.
    pub fn open(path: &Path, writable: bool) -> std::io::Result<FileDev> {
        let mut file = OpenOptions::new().read(true).write(writable).open(path)?;
        let meta = file.metadata()?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            file.seek(SeekFrom::End(0))?
        };
        Ok(FileDev { file, size })
    }
}

impl BlockDev for FileDev {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_request(off, buf.len(), self.size)?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|_| IoError::Device)
    }

    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        check_request(off, buf.len(), self.size)?;
        self.file
            .write_all_at(buf, off)
            .map_err(|_| IoError::Device)
    }

    fn flush(&self) -> Result<(), IoError> {
        self.file.sync_data().map_err(|_| IoError::Device)
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }
}
