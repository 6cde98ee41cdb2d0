//! Little-endian field access at byte offsets inside on-disk blocks.
//!
//! Every on-disk structure is encoded and decoded through these helpers so
//! that no code depends on host layout or alignment. Callers pass offsets
//! that the structure definitions guarantee to be in range; an out-of-range
//! offset is a broken internal invariant and panics via slice indexing.

#[inline]
pub fn get_u8(b: &[u8], off: usize) -> u8 {
    b[off]
}

#[inline]
pub fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

#[inline]
pub fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

#[inline]
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

#[inline]
pub fn put_u8(b: &mut [u8], off: usize, v: u8) {
    b[off] = v;
}

#[inline]
pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Round `len` up to the btree value alignment (8 bytes).
#[inline]
pub const fn round8(len: usize) -> usize {
    (len + 7) & !7
}
