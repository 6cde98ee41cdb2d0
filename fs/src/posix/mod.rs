//! The POSIX half of a mount: [`mount::Mount`] and its operations, the
//! vocabulary front ends use ([`types`]), the item cache ([`item`]) and
//! the item layouts of each kind of object (inodes, dirents, xattrs,
//! symlinks, data extents, orphans), permission rules, the transaction
//! holds that keep operations and commits apart ([`hold`]), and the
//! [`backend::Backend`] seam to the persistent half.
pub mod archive;
pub mod archive_ctl;
pub mod backend;
pub mod data;
pub mod dir;
pub mod hold;
pub mod inode;
pub mod item;
pub mod mount;
pub mod orphan;
pub mod perm;
pub mod symlink;
pub mod types;
pub mod xattr;
