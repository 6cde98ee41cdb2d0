//! Whole-volume tools over two block devices: mkfs, fsck (the test
//! oracle), print and the offline changes of an unmounted volume.
pub mod fsck;
pub mod mkfs;
pub mod offline;
pub mod print;
