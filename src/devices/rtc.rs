//! CMOS/RTC at ports 0x70-0x71: the wall clock in binary 24-hour mode and
//! an update-in-progress flag that is never set, so the guest reads the time
//! at once instead of polling register A for seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

pub const RTC_BASE: u64 = 0x70;
pub const RTC_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// 32.768 kHz time base, 1024 Hz rate, UIP clear.
const REG_A_VALUE: u8 = 0x26;
/// 24-hour mode, binary (not BCD) values.
const REG_B_VALUE: u8 = 0x06;
/// Valid RAM and time.
const REG_D_VALUE: u8 = 0x80;
/// The index port also carries the NMI mask in bit 7.
const INDEX_MASK: u8 = 0x7f;

pub struct Rtc {
    index: u8,
    /// Scratch CMOS bytes the guest may write and read back.
    nvram: [u8; 128],
}

/// Calendar date and time of day in UTC.
#[derive(Debug, PartialEq, Eq)]
struct DateTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            weekday: ((days + 4) % 7) as u8 + 1,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

/// Gregorian date of a day count since 1970-01-01, counting in 400-year eras
/// that start on March 1st so leap days fall at the end of each year.
fn civil_from_days(days: u64) -> (u32, u8, u8) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u8;
    let year = (year_of_era + era * 400 + u64::from(month <= 2)) as u32;
    (year, month, day)
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc {
            index: 0,
            nvram: [0; 128],
        }
    }
}

impl Rtc {
    pub fn new() -> Self {
        Self::default()
    }

    fn register(&self, index: u8) -> u8 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = DateTime::from_unix(now);
        match index {
            REG_SECONDS => t.second,
            REG_MINUTES => t.minute,
            REG_HOURS => t.hour,
            REG_WEEKDAY => t.weekday,
            REG_DAY => t.day,
            REG_MONTH => t.month,
            REG_YEAR => (t.year % 100) as u8,
            REG_CENTURY => (t.year / 100) as u8,
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            other => self.nvram[usize::from(other)],
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            0 => self.index,
            _ => self.register(self.index),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.index = value & INDEX_MASK,
            // Clock and status registers are read-only here: the guest
            // cannot set the host's time.
            _ if self.index > REG_D && self.index != REG_CENTURY => {
                self.nvram[usize::from(self.index)] = value
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_convert() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2000-02-29 12:34:56 UTC, a Tuesday.
        assert_eq!(
            DateTime::from_unix(951_827_696),
            DateTime {
                year: 2000,
                month: 2,
                day: 29,
                weekday: 3,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        // 2026-11-24 00:00:00 UTC, a Tuesday.
        let t = DateTime::from_unix(1_795_478_400);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2026, 11, 24, 3));
    }

    #[test]
    fn update_in_progress_is_never_set_and_mode_is_binary() {
        let mut rtc = Rtc::new();
        let mut b = [0u8];
        rtc.write(0, &[REG_A | 0x80]);
        rtc.read(1, &mut b);
        assert_eq!(b[0] & 0x80, 0);
        rtc.write(0, &[REG_B]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], REG_B_VALUE);
    }

    #[test]
    fn nvram_keeps_writes_but_clock_ignores_them() {
        let mut rtc = Rtc::new();
        let mut b = [0u8];
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0x5a]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x5a);
        rtc.write(0, &[REG_B]);
        rtc.write(1, &[0]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], REG_B_VALUE);
    }
}
