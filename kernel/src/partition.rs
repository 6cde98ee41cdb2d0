//! Is a disk partitioned? The appliance's boot disk (the UEFI image) is a
//! GPT disk, and a volume device is a whole disk with a scoutfs super
//! block, so a disk that carries a partition table is never taken for a
//! volume device (nor formatted by `mkfs`), whatever its serial says.

/// Bytes to read from the start of a disk for [`table_of`]: a GPT header
/// sits at LBA 1 (byte 512 or, on 4 KiB-sector disks, 4096).
pub const PROBE_BYTES: usize = 8192;

/// The partition table the first [`PROBE_BYTES`] of a disk show, if any.
pub fn table_of(head: &[u8]) -> Option<&'static str> {
    let gpt = |at: usize| head.get(at..at + 8) == Some(b"EFI PART".as_slice());
    if gpt(512) || gpt(4096) {
        return Some("GPT");
    }
    // An MBR with at least one partition entry in use.
    if head.get(510..512) == Some([0x55, 0xAA].as_slice()) {
        let used = (0..4).any(|i| {
            let e = 446 + i * 16;
            head.get(e + 4).is_some_and(|&t| t != 0)
        });
        if used {
            return Some("MBR");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_and_mbr_disks_are_seen_and_blank_or_volume_disks_are_not() {
        let mut d = vec![0u8; PROBE_BYTES];
        assert_eq!(table_of(&d), None);
        d[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(table_of(&d), Some("GPT"));
        let mut d4k = vec![0u8; PROBE_BYTES];
        d4k[4096..4104].copy_from_slice(b"EFI PART");
        assert_eq!(table_of(&d4k), Some("GPT"));
        let mut mbr = vec![0u8; PROBE_BYTES];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        // boot signature but no partition: e.g. a boot sector, not a table
        assert_eq!(table_of(&mbr), None);
        mbr[446 + 16 + 4] = 0x83;
        assert_eq!(table_of(&mbr), Some("MBR"));
        assert_eq!(table_of(&[0u8; 100]), None);
    }
}
