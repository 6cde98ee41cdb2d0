//! The CMOS real-time clock: wall-clock time at boot, read once and then
//! carried forward by the TSC. Handles BCD and 12-hour modes and waits out
//! the update-in-progress window (bounded).

use crate::port::{inb, outb};

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;

fn read_reg(reg: u8) -> u8 {
    // SAFETY: the CMOS index/data ports; bit 7 of the index keeps NMI enabled
    // state unchanged on QEMU and we only read clock registers.
    unsafe {
        outb(INDEX, reg);
        inb(DATA)
    }
}

fn update_in_progress() -> bool {
    read_reg(0x0a) & 0x80 != 0
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Raw {
    sec: u8,
    min: u8,
    hour: u8,
    day: u8,
    month: u8,
    year: u8,
    century: u8,
}

fn read_raw() -> Raw {
    for _ in 0..100_000 {
        if !update_in_progress() {
            break;
        }
    }
    Raw {
        sec: read_reg(0x00),
        min: read_reg(0x02),
        hour: read_reg(0x04),
        day: read_reg(0x07),
        month: read_reg(0x08),
        year: read_reg(0x09),
        century: read_reg(0x32),
    }
}

fn bcd(v: u8) -> u8 {
    (v & 0x0f) + (v >> 4) * 10
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch according to the RTC (UTC, as QEMU sets it).
pub fn read_unix_seconds() -> u64 {
    // Read twice until two reads agree, so a tick between fields is not seen.
    let mut raw = read_raw();
    for _ in 0..8 {
        let again = read_raw();
        if again == raw {
            break;
        }
        raw = again;
    }
    let status_b = read_reg(0x0b);
    let binary = status_b & 0x04 != 0;
    let hour24 = status_b & 0x02 != 0;
    let conv = |v: u8| if binary { v } else { bcd(v) };
    let pm = raw.hour & 0x80 != 0;
    let mut hour = conv(raw.hour & 0x7f) as u64;
    if !hour24 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let century = match conv(raw.century) {
        c @ 19..=21 => c as i64,
        _ => 20,
    };
    let year = century * 100 + conv(raw.year) as i64;
    let month = conv(raw.month).clamp(1, 12) as u32;
    let day = conv(raw.day).clamp(1, 31) as u32;
    let days = days_from_civil(year, month, day).max(0) as u64;
    days * 86_400 + hour * 3_600 + conv(raw.min) as u64 * 60 + conv(raw.sec) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(bcd(0x59), 59);
    }
}
