//! The UEFI memory map after ExitBootServices, as the E820-style map PVH
//! hands the kernel. Boot-services and loader memory is free RAM once the
//! kernel runs (the kernel copies its start info out before making its
//! heap); runtime-services memory, MMIO and the like stay reserved; ACPI
//! tables keep their own types. Neighbours of one type are merged, so the
//! map fits the kernel's 64 entries.

/// E820 types.
pub const RAM: u32 = 1;
pub const RESERVED: u32 = 2;
pub const ACPI: u32 = 3;
pub const NVS: u32 = 4;
pub const UNUSABLE: u32 = 5;

/// One entry of the PVH memory map (`hvm_memmap_table_entry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The E820 type of a UEFI memory type.
pub fn e820_type(uefi_type: u32) -> u32 {
    match uefi_type {
        // loader code/data, boot services code/data, conventional
        1..=4 | 7 => RAM,
        8 => UNUSABLE,
        9 => ACPI,
        10 => NVS,
        _ => RESERVED,
    }
}

/// Result of [`convert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converted {
    pub count: usize,
    /// Entries that did not fit in `out` (the highest addresses).
    pub dropped: usize,
}

/// Convert `(uefi_type, physical_start, pages)` descriptors (any order)
/// into `out`, sorted by address, neighbours of one type merged.
pub fn convert(descs: impl Iterator<Item = (u32, u64, u64)>, out: &mut [Entry]) -> Converted {
    let mut count = 0;
    let mut dropped = 0;
    for (t, start, pages) in descs {
        let Some(size) = pages.checked_mul(4096) else {
            continue;
        };
        if size == 0 || start.checked_add(size).is_none() {
            continue;
        }
        let e = Entry {
            addr: start,
            size,
            kind: e820_type(t),
        };
        // insert sorted (firmware maps are usually sorted already)
        let pos = out[..count]
            .iter()
            .position(|x| x.addr > e.addr)
            .unwrap_or(count);
        if count == out.len() {
            if pos == count {
                dropped += 1;
                continue;
            }
            dropped += 1;
            count -= 1;
        }
        out.copy_within(pos..count, pos + 1);
        out[pos] = e;
        count += 1;
        count = merge(&mut out[..count]);
    }
    Converted { count, dropped }
}

/// Merge touching neighbours of one type; returns the new length.
fn merge(map: &mut [Entry]) -> usize {
    let mut w = 0;
    for r in 0..map.len() {
        let e = map[r];
        if w > 0 {
            let last = &mut map[w - 1];
            if last.kind == e.kind && last.addr + last.size == e.addr {
                last.size += e.size;
                continue;
            }
        }
        map[w] = e;
        w += 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_and_neighbours_merge() {
        let descs = [
            (7u32, 0x10_0000u64, 0x100u64), // conventional 1 MiB..2 MiB
            (3, 0x20_0000, 0x10),           // boot services code: RAM
            (9, 0x30_0000, 1),              // ACPI reclaim
            (2, 0x21_0000, 0x10),           // loader data, out of order
            (0, 0, 1),                      // reserved page 0
            (5, 0x40_0000, 2),              // runtime code
        ];
        let mut out = [Entry::default(); 8];
        let c = convert(descs.into_iter(), &mut out);
        assert_eq!(
            c,
            Converted {
                count: 4,
                dropped: 0
            }
        );
        assert_eq!(
            &out[..4],
            &[
                Entry {
                    addr: 0,
                    size: 4096,
                    kind: RESERVED
                },
                Entry {
                    addr: 0x10_0000,
                    size: 0x12_0000,
                    kind: RAM
                },
                Entry {
                    addr: 0x30_0000,
                    size: 4096,
                    kind: ACPI
                },
                Entry {
                    addr: 0x40_0000,
                    size: 8192,
                    kind: RESERVED
                },
            ]
        );
    }

    #[test]
    fn a_full_table_keeps_the_lowest_entries() {
        let descs = (0..10u64)
            .rev()
            .map(|i| (if i % 2 == 0 { 7 } else { 0 }, i << 20, 1));
        let mut out = [Entry::default(); 4];
        let c = convert(descs, &mut out);
        assert_eq!(c.count, 4);
        assert_eq!(c.dropped, 6);
        let addrs: Vec<u64> = out.iter().map(|e| e.addr >> 20).collect();
        assert_eq!(addrs, [0, 1, 2, 3]);
        // overflowing page counts are skipped, not wrapped
        let mut out = [Entry::default(); 4];
        let c = convert([(7, u64::MAX - 4095, 2)].into_iter(), &mut out);
        assert_eq!(c.count, 0);
    }
}
