//! The kernel ELF as the loader needs it: its `PT_LOAD` segments (loaded
//! at their physical addresses, as QEMU's PVH loader does) and the 32-bit
//! entry from the Xen `PHYS32_ENTRY` note. Every offset and size is
//! checked against the file: a damaged kernel file is an error, not a
//! wild copy.

/// Most loadable segments accepted (the kernel has three).
pub const SEGMENTS_MAX: usize = 8;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY.
const NOTE_PHYS32_ENTRY: u32 = 18;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address.
    pub paddr: u64,
    /// Bytes copied from the file at `offset`.
    pub offset: u64,
    pub filesz: u64,
    /// Bytes in memory (the rest after `filesz` is zeroed).
    pub memsz: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub segments: [Segment; SEGMENTS_MAX],
    pub count: usize,
    /// The PVH 32-bit entry point.
    pub entry32: u32,
}

impl Kernel {
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    NotElf64,
    NotX86_64,
    Truncated,
    TooManySegments,
    /// A segment above 4 GiB or overflowing: PVH loads below 4 GiB.
    BadSegment,
    NoPvhNote,
}

impl ElfError {
    pub fn describe(self) -> &'static str {
        match self {
            ElfError::NotElf64 => "not a little-endian ELF64 executable",
            ElfError::NotX86_64 => "not an x86-64 ELF",
            ElfError::Truncated => "a header or segment lies past the end of the file",
            ElfError::TooManySegments => "more than 8 loadable segments",
            ElfError::BadSegment => "a loadable segment is not below 4 GiB",
            ElfError::NoPvhNote => "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): not a PVH kernel",
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> Result<u16, ElfError> {
    let s = b.get(o..o + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, ElfError> {
    let s = b.get(o..o + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], o: usize) -> Result<u64, ElfError> {
    let s = b.get(o..o + 8).ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn usize_of(v: u64) -> Result<usize, ElfError> {
    usize::try_from(v).map_err(|_| ElfError::Truncated)
}

/// Read the program headers of `file`.
pub fn parse(file: &[u8]) -> Result<Kernel, ElfError> {
    if file.len() < 64 || &file[..4] != b"\x7fELF" || file[4] != 2 || file[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    if u16_at(file, 18)? != 62 {
        return Err(ElfError::NotX86_64);
    }
    let phoff = usize_of(u64_at(file, 32)?)?;
    let phentsize = u16_at(file, 54)? as usize;
    let phnum = u16_at(file, 56)? as usize;
    if phentsize < 56 {
        return Err(ElfError::Truncated);
    }
    let mut k = Kernel {
        segments: [Segment::default(); SEGMENTS_MAX],
        count: 0,
        entry32: 0,
    };
    let mut entry = None;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        if ph.checked_add(56).is_none_or(|end| end > file.len()) {
            return Err(ElfError::Truncated);
        }
        let kind = u32_at(file, ph)?;
        let offset = u64_at(file, ph + 8)?;
        let paddr = u64_at(file, ph + 24)?;
        let filesz = u64_at(file, ph + 32)?;
        let memsz = u64_at(file, ph + 40)?;
        let end_in_file = offset.checked_add(filesz).ok_or(ElfError::Truncated)?;
        if end_in_file > file.len() as u64 {
            return Err(ElfError::Truncated);
        }
        match kind {
            PT_LOAD => {
                let end = paddr.checked_add(memsz).ok_or(ElfError::BadSegment)?;
                if filesz > memsz || end > 1 << 32 {
                    return Err(ElfError::BadSegment);
                }
                if k.count == SEGMENTS_MAX {
                    return Err(ElfError::TooManySegments);
                }
                k.segments[k.count] = Segment {
                    paddr,
                    offset,
                    filesz,
                    memsz,
                };
                k.count += 1;
            }
            PT_NOTE => {
                let notes = &file[usize_of(offset)?..usize_of(end_in_file)?];
                entry = entry.or(find_pvh_entry(notes)?);
            }
            _ => {}
        }
    }
    k.entry32 = entry.ok_or(ElfError::NoPvhNote)?;
    Ok(k)
}

/// Walk the notes of one PT_NOTE segment for Xen's PHYS32_ENTRY.
fn find_pvh_entry(notes: &[u8]) -> Result<Option<u32>, ElfError> {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3).ok_or(ElfError::Truncated);
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at
            .checked_add(align4(namesz)?)
            .ok_or(ElfError::Truncated)?;
        let next = desc_at
            .checked_add(align4(descsz)?)
            .ok_or(ElfError::Truncated)?;
        let name = notes
            .get(name_at..name_at + namesz)
            .ok_or(ElfError::Truncated)?;
        if kind == NOTE_PHYS32_ENTRY && name == b"Xen\0" {
            // The note holds a 32-bit or (ours) 64-bit address below 4 GiB.
            let v = match descsz {
                4 => u32_at(notes, desc_at)? as u64,
                8 => u64_at(notes, desc_at)?,
                _ => return Err(ElfError::Truncated),
            };
            return u32::try_from(v).map(Some).map_err(|_| ElfError::BadSegment);
        }
        at = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF: one PT_LOAD and one PT_NOTE with the PVH note.
    fn elf(entry_note: Option<u64>, load_paddr: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 2 * 56];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let payload_off = f.len() as u64;
        f.extend_from_slice(b"kernel text!");
        let note_off = f.len() as u64;
        let kind = if entry_note.is_some() { 18u32 } else { 5 };
        for v in [4u32, 8, kind] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(b"Xen\0");
        f.extend_from_slice(&entry_note.unwrap_or(0).to_le_bytes());
        let note_len = f.len() as u64 - note_off;
        let mut ph = |i: usize, kind: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
            let p = 64 + i * 56;
            f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        ph(0, 1, payload_off, load_paddr, 12, 4096);
        ph(1, 4, note_off, 0, note_len, note_len);
        f
    }

    #[test]
    fn segments_and_the_pvh_entry_are_found() {
        let f = elf(Some(0x20_0010), 0x20_0000);
        let k = parse(&f).unwrap();
        assert_eq!(k.entry32, 0x20_0010);
        assert_eq!(k.segments().len(), 1);
        let s = k.segments()[0];
        assert_eq!((s.paddr, s.filesz, s.memsz), (0x20_0000, 12, 4096));
        let off = s.offset as usize;
        assert_eq!(&f[off..off + 12], b"kernel text!");
    }

    #[test]
    fn damaged_or_foreign_files_are_errors() {
        assert_eq!(parse(&elf(None, 0x20_0000)), Err(ElfError::NoPvhNote));
        assert_eq!(parse(&elf(Some(1), 0xffff_ffff)), Err(ElfError::BadSegment));
        assert_eq!(parse(b"MZ not an elf"), Err(ElfError::NotElf64));
        let f = elf(Some(0x20_0010), 0x20_0000);
        for cut in [70, 64 + 56 + 10, f.len() - 3] {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        let mut far = f.clone();
        far[32..40].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        assert_eq!(parse(&far), Err(ElfError::Truncated));
        let mut arm = f.clone();
        arm[18] = 183;
        assert_eq!(parse(&arm), Err(ElfError::NotX86_64));
    }
}
