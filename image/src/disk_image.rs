//! The bootable disk image (`cargo xtask image`): a raw disk with a GPT
//! holding one EFI system partition (FAT, made by the `fatfs` crate) with
//! the files it is given. Everything is built in memory on the host: no
//! root, no loop devices, no mkfs/sgdisk. GUIDs and FAT timestamps are
//! derived from the contents, so the same inputs give the same image.

use std::io::{Cursor, Write};

/// Sector size of the image (the GPT and the FAT both use it).
pub const SECTOR: u64 = 512;
/// The ESP starts at 1 MiB (LBA 2048), the usual alignment.
const ESP_FIRST_LBA: u64 = 2048;
/// GPT partition entries: 128 of 128 bytes (32 sectors), the minimum size
/// the UEFI spec asks a GPT to reserve.
const ENTRIES: u64 = 128;
const ENTRY_BYTES: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_BYTES / SECTOR;
/// EFI system partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
const ESP_TYPE: [u8; 16] = guid_bytes(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);

/// One file for the ESP: a path with `/` separators (directories are made)
/// and its bytes.
pub struct EspFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

/// GUIDs are stored with the first three fields little-endian.
const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// CRC-32 (IEEE, reflected), as the GPT headers and entry arrays use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// FNV-1a over `data` with `salt`: the seed of a reproducible GUID.
fn fnv(data: &[&[u8]], salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for d in data {
        for &b in *d {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// A version-4-shaped GUID from the contents (reproducible, not random).
fn content_guid(files: &[EspFile], salt: u64) -> [u8; 16] {
    let datas: Vec<&[u8]> = files
        .iter()
        .flat_map(|f| [f.path.as_bytes(), f.data])
        .collect();
    let lo = fnv(&datas, salt).to_le_bytes();
    let hi = fnv(&datas, salt ^ 0x5eed).to_le_bytes();
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&lo);
    g[8..].copy_from_slice(&hi);
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// Format a FAT file system of `bytes` and put `files` in it.
pub fn build_esp(files: &[EspFile], bytes: u64) -> Result<Vec<u8>, String> {
    let len = usize::try_from(bytes).map_err(|_| "ESP size does not fit in memory".to_string())?;
    let mut disk = Cursor::new(vec![0u8; len]);
    let id = fnv(&[b"scoutvm-esp"], bytes) as u32;
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"SCOUTVM-ESP")
            .volume_id(id),
    )
    .map_err(|e| format!("formatting the ESP ({} MiB): {e}", bytes >> 20))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(|e| format!("opening the new ESP: {e}"))?;
        for f in files {
            let (dirs, name) = match f.path.rsplit_once('/') {
                Some((d, n)) => (Some(d), n),
                None => (None, f.path),
            };
            let mut dir = fs.root_dir();
            for part in dirs.into_iter().flat_map(|d| d.split('/')) {
                dir = dir
                    .create_dir(part)
                    .map_err(|e| format!("ESP: mkdir {part} for {}: {e}", f.path))?;
            }
            let mut file = dir
                .create_file(name)
                .map_err(|e| format!("ESP: create {}: {e}", f.path))?;
            file.truncate()
                .map_err(|e| format!("ESP: truncate {}: {e}", f.path))?;
            file.write_all(f.data).map_err(|e| {
                format!(
                    "ESP: writing {} ({} bytes) into a {} MiB ESP: {e} (is the ESP full?)",
                    f.path,
                    f.data.len(),
                    bytes >> 20
                )
            })?;
        }
        fs.unmount().map_err(|e| format!("ESP: unmount: {e}"))?;
    }
    Ok(disk.into_inner())
}

/// A raw disk: protective MBR, GPT (primary and backup) with one ESP of
/// `esp_bytes` (a multiple of the sector size) holding `files`.
pub fn build_disk(files: &[EspFile], esp_bytes: u64) -> Result<Vec<u8>, String> {
    if esp_bytes == 0 || !esp_bytes.is_multiple_of(SECTOR) {
        return Err(format!(
            "ESP size {esp_bytes} is not a positive multiple of {SECTOR}"
        ));
    }
    let esp = build_esp(files, esp_bytes)?;
    let esp_sectors = esp_bytes / SECTOR;
    let esp_last = ESP_FIRST_LBA + esp_sectors - 1;
    // Backup entries and header after the ESP, rounded up to 1 MiB.
    let total = (esp_last + 1 + ENTRY_SECTORS + 1).next_multiple_of(2048);
    let last_lba = total - 1;
    let mut img = vec![0u8; (total * SECTOR) as usize];

    // Protective MBR: one partition of type 0xEE over the whole disk.
    let mbr = &mut img[..512];
    mbr[446 + 1..446 + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[446 + 4] = 0xEE;
    mbr[446 + 5..446 + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    let mbr_len = u32::try_from(last_lba).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&mbr_len.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    // One entry: the ESP.
    let mut entries = vec![0u8; (ENTRIES * ENTRY_BYTES) as usize];
    entries[..16].copy_from_slice(&ESP_TYPE);
    entries[16..32].copy_from_slice(&content_guid(files, 1));
    entries[32..40].copy_from_slice(&ESP_FIRST_LBA.to_le_bytes());
    entries[40..48].copy_from_slice(&esp_last.to_le_bytes());
    for (i, c) in "EFI system partition".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    let entries_crc = crc32(&entries);
    let disk_guid = content_guid(files, 2);
    let first_usable = 2 + ENTRY_SECTORS;
    let last_usable = last_lba - 1 - ENTRY_SECTORS;
    let header = |my: u64, alt: u64, entries_lba: u64| -> [u8; 92] {
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_BYTES as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let at = |lba: u64| (lba * SECTOR) as usize;
    img[at(1)..at(1) + 92].copy_from_slice(&header(1, last_lba, 2));
    img[at(2)..at(2) + entries.len()].copy_from_slice(&entries);
    let backup_entries = last_lba - ENTRY_SECTORS;
    img[at(backup_entries)..at(backup_entries) + entries.len()].copy_from_slice(&entries);
    img[at(last_lba)..at(last_lba) + 92].copy_from_slice(&header(last_lba, 1, backup_entries));
    img[at(ESP_FIRST_LBA)..at(ESP_FIRST_LBA) + esp.len()].copy_from_slice(&esp);
    Ok(img)
}

/// The byte range of the ESP in a disk made by [`build_disk`], read back
/// from its primary GPT (checking both CRCs).
pub fn esp_range(img: &[u8]) -> Result<(usize, usize), String> {
    let h = img
        .get(512..512 + 92)
        .ok_or("image shorter than a GPT header")?;
    if &h[..8] != b"EFI PART" {
        return Err("no GPT signature at LBA 1".into());
    }
    let mut copy = [0u8; 92];
    copy.copy_from_slice(h);
    copy[16..20].fill(0);
    let want = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if crc32(&copy) != want {
        return Err("GPT header CRC mismatch".into());
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let entries_lba = u64_at(h, 72);
    let start = usize::try_from(entries_lba * SECTOR).map_err(|_| "entries LBA too large")?;
    let entries = img
        .get(start..start + (ENTRIES * ENTRY_BYTES) as usize)
        .ok_or("GPT entries past the end of the image")?;
    let entries_crc = u32::from_le_bytes(h[88..92].try_into().expect("4 bytes"));
    if crc32(entries) != entries_crc {
        return Err("GPT entries CRC mismatch".into());
    }
    if entries[..16] != ESP_TYPE {
        return Err("the first GPT entry is not an EFI system partition".into());
    }
    let first = u64_at(entries, 32);
    let last = u64_at(entries, 40);
    let range = (first * SECTOR, (last + 1) * SECTOR);
    if range.1 as usize > img.len() || range.0 >= range.1 {
        return Err("ESP outside the image".into());
    }
    Ok((range.0 as usize, range.1 as usize))
}

/// Replace (or add) one file in the ESP of a disk made by [`build_disk`]:
/// how tests and operators edit `cmdline.txt` without rebuilding.
pub fn write_esp_file(img: &mut [u8], path: &str, data: &[u8]) -> Result<(), String> {
    let (a, b) = esp_range(img)?;
    let fs = fatfs::FileSystem::new(Cursor::new(&mut img[a..b]), fatfs::FsOptions::new())
        .map_err(|e| format!("the ESP is not a FAT file system: {e}"))?;
    {
        let mut f = fs
            .root_dir()
            .create_file(path)
            .map_err(|e| format!("ESP: open {path}: {e}"))?;
        f.truncate()
            .map_err(|e| format!("ESP: truncate {path}: {e}"))?;
        f.write_all(data).map_err(|e| {
            format!(
                "ESP: write {path} ({} bytes): {e} (is the ESP full?)",
                data.len()
            )
        })?;
    }
    fs.unmount().map_err(|e| format!("ESP: unmount: {e}"))
}

/// Remove one file from the ESP of a disk made by [`build_disk`].
pub fn remove_esp_file(img: &mut [u8], path: &str) -> Result<(), String> {
    let (a, b) = esp_range(img)?;
    let fs = fatfs::FileSystem::new(Cursor::new(&mut img[a..b]), fatfs::FsOptions::new())
        .map_err(|e| format!("the ESP is not a FAT file system: {e}"))?;
    fs.root_dir()
        .remove(path)
        .map_err(|e| format!("ESP: remove {path}: {e}"))?;
    fs.unmount().map_err(|e| format!("ESP: unmount: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn disk_holds_a_valid_gpt_and_the_files_read_back() {
        let kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let files = [
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                data: b"MZloader",
            },
            EspFile {
                path: "scoutvm.elf",
                data: &kernel,
            },
            EspFile {
                path: "cmdline.txt",
                data: b"node=n1\n",
            },
        ];
        let img = build_disk(&files, 34 << 20).unwrap();
        assert_eq!(img.len() % (1 << 20), 0);
        assert_eq!(&img[510..512], &[0x55, 0xAA]);
        assert_eq!(img[446 + 4], 0xEE);
        let (a, b) = esp_range(&img).unwrap();
        assert_eq!((a, b - a), (1 << 20, 34 << 20));
        // the backup header names the primary and its CRC holds
        let last = img.len() - 512;
        assert_eq!(&img[last..last + 8], b"EFI PART");
        assert_eq!(
            u64::from_le_bytes(img[last + 32..last + 40].try_into().unwrap()),
            1
        );

        let fs = fatfs::FileSystem::new(Cursor::new(img[a..b].to_vec()), fatfs::FsOptions::new())
            .unwrap();
        for f in &files {
            let mut got = Vec::new();
            fs.root_dir()
                .open_file(f.path)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, f.data, "{}", f.path);
        }
        // same inputs, same image
        assert_eq!(build_disk(&files, 34 << 20).unwrap(), img);
    }

    #[test]
    fn a_full_esp_is_a_clear_error() {
        let big = vec![1u8; 3 << 20];
        let files = [EspFile {
            path: "scoutvm.elf",
            data: &big,
        }];
        let err = build_disk(&files, 2 << 20).unwrap_err();
        assert!(err.contains("scoutvm.elf") && err.contains("full"), "{err}");
    }

    #[test]
    fn an_esp_file_is_replaced_in_place() {
        let files = [EspFile {
            path: "cmdline.txt",
            data: b"node=a",
        }];
        let mut img = build_disk(&files, 2 << 20).unwrap();
        write_esp_file(&mut img, "cmdline.txt", b"node=b ip=dhcp").unwrap();
        let (a, b) = esp_range(&img).unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(img[a..b].to_vec()), fatfs::FsOptions::new())
            .unwrap();
        let mut got = String::new();
        fs.root_dir()
            .open_file("cmdline.txt")
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "node=b ip=dhcp");
        assert!(write_esp_file(&mut [0u8; 4096], "x", b"y").is_err());
        remove_esp_file(&mut img, "cmdline.txt").unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(img[a..b].to_vec()), fatfs::FsOptions::new())
            .unwrap();
        assert!(fs.root_dir().open_file("cmdline.txt").is_err());
        assert!(remove_esp_file(&mut img, "cmdline.txt").is_err());
    }

    #[test]
    fn a_corrupt_gpt_is_refused() {
        let files = [EspFile {
            path: "a",
            data: b"x",
        }];
        let mut img = build_disk(&files, 2 << 20).unwrap();
        img[512 + 40] ^= 1;
        assert!(esp_range(&img).unwrap_err().contains("CRC"));
    }
}
