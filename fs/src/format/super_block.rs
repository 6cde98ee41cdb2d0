//! `scoutfs_super_block` (1488 bytes inside a 4 KiB block at SM blkno 16 of
//! both devices), with its quorum config, volume options and inet addrs.
//!
//! Decoding keeps every byte it does not interpret (the id, reserved volume
//! option words, IPv6 slots) so that encode(decode(b)) reproduces `b`.

use super::block::*;
use super::le::*;

/// Bytes of the super block structure.
pub const SUPER_BYTES: usize = 1488;
/// `SCOUTFS_FLAG_IS_META_BDEV`: set only in the meta device's copy.
pub const FLAG_IS_META_BDEV: u64 = 0x01;
/// Quorum slots in the config.
pub const QUORUM_MAX_SLOTS: usize = 15;
/// `SCOUTFS_VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT`.
pub const VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT: u64 = 1;

/// Address families of `scoutfs_inet_addr`.
pub const AF_NONE: u16 = 0;
pub const AF_IPV4: u16 = 1;
pub const AF_IPV6: u16 = 2;

/// `union scoutfs_inet_addr` (32 bytes). Only IPv4 is interpreted; the raw
/// bytes are kept so other families round-trip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InetAddr {
    pub raw: [u8; 32],
}

impl InetAddr {
    pub const BYTES: usize = 32;

    pub fn ipv4(addr: [u8; 4], port: u16) -> Self {
        let mut raw = [0u8; 32];
        put_u16(&mut raw, 0, AF_IPV4);
        put_u16(&mut raw, 2, port);
        // The address is stored as a little-endian u32 of the host-order
        // (big-endian numeric) IPv4 address.
        put_u32(&mut raw, 4, u32::from_be_bytes(addr));
        InetAddr { raw }
    }

    pub fn family(&self) -> u16 {
        get_u16(&self.raw, 0)
    }

    pub fn port(&self) -> u16 {
        get_u16(&self.raw, 2)
    }

    /// The IPv4 address octets (meaningful when `family() == AF_IPV4`).
    pub fn ipv4_octets(&self) -> [u8; 4] {
        get_u32(&self.raw, 4).to_be_bytes()
    }
}

/// Parse a dotted-quad IPv4 address (`10.0.2.15`): four decimal octets of
/// one to three digits, nothing else. The one parser for mkfs's `-Q`, the
/// kernel command line and the 9P allow-list.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl core::fmt::Display for InetAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let o = self.ipv4_octets();
        write!(f, "{}.{}.{}.{}:{}", o[0], o[1], o[2], o[3], self.port())
    }
}

/// `scoutfs_quorum_config`: version and one address per slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuorumConfig {
    pub version: u64,
    pub slots: [InetAddr; QUORUM_MAX_SLOTS],
}

impl QuorumConfig {
    pub const BYTES: usize = 8 + QUORUM_MAX_SLOTS * InetAddr::BYTES;

    pub fn decode(b: &[u8]) -> Self {
        let mut q = QuorumConfig {
            version: get_u64(b, 0),
            ..Default::default()
        };
        for (i, s) in q.slots.iter_mut().enumerate() {
            let o = 8 + i * InetAddr::BYTES;
            s.raw.copy_from_slice(&b[o..o + InetAddr::BYTES]);
        }
        q
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.version);
        for (i, s) in self.slots.iter().enumerate() {
            let o = 8 + i * InetAddr::BYTES;
            b[o..o + InetAddr::BYTES].copy_from_slice(&s.raw);
        }
    }

    /// Configured slots as (slot number, address).
    pub fn configured(&self) -> impl Iterator<Item = (usize, &InetAddr)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, a)| a.family() != AF_NONE)
    }
}

/// `scoutfs_volume_options` (520 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeOptions {
    pub set_bits: u64,
    pub data_alloc_zone_blocks: u64,
    pub future: [u64; 63],
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            set_bits: 0,
            data_alloc_zone_blocks: 0,
            future: [0; 63],
        }
    }
}

impl VolumeOptions {
    pub const BYTES: usize = 520;

    pub fn decode(b: &[u8]) -> Self {
        let mut v = VolumeOptions {
            set_bits: get_u64(b, 0),
            data_alloc_zone_blocks: get_u64(b, 8),
            future: [0; 63],
        };
        for (i, w) in v.future.iter_mut().enumerate() {
            *w = get_u64(b, 16 + i * 8);
        }
        v
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.set_bits);
        put_u64(b, 8, self.data_alloc_zone_blocks);
        for (i, w) in self.future.iter().enumerate() {
            put_u64(b, 16 + i * 8, *w);
        }
    }
}

/// Byte offsets of the super block fields.
pub mod off {
    pub const ID: usize = 32;
    pub const FMT_VERS: usize = 40;
    pub const FLAGS: usize = 48;
    pub const UUID: usize = 56;
    pub const SEQ: usize = 72;
    pub const NEXT_INO: usize = 80;
    pub const INODE_COUNT: usize = 88;
    pub const TOTAL_META_BLOCKS: usize = 96;
    pub const TOTAL_DATA_BLOCKS: usize = 104;
    pub const QCONF: usize = 112;
    pub const META_ALLOC: usize = 600;
    pub const DATA_ALLOC: usize = 680;
    pub const SERVER_META_AVAIL: usize = 720;
    pub const SERVER_META_FREED: usize = 784;
    pub const FS_ROOT: usize = 848;
    pub const LOGS_ROOT: usize = 872;
    pub const LOG_MERGE: usize = 896;
    pub const MOUNTED_CLIENTS: usize = 920;
    pub const SRCH_ROOT: usize = 944;
    pub const VOLOPT: usize = 968;
}

/// The decoded super block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuperBlock {
    pub hdr: BlockHeader,
    pub id: u64,
    pub fmt_vers: u64,
    pub flags: u64,
    pub uuid: [u8; 16],
    pub seq: u64,
    pub next_ino: u64,
    pub inode_count: u64,
    pub total_meta_blocks: u64,
    pub total_data_blocks: u64,
    pub qconf: QuorumConfig,
    pub meta_alloc: [AllocRoot; 2],
    pub data_alloc: AllocRoot,
    pub server_meta_avail: [AllocListHead; 2],
    pub server_meta_freed: [AllocListHead; 2],
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub log_merge: BtreeRoot,
    pub mounted_clients: BtreeRoot,
    pub srch_root: BtreeRoot,
    pub volopt: VolumeOptions,
}

impl SuperBlock {
    pub const BYTES: usize = SUPER_BYTES;

    /// Decode from at least [`SUPER_BYTES`] bytes.
    pub fn decode(b: &[u8]) -> Self {
        assert!(b.len() >= SUPER_BYTES);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[off::UUID..off::UUID + 16]);
        let head = |o: usize| AllocListHead::decode(&b[o..o + AllocListHead::BYTES]);
        let aroot = |o: usize| AllocRoot::decode(&b[o..o + AllocRoot::BYTES]);
        let broot = |o: usize| BtreeRoot::decode(&b[o..o + BtreeRoot::BYTES]);
        SuperBlock {
            hdr: BlockHeader::decode(b),
            id: get_u64(b, off::ID),
            fmt_vers: get_u64(b, off::FMT_VERS),
            flags: get_u64(b, off::FLAGS),
            uuid,
            seq: get_u64(b, off::SEQ),
            next_ino: get_u64(b, off::NEXT_INO),
            inode_count: get_u64(b, off::INODE_COUNT),
            total_meta_blocks: get_u64(b, off::TOTAL_META_BLOCKS),
            total_data_blocks: get_u64(b, off::TOTAL_DATA_BLOCKS),
            qconf: QuorumConfig::decode(&b[off::QCONF..off::QCONF + QuorumConfig::BYTES]),
            meta_alloc: [aroot(off::META_ALLOC), aroot(off::META_ALLOC + 40)],
            data_alloc: aroot(off::DATA_ALLOC),
            server_meta_avail: [
                head(off::SERVER_META_AVAIL),
                head(off::SERVER_META_AVAIL + 32),
            ],
            server_meta_freed: [
                head(off::SERVER_META_FREED),
                head(off::SERVER_META_FREED + 32),
            ],
            fs_root: broot(off::FS_ROOT),
            logs_root: broot(off::LOGS_ROOT),
            log_merge: broot(off::LOG_MERGE),
            mounted_clients: broot(off::MOUNTED_CLIENTS),
            srch_root: broot(off::SRCH_ROOT),
            volopt: VolumeOptions::decode(&b[off::VOLOPT..off::VOLOPT + VolumeOptions::BYTES]),
        }
    }

    /// Encode into the first [`SUPER_BYTES`] of `b` (the caller zeroes the
    /// rest of the 4 KiB block and computes the crc).
    pub fn encode(&self, b: &mut [u8]) {
        assert!(b.len() >= SUPER_BYTES);
        self.hdr.encode(b);
        put_u64(b, off::ID, self.id);
        put_u64(b, off::FMT_VERS, self.fmt_vers);
        put_u64(b, off::FLAGS, self.flags);
        b[off::UUID..off::UUID + 16].copy_from_slice(&self.uuid);
        put_u64(b, off::SEQ, self.seq);
        put_u64(b, off::NEXT_INO, self.next_ino);
        put_u64(b, off::INODE_COUNT, self.inode_count);
        put_u64(b, off::TOTAL_META_BLOCKS, self.total_meta_blocks);
        put_u64(b, off::TOTAL_DATA_BLOCKS, self.total_data_blocks);
        self.qconf
            .encode(&mut b[off::QCONF..off::QCONF + QuorumConfig::BYTES]);
        for i in 0..2 {
            let o = off::META_ALLOC + i * AllocRoot::BYTES;
            self.meta_alloc[i].encode(&mut b[o..o + AllocRoot::BYTES]);
            let o = off::SERVER_META_AVAIL + i * AllocListHead::BYTES;
            self.server_meta_avail[i].encode(&mut b[o..o + AllocListHead::BYTES]);
            let o = off::SERVER_META_FREED + i * AllocListHead::BYTES;
            self.server_meta_freed[i].encode(&mut b[o..o + AllocListHead::BYTES]);
        }
        self.data_alloc
            .encode(&mut b[off::DATA_ALLOC..off::DATA_ALLOC + AllocRoot::BYTES]);
        let roots = [
            (off::FS_ROOT, &self.fs_root),
            (off::LOGS_ROOT, &self.logs_root),
            (off::LOG_MERGE, &self.log_merge),
            (off::MOUNTED_CLIENTS, &self.mounted_clients),
            (off::SRCH_ROOT, &self.srch_root),
        ];
        for (o, r) in roots {
            r.encode(&mut b[o..o + BtreeRoot::BYTES]);
        }
        self.volopt
            .encode(&mut b[off::VOLOPT..off::VOLOPT + VolumeOptions::BYTES]);
    }

    /// The uuid in the usual dashed form.
    pub fn uuid_string(&self) -> alloc::string::String {
        format_uuid(&self.uuid)
    }
}

/// `8-4-4-4-12` lower-case hex.
pub fn format_uuid(u: &[u8; 16]) -> alloc::string::String {
    use core::fmt::Write;
    let mut s = alloc::string::String::new();
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_appendix_a() {
        assert_eq!(QuorumConfig::BYTES, 488);
        assert_eq!(off::QCONF + QuorumConfig::BYTES, off::META_ALLOC);
        assert_eq!(off::VOLOPT + VolumeOptions::BYTES, SUPER_BYTES);
        assert_eq!(off::META_ALLOC + 2 * AllocRoot::BYTES, off::DATA_ALLOC);
        assert_eq!(off::DATA_ALLOC + AllocRoot::BYTES, off::SERVER_META_AVAIL);
        assert_eq!(off::SERVER_META_FREED + 64, off::FS_ROOT);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut b = alloc::vec![0u8; 4096];
        for (i, x) in b[..SUPER_BYTES].iter_mut().enumerate() {
            *x = (i * 7 + 3) as u8;
        }
        // pads the encoder writes as zero
        for r in [
            off::FS_ROOT,
            off::LOGS_ROOT,
            off::LOG_MERGE,
            off::MOUNTED_CLIENTS,
            off::SRCH_ROOT,
            off::META_ALLOC + 16,
            off::META_ALLOC + 56,
            off::DATA_ALLOC + 16,
        ] {
            b[r + 17..r + 24].fill(0);
        }
        for r in [off::META_ALLOC, off::META_ALLOC + 40, off::DATA_ALLOC] {
            b[r + 12..r + 16].fill(0);
        }
        let s = SuperBlock::decode(&b);
        let mut c = alloc::vec![0u8; 4096];
        s.encode(&mut c);
        assert_eq!(&b[..SUPER_BYTES], &c[..SUPER_BYTES]);
    }

    #[test]
    fn inet_addr_layout() {
        let a = InetAddr::ipv4([10, 0, 2, 15], 7100);
        assert_eq!(a.family(), AF_IPV4);
        assert_eq!(&a.raw[4..8], &0x0a00_020fu32.to_le_bytes());
        assert_eq!(alloc::format!("{a}"), "10.0.2.15:7100");
    }
}
