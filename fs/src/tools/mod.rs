//! Whole-volume tools over two block devices: mkfs, fsck (the test
//! oracle) and print.
pub mod fsck;
pub mod mkfs;
pub mod print;
