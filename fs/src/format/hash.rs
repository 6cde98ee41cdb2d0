//! The hashes of the scoutfs format.
//!
//! * CRC-32C (Castagnoli) in the Linux convention: the register starts as
//!   the caller's seed (`!0` for blocks) and there is no final inversion,
//!   so [`crc32c_block`] is the bitwise NOT of the textbook CRC-32C.
//! * FNV-1a, 32 and 64 bit (btree leaf hash buckets, dirent name hash, srch
//!   entries, bloom bits).
//! * The dirent name hash: FNV-1a-32 of the name in the low half, and an
//!   order-preserving 32-bit "fingerprint" of the name in the high half.

/// CRC-32C tables for slicing-by-8, built at compile time.
const CRC_TABLES: [[u32; 256]; 8] = build_crc_tables();

const fn build_crc_tables() -> [[u32; 256]; 8] {
    const POLY: u32 = 0x82f6_3b78; // reflected Castagnoli polynomial
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// Update a raw CRC-32C register with `data` (no inversion on either side),
/// exactly like Linux's `crc32c(crc, data, len)`.
pub fn crc32c_raw(mut crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ b as u32) & 0xff) as usize];
    }
    crc
}

/// The checksum stored in a block header: CRC-32C-raw seeded with `!0`
/// over everything after the 4-byte `crc` field.
pub fn crc32c_block(block: &[u8]) -> u32 {
    debug_assert!(block.len() >= 4);
    crc32c_raw(!0, &block[4..])
}

/// The xattr name hash stored in xattr item keys.
pub fn xattr_name_hash(name: &[u8]) -> u32 {
    crc32c_raw(!0, name)
}

pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// 32 bits sampled at even spacing from the name read as one big-endian
/// bit string, most significant first, so that fingerprints sort roughly
/// like the names. Names shorter than 4 bytes fill the high bits only.
pub fn dirent_name_fingerprint(name: &[u8]) -> u32 {
    let name_bits = name.len() as i64 * 8;
    let step = core::cmp::max(name_bits / 32, 1);
    let mut fp = 0u32;
    let mut out_bit = 31i64;
    // `n` numbers bits from the least significant end of the string.
    let mut n = name_bits - 1;
    while out_bit >= 0 && n >= 0 {
        let byte = name[((name_bits - 1 - n) >> 3) as usize];
        if byte & (1 << (n & 7)) != 0 {
            fp |= 1 << out_bit;
        }
        out_bit -= 1;
        n -= step;
    }
    fp
}

/// The 64-bit hash of a directory entry name used in DIRENT item keys.
pub fn dirent_name_hash(name: &[u8]) -> u64 {
    fnv1a32(name) as u64 | ((dirent_name_fingerprint(name) as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_known_vectors() {
        // Textbook CRC-32C("123456789") = 0xe3069283; raw = its complement.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xe306_9283);
        // Slicing path and bytewise path agree.
        let data: alloc::vec::Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut bytewise = !0u32;
        for &b in &data {
            bytewise = (bytewise >> 8) ^ CRC_TABLES[0][((bytewise ^ b as u32) & 0xff) as usize];
        }
        assert_eq!(crc32c_raw(!0, &data), bytewise);
    }

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn fingerprint_orders_like_names() {
        // One byte: its 8 bits land in the top 8 bits.
        assert_eq!(dirent_name_fingerprint(b"a"), 0x61 << 24);
        assert_eq!(dirent_name_fingerprint(b"ab"), 0x6162 << 16);
        assert_eq!(dirent_name_fingerprint(b"abcd"), 0x6162_6364);
        assert!(dirent_name_fingerprint(b"apple") < dirent_name_fingerprint(b"banana"));
        // Eight bytes: every second bit, starting from the MSB of byte 0.
        let fp = dirent_name_fingerprint(&[0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(fp, 0xf000_0000);
        assert_eq!(dirent_name_hash(b"a") & 0xffff_ffff, fnv1a32(b"a") as u64);
    }
}
