//! A `BlockDev` over a file or a block device, for the host tools.
//!
//! Reads and writes are positioned (`pread`/`pwrite`), `flush` is
//! `fdatasync`, and the size is the file length (or, for a block device,
//! where seeking to the end lands). [`FileDev::lock_exclusive`] takes an
//! open-file-description write lock over the whole device, the kind QEMU
//! takes on the images it uses, so a volume in use is detected.

use scoutvm_fs::storage::dev::{check_request, BlockDev, IoError};
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

/// Why [`FileDev::lock_exclusive`] failed.
#[derive(Debug)]
pub enum LockError {
    /// Another open file (another process, or QEMU) holds a lock on it.
    InUse,
    Io(std::io::Error),
}

fn whole_file(l_type: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end, however far it grows
        l_pid: 0,
    }
}

impl FileDev {
    /// Whether another open file holds a lock on some part of the device
    /// that a whole-device write lock would conflict with (takes no lock).
    pub fn locked_elsewhere(&self) -> Result<bool, std::io::Error> {
        use nix::fcntl::{fcntl, FcntlArg};
        let mut probe = whole_file(libc::F_WRLCK);
        fcntl(&self.file, FcntlArg::F_OFD_GETLK(&mut probe))?;
        Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
    }

    /// Lock the whole device for this open file (fcntl `F_OFD_SETLK`,
    /// write lock): refused while anyone else holds any lock on it, and
    /// it makes QEMU (and another `scoutvm mount`) refuse the device until
    /// this `FileDev` is dropped.
    pub fn lock_exclusive(&self) -> Result<(), LockError> {
        use nix::fcntl::{fcntl, FcntlArg};
        let whole = whole_file(libc::F_WRLCK);
        match fcntl(&self.file, FcntlArg::F_OFD_SETLK(&whole)) {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => {
                Err(LockError::InUse)
            }
            Err(e) => Err(LockError::Io(e.into())),
        }
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
