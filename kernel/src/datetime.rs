//! Seconds since the Unix epoch as a UTC calendar date and time, for the
//! shell (`ls -l`, `stat`, `uptime`): days to (year, month, day) in the
//! proleptic Gregorian calendar by whole-era arithmetic (an era is 400
//! years, 146 097 days), no tables and no floating point.

use core::fmt;

/// Days in one 400-year era.
const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01: counting from a March 1st puts the
/// leap day last in the year.
const EPOCH_FROM_MARCH_0000: i64 = 719_468;

/// (year, month 1..=12, day 1..=31) of `days` since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + EPOCH_FROM_MARCH_0000;
    let era = z.div_euclid(DAYS_PER_ERA);
    let doe = z.rem_euclid(DAYS_PER_ERA); // day of era, 0..=146_096
                                          // Year of era: take out the leap days of every 4th year, except every
                                          // 100th, except the last day of the era.
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / (DAYS_PER_ERA - 1)) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March year
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A time in seconds since the epoch, shown as `YYYY-MM-DD HH:MM:SS`
/// (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc(pub u64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // u64::MAX / 86 400 fits an i64: no overflow on any input.
        let (y, m, d) = civil_from_days((self.0 / 86_400) as i64);
        let s = self.0 % 86_400;
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            s / 3600,
            (s / 60) % 60,
            s % 60
        )
    }
}

/// [`Utc`] with nanoseconds: `YYYY-MM-DD HH:MM:SS.NNNNNNNNN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcNanos(pub u64, pub u32);

impl fmt::Display for UtcNanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", Utc(self.0), self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// Days from 1970-01-01 to a date by counting whole years and months:
    /// slow, obviously right, independent of the era arithmetic.
    fn days_by_counting(year: i64, month: u32, day: u32) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_days = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut days = 0i64;
        if year >= 1970 {
            for y in 1970..year {
                days += if leap(y) { 366 } else { 365 };
            }
        } else {
            for y in year..1970 {
                days -= if leap(y) { 366 } else { 365 };
            }
        }
        for m in 1..month {
            days += month_days(year, m);
        }
        days + i64::from(day) - 1
    }

    #[test]
    fn known_dates() {
        assert_eq!(Utc(0).to_string(), "1970-01-01 00:00:00");
        assert_eq!(Utc(1_796_529_313).to_string(), "2026-12-06 03:55:13");
        assert_eq!(Utc(946_684_799).to_string(), "1999-12-31 23:59:59");
        assert_eq!(Utc(951_782_400).to_string(), "2000-02-29 00:00:00");
        assert_eq!(Utc(4_107_542_400).to_string(), "2100-03-01 00:00:00");
        assert_eq!(Utc(2_147_483_648).to_string(), "2038-01-19 03:14:08");
        assert_eq!(Utc(253_402_300_799).to_string(), "9999-12-31 23:59:59");
        assert_eq!(
            UtcNanos(1_796_529_313, 5).to_string(),
            "2026-12-06 03:55:13.000000005"
        );
    }

    #[test]
    fn every_day_of_six_centuries_matches_counting() {
        // 1600..2200 crosses leap centuries (1600, 2000) and common ones
        // (1700, 1800, 1900, 2100), and days before the epoch.
        let first = days_by_counting(1600, 1, 1);
        let last = days_by_counting(2200, 1, 1);
        let (mut y, mut m, mut d) = civil_from_days(first);
        assert_eq!((y, m, d), (1600, 1, 1));
        for days in first + 1..last {
            let next = civil_from_days(days);
            // The next day in calendar order: day+1, else 1st of next
            // month, else January 1st of next year.
            let expect = if next.2 == d + 1 && next.1 == m && next.0 == y {
                next
            } else if m == 12 {
                (y + 1, 1, 1)
            } else {
                (y, m + 1, 1)
            };
            assert_eq!(next, expect, "day {days}");
            (y, m, d) = next;
            if d == 1 {
                assert_eq!(days_by_counting(y, m, d), days, "{y}-{m}-{d}");
            }
        }
        assert_eq!(civil_from_days(last), (2200, 1, 1));
    }

    #[test]
    fn month_lengths_and_leap_days() {
        for (y, leap) in [(1900, false), (2000, true), (2024, true), (2100, false)] {
            let feb28 = days_by_counting(y, 2, 28);
            let next = civil_from_days(feb28 + 1);
            assert_eq!(next == (y, 2, 29), leap, "{y}: {next:?}");
        }
    }

    #[test]
    fn the_largest_time_does_not_overflow() {
        let s = Utc(u64::MAX).to_string();
        assert!(s.ends_with(" 07:00:15"), "{s}");
    }
}
