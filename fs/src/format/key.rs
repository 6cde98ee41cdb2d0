//! `scoutfs_key`: the 32-byte key of every btree item.
//!
//! Memory layout (little endian): `first` u64 @0, `second` u64 @8, `third`
//! u64 @16, `fourth` u8 @24, `zone` u8 @25, `type` u8 @26, 5 zero pad bytes.
//! Keys compare in a different order than they are laid out: zone, first,
//! type, second, third, fourth. The field order of [`Key`] is that compare
//! order, so the derived `Ord` is the format's order.

use core::fmt;

/// Bytes in an encoded key.
pub const KEY_BYTES: usize = 32;

/// Zones (the most significant part of the key).
pub mod zone {
    pub const INODE_INDEX: u8 = 4;
    pub const ORPHAN: u8 = 8;
    pub const QUOTA: u8 = 10;
    pub const XATTR_TOTL: u8 = 12;
    pub const XATTR_INDX: u8 = 14;
    pub const FS: u8 = 16;
    pub const LOCK: u8 = 20;
    pub const LOG_TREES: u8 = 24;
    pub const MOUNTED_CLIENT: u8 = 28;
    pub const SRCH: u8 = 32;
    pub const FREE_EXTENT_BLKNO: u8 = 36;
    pub const FREE_EXTENT_ORDER: u8 = 40;
    pub const LOG_MERGE_STATUS: u8 = 44;
    pub const LOG_MERGE_RANGE: u8 = 48;
    pub const LOG_MERGE_REQUEST: u8 = 52;
    pub const LOG_MERGE_COMPLETE: u8 = 56;
    pub const LOG_MERGE_FREEING: u8 = 60;
}

/// Types within zones.
pub mod ty {
    // INODE_INDEX zone
    pub const INODE_INDEX_META_SEQ: u8 = 4;
    pub const INODE_INDEX_DATA_SEQ: u8 = 8;
    // ORPHAN zone
    pub const ORPHAN: u8 = 4;
    // QUOTA zone
    pub const QUOTA_RULE: u8 = 4;
    // FS zone
    pub const INODE: u8 = 4;
    pub const XATTR: u8 = 8;
    pub const DIRENT: u8 = 12;
    pub const READDIR: u8 = 16;
    pub const LINK_BACKREF: u8 = 20;
    pub const SYMLINK: u8 = 24;
    pub const DATA_EXTENT: u8 = 28;
    // LOCK zone
    pub const RENAME: u8 = 4;
    // SRCH zone
    pub const SRCH_LOG: u8 = 4;
    pub const SRCH_BLOCKS: u8 = 8;
    pub const SRCH_PENDING: u8 = 12;
    pub const SRCH_BUSY: u8 = 16;
}

/// A key, fields in compare order.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub zone: u8,
    pub first: u64,
    pub ty: u8,
    pub second: u64,
    pub third: u64,
    pub fourth: u8,
}

/// Why 32 bytes are not a valid key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadKeyPad;

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key {
        zone: 0,
        first: 0,
        ty: 0,
        second: 0,
        third: 0,
        fourth: 0,
    };
    /// The greatest key (all ones): the right spine of parent blocks.
    pub const MAX: Key = Key {
        zone: u8::MAX,
        first: u64::MAX,
        ty: u8::MAX,
        second: u64::MAX,
        third: u64::MAX,
        fourth: u8::MAX,
    };

    pub const fn new(zone: u8, first: u64, ty: u8, second: u64, third: u64, fourth: u8) -> Key {
        Key {
            zone,
            first,
            ty,
            second,
            third,
            fourth,
        }
    }

    /// An FS-zone key owned by inode `ino`.
    pub const fn fs(ino: u64, ty: u8, second: u64, third: u64) -> Key {
        Key::new(zone::FS, ino, ty, second, third, 0)
    }

    /// Encode into the 32-byte on-disk layout.
    pub fn encode(&self, out: &mut [u8; KEY_BYTES]) {
        out[0..8].copy_from_slice(&self.first.to_le_bytes());
        out[8..16].copy_from_slice(&self.second.to_le_bytes());
        out[16..24].copy_from_slice(&self.third.to_le_bytes());
        out[24] = self.fourth;
        out[25] = self.zone;
        out[26] = self.ty;
        out[27..32].fill(0);
    }

    pub fn to_bytes(&self) -> [u8; KEY_BYTES] {
        let mut b = [0u8; KEY_BYTES];
        self.encode(&mut b);
        b
    }

    /// Decode from the on-disk layout, ignoring the pad bytes.
    pub fn decode(b: &[u8; KEY_BYTES]) -> Key {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        Key {
            first: u64_at(0),
            second: u64_at(8),
            third: u64_at(16),
            fourth: b[24],
            zone: b[25],
            ty: b[26],
        }
    }

    /// Decode, rejecting keys whose pad bytes are not zero.
    pub fn decode_strict(b: &[u8; KEY_BYTES]) -> Result<Key, BadKeyPad> {
        if b[27..32].iter().any(|&x| x != 0) {
            return Err(BadKeyPad);
        }
        Ok(Key::decode(b))
    }

    /// The next key in order, saturating at [`Key::MAX`].
    pub fn inc(&self) -> Key {
        let mut k = *self;
        let (f, c) = k.fourth.overflowing_add(1);
        k.fourth = f;
        if !c {
            return k;
        }
        let (t, c) = k.third.overflowing_add(1);
        k.third = t;
        if !c {
            return k;
        }
        let (s, c) = k.second.overflowing_add(1);
        k.second = s;
        if !c {
            return k;
        }
        let (y, c) = k.ty.overflowing_add(1);
        k.ty = y;
        if !c {
            return k;
        }
        let (f1, c) = k.first.overflowing_add(1);
        k.first = f1;
        if !c {
            return k;
        }
        match k.zone.checked_add(1) {
            Some(z) => {
                k.zone = z;
                k
            }
            None => Key::MAX,
        }
    }

    /// The previous key in order, saturating at [`Key::MIN`].
    pub fn dec(&self) -> Key {
        let mut k = *self;
        let (f, b) = k.fourth.overflowing_sub(1);
        k.fourth = f;
        if !b {
            return k;
        }
        let (t, b) = k.third.overflowing_sub(1);
        k.third = t;
        if !b {
            return k;
        }
        let (s, b) = k.second.overflowing_sub(1);
        k.second = s;
        if !b {
            return k;
        }
        let (y, b) = k.ty.overflowing_sub(1);
        k.ty = y;
        if !b {
            return k;
        }
        let (f1, b) = k.first.overflowing_sub(1);
        k.first = f1;
        if !b {
            return k;
        }
        match k.zone.checked_sub(1) {
            Some(z) => {
                k.zone = z;
                k
            }
            None => Key::MIN,
        }
    }
}

impl fmt::Display for Key {
    /// `zone.first.type.second.third.fourth`, as the reference `print` does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}.{}.{}",
            self.zone, self.first, self.ty, self.second, self.third, self.fourth
        )
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_key() -> impl Strategy<Value = Key> {
        (
            any::<u8>(),
            any::<u64>(),
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
        )
            .prop_map(|(z, a, t, b, c, d)| Key::new(z, a, t, b, c, d))
    }

    #[test]
    fn layout_matches_format() {
        let k = Key::new(16, 1, 4, 2, 3, 5);
        let b = k.to_bytes();
        assert_eq!(&b[0..8], &1u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[16..24], &3u64.to_le_bytes());
        assert_eq!((b[24], b[25], b[26]), (5, 16, 4));
        assert_eq!(format!("{k}"), "16.1.4.2.3.5");
        let mut bad = b;
        bad[31] = 1;
        assert_eq!(Key::decode_strict(&bad), Err(BadKeyPad));
    }

    #[test]
    fn zone_sorts_before_first() {
        assert!(Key::new(4, u64::MAX, 9, 9, 9, 9) < Key::new(16, 0, 0, 0, 0, 0));
        assert!(Key::new(16, 1, 4, 9, 0, 0) < Key::new(16, 1, 8, 0, 0, 0));
        assert_eq!(Key::MAX.inc(), Key::MAX);
        assert_eq!(Key::MIN.dec(), Key::MIN);
        assert_eq!(
            Key::new(1, 0, 0, 0, u64::MAX, 255).inc(),
            Key::new(1, 0, 0, 1, 0, 0)
        );
        assert_eq!(
            Key::new(1, 0, 0, 0, 0, 0).dec(),
            Key::new(0, u64::MAX, 255, u64::MAX, u64::MAX, 255)
        );
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(k in any_key()) {
            prop_assert_eq!(Key::decode_strict(&k.to_bytes()), Ok(k));
        }

        #[test]
        fn inc_is_successor(k in any_key()) {
            prop_assume!(k != Key::MAX);
            let n = k.inc();
            prop_assert!(n > k);
            prop_assert_eq!(n.dec(), k);
        }
    }
}
