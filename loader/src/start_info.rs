//! `hvm_start_info` (version 1), the block a PVH loader passes in `%ebx`:
//! the same bytes QEMU writes for `-kernel`, so the kernel has one boot
//! path.

use crate::memmap::Entry;

pub const MAGIC: u32 = 0x336e_c578;
/// Size of the start info block.
pub const SIZE: usize = 56;
/// Size of one memory map entry.
pub const ENTRY_SIZE: usize = 24;

/// Physical addresses of the parts the block points at.
pub struct Addrs {
    pub cmdline: u64,
    pub rsdp: u64,
    pub memmap: u64,
}

/// Write the block into `out` and the memory map table into `map_out`.
pub fn write(out: &mut [u8; SIZE], a: &Addrs, map: &[Entry], map_out: &mut [u8]) {
    assert!(
        map_out.len() >= map.len() * ENTRY_SIZE,
        "memory map table too small"
    );
    out.fill(0);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&a.cmdline.to_le_bytes());
    out[32..40].copy_from_slice(&a.rsdp.to_le_bytes());
    out[40..48].copy_from_slice(&a.memmap.to_le_bytes());
    out[48..52].copy_from_slice(&(map.len() as u32).to_le_bytes());
    for (i, e) in map.iter().enumerate() {
        let o = &mut map_out[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
        o[0..8].copy_from_slice(&e.addr.to_le_bytes());
        o[8..16].copy_from_slice(&e.size.to_le_bytes());
        o[16..20].copy_from_slice(&e.kind.to_le_bytes());
        o[20..24].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_what_the_kernel_reads() {
        let mut out = [0xffu8; SIZE];
        let mut table = [0xffu8; 2 * ENTRY_SIZE];
        let map = [
            Entry {
                addr: 0,
                size: 0xa_0000,
                kind: 1,
            },
            Entry {
                addr: 0x10_0000,
                size: 0x1000_0000,
                kind: 1,
            },
        ];
        let a = Addrs {
            cmdline: 0x1234_5000,
            rsdp: 0x7fb7_e014,
            memmap: 0x1234_6000,
        };
        write(&mut out, &a, &map, &mut table);
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        // offsets of kernel/src/boot.rs start_info()
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), MAGIC);
        assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), 1);
        assert_eq!(u64_at(&out, 24), 0x1234_5000);
        assert_eq!(u64_at(&out, 32), 0x7fb7_e014);
        assert_eq!(u64_at(&out, 40), 0x1234_6000);
        assert_eq!(u32::from_le_bytes(out[48..52].try_into().unwrap()), 2);
        assert_eq!(u64_at(&table, 24), 0x10_0000);
        assert_eq!(u64_at(&table, 32), 0x1000_0000);
        assert_eq!(u32::from_le_bytes(table[40..44].try_into().unwrap()), 1);
        assert_eq!(&table[44..48], &[0; 4]);
    }
}
