//! Ids and time, the two things the core is handed rather than makes.
//!
//! Every object the core creates (workflow, commit, invoice, webhook) gets an id derived from its
//! cause with a name-based UUID (v5), so replaying the same inputs after a crash re-creates the
//! same ids and a payment provider sees the same idempotency key. Objects created at the edge
//! (customers, contracts) arrive with their ids inside the input.
//!
//! Time is a [`Timestamp`] in Unix milliseconds supplied with each input; the core never reads a
//! clock. Calendar arithmetic (month boundaries of billing periods) is done here on civil dates,
//! UTC only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An object id, a UUID in Metronome's textual form.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Id(Uuid);

/// Namespace of every derived id, so Tollgate's ids never collide with other v5 users.
const NAMESPACE: Uuid = Uuid::from_u128(0x8f3c_5a1e_9d24_4b7a_a6e2_0c51_7d3e_94b8);

impl Id {
    /// The nil UUID: "none" where an id is required (an alert's notice names no contract).
    pub const NIL: Id = Id(Uuid::nil());

    pub const fn from_u128(value: u128) -> Id {
        Id(Uuid::from_u128(value))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Id {
        Id(Uuid::from_bytes(bytes))
    }

    /// Parses a UUID, `None` when the text is not one.
    /// Parses an id in its one canonical form (lowercase, hyphenated): ids are matched byte for
    /// byte (SPEC 2.1), so `{...}`, `urn:uuid:`, upper-case or unhyphenated spellings of an id
    /// are not that id.
    pub fn parse(text: &str) -> Option<Id> {
        if text.len() != 36 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Uuid::from_str(text).ok().map(Id)
    }

    /// Derives the id of an object from its cause: the parent id, what kind of child it is, and
    /// a sequence number distinguishing siblings.
    pub fn derive(parent: Id, kind: &str, seq: u64) -> Id {
        let mut name = Vec::with_capacity(16 + kind.len() + 9);
        name.extend_from_slice(parent.0.as_bytes());
        name.extend_from_slice(kind.as_bytes());
        name.push(0);
        name.extend_from_slice(&seq.to_be_bytes());
        Id(Uuid::new_v5(&NAMESPACE, &name))
    }

    /// Derives an id from an arbitrary string key (a client's `uniqueness_key`, an alias).
    pub fn from_key(kind: &str, key: &str) -> Id {
        let mut name = Vec::with_capacity(kind.len() + 1 + key.len());
        name.extend_from_slice(kind.as_bytes());
        name.push(0);
        name.extend_from_slice(key.as_bytes());
        Id(Uuid::new_v5(&NAMESPACE, &name))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A point in time, milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

impl Timestamp {
    /// Far future used for open-ended schedules ("perpetual" contracts): 9999-12-31.
    pub const END_OF_TIME: Timestamp = Timestamp(253_402_214_400_000);

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Floors to the start of the hour (Metronome's schedule boundaries are hour-aligned).
    pub fn floor_hour(self) -> Timestamp {
        Timestamp(self.0.div_euclid(MS_PER_HOUR) * MS_PER_HOUR)
    }

    /// Start of the calendar month (UTC) containing this instant.
    pub fn month_start(self) -> Timestamp {
        let (y, m, _) = civil_from_days(self.0.div_euclid(MS_PER_DAY));
        Timestamp(days_from_civil(y, m, 1) * MS_PER_DAY)
    }

    /// Start of the calendar month following the one containing this instant.
    pub fn next_month_start(self) -> Timestamp {
        let (y, m, _) = civil_from_days(self.0.div_euclid(MS_PER_DAY));
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        Timestamp(days_from_civil(y, m, 1) * MS_PER_DAY)
    }

    /// Civil date and time parts (year, month, day, hour, minute, second, millisecond).
    pub fn parts(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        (
            y,
            m,
            d,
            (secs / 3600) as u32,
            ((secs / 60) % 60) as u32,
            (secs % 60) as u32,
            (ms_of_day % 1000) as u32,
        )
    }

    /// Builds a timestamp from civil UTC parts; `None` when a part is out of range.
    pub fn from_parts(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> Option<Self> {
        if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
            return None;
        }
        if h > 23 || mi > 59 || s > 60 || ms > 999 {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        let secs = i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s.min(59));
        Some(Timestamp(days * MS_PER_DAY + secs * 1000 + i64::from(ms)))
    }

    /// RFC 3339 in UTC with millisecond precision when needed: `2025-01-23T01:23:45Z`,
    /// `2025-01-23T01:23:45.120Z`.
    pub fn to_rfc3339(self) -> String {
        let (y, mo, d, h, mi, s, ms) = self.parts();
        if ms == 0 {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        } else {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
    }

    /// Parses RFC 3339 (`Z` or `±hh:mm` offset, optional fraction, 4-digit year).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        if b.len() < 20 {
            return None;
        }
        let num = |range: std::ops::Range<usize>| -> Option<u32> {
            let part = text.get(range)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (y, mo, d) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
        let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut i = 19;
        let mut ms = 0_u32;
        if b[i] == b'.' {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let frac = text.get(start..i)?;
            if frac.is_empty() {
                return None;
            }
            let padded: String = frac.chars().chain("000".chars()).take(3).collect();
            ms = padded.parse().ok()?;
        }
        let offset_ms: i64 = match b.get(i)? {
            b'Z' | b'z' if i + 1 == b.len() => 0,
            sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
                let oh = i64::from(num(i + 1..i + 3)?);
                let om = i64::from(num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let value = (oh * 60 + om) * 60_000;
                if *sign == b'+' { value } else { -value }
            }
            _ => return None,
        };
        let local = Timestamp::from_parts(y, mo, d, h, mi, s, ms)?;
        Some(Timestamp(local.0 - offset_ms))
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

// Howard Hinnant's days-from-civil algorithms (public domain), proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let parent = Id::from_u128(42);
        assert_eq!(
            Id::derive(parent, "workflow", 1),
            Id::derive(parent, "workflow", 1)
        );
        assert_ne!(
            Id::derive(parent, "workflow", 1),
            Id::derive(parent, "workflow", 2)
        );
        assert_ne!(
            Id::derive(parent, "workflow", 1),
            Id::derive(parent, "invoice", 1)
        );
        // Stable across builds: a changed derivation would re-key every payment.
        assert_eq!(
            Id::derive(parent, "workflow", 1).to_string(),
            Id::derive(Id::from_u128(42), "workflow", 1).to_string()
        );
    }

    #[test]
    fn rfc3339_roundtrips_and_handles_offsets() {
        let t = Timestamp::parse_rfc3339("2025-01-23T01:23:45Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-01-23T01:23:45Z");
        let with_offset = Timestamp::parse_rfc3339("2025-01-23T03:23:45.5+02:00").unwrap();
        assert_eq!(with_offset.to_rfc3339(), "2025-01-23T01:23:45.500Z");
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(Timestamp(0))
        );
        for bad in [
            "2025-01-23",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-01-23T01:23:45",
            "25-01-23T01:23:45Z",
            "2025-01-23T01:23:45.Z",
            "2025-01-23T01:23:45Zjunk",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn month_boundaries_follow_the_calendar() {
        let t = Timestamp::parse_rfc3339("2024-02-29T13:00:00Z").unwrap();
        assert_eq!(t.month_start().to_rfc3339(), "2024-02-01T00:00:00Z");
        assert_eq!(t.next_month_start().to_rfc3339(), "2024-03-01T00:00:00Z");
        let dec = Timestamp::parse_rfc3339("2025-12-31T23:59:59Z").unwrap();
        assert_eq!(dec.next_month_start().to_rfc3339(), "2026-01-01T00:00:00Z");
        assert_eq!(dec.floor_hour().to_rfc3339(), "2025-12-31T23:00:00Z");
    }
}

/// Why `key` cannot name a customer (an id or an ingest alias) or a transaction, if it cannot.
///
/// Keys are matched byte for byte (SPEC 2.1), so characters that print as nothing or that a
/// copy can silently change are refused: control characters (NUL among them), Unicode format
/// characters (zero-width spaces and joiners, direction overrides, the byte order mark) and
/// leading or trailing whitespace. Otherwise `acme`, `acme\u{200b}` and ` acme` would be three
/// customers that look like one.
pub fn key_problem(key: &str) -> Option<&'static str> {
    // Ingest checks two keys per event: most keys are ASCII, which has no format characters
    // and whose control characters are single bytes.
    if let Some((&first, &last)) = key.as_bytes().first().zip(key.as_bytes().last())
        && key.is_ascii()
    {
        return if char::from(first).is_whitespace() || char::from(last).is_whitespace() {
            Some(WHITESPACE_AT_EDGE)
        } else if key.bytes().any(|b| b.is_ascii_control()) {
            Some(CONTROL)
        } else {
            None
        };
    }
    key_problem_any(key)
}

const WHITESPACE_AT_EDGE: &str = "must not start or end with whitespace";
const CONTROL: &str = "must not contain control characters";

/// [`key_problem`] for any text.
fn key_problem_any(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("must not be empty");
    }
    if key.starts_with(char::is_whitespace) || key.ends_with(char::is_whitespace) {
        return Some(WHITESPACE_AT_EDGE);
    }
    if key.chars().any(char::is_control) {
        return Some(CONTROL);
    }
    if key.chars().any(is_format_char) {
        return Some(
            "must not contain invisible formatting characters (such as zero-width spaces)",
        );
    }
    None
}

/// Unicode general category Cf (format characters), as of Unicode 15.
fn is_format_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[cfg(test)]
mod key_tests {
    use super::key_problem;

    #[test]
    fn keys_that_look_like_others_are_refused_and_plain_ones_pass() {
        for good in [
            "acme",
            "team@example.com",
            "a b",
            "caf\u{e9}",
            "\u{65e5}\u{672c}",
        ] {
            assert_eq!(key_problem(good), None, "{good:?}");
        }
        for bad in [
            "",
            " acme",
            "acme ",
            "acme\t",
            "acme\u{0}x",
            "ac\u{7f}me",
            "acme\u{200b}",
            "\u{feff}acme",
            "ac\u{202e}me",
            "acme\u{2060}",
            "acme\u{a0}",
        ] {
            assert!(key_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn the_ascii_path_judges_every_ascii_key_as_the_general_one_does() {
        for byte in 0..=0x7f_u8 {
            let c = char::from(byte);
            for key in [
                format!("{c}"),
                format!("{c}ab"),
                format!("ab{c}"),
                format!("a{c}b"),
            ] {
                assert_eq!(key_problem(&key), super::key_problem_any(&key), "{key:?}");
            }
        }
        assert_eq!(
            key_problem("\u{b}x"),
            Some(super::WHITESPACE_AT_EDGE),
            "a vertical tab first"
        );
        assert_eq!(key_problem("x\u{1f}y"), Some(super::CONTROL));
        assert_eq!(key_problem(""), Some("must not be empty"));
    }
}

/// The calendar and id functions checked against independent references, value by value: a
/// naive day-by-day calendar walk, Python's `uuid.uuid5` for the derived ids, and every
/// boundary of the RFC 3339 parser.
#[cfg(test)]
mod reference_tests {
    use super::*;

    /// The Gregorian leap rule, written out separately from `is_leap`.
    fn leap(year: i64) -> bool {
        year % 400 == 0 || (year % 100 != 0 && year % 4 == 0)
    }

    fn month_length(year: i64, month: u32) -> u32 {
        const LENGTHS: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        LENGTHS[month as usize - 1] + u32::from(month == 2 && leap(year))
    }

    #[test]
    fn every_day_from_1583_to_2800_matches_a_naive_calendar_walk() {
        // Walk forward one day at a time from the epoch and backwards from it, so both signs of
        // the day count (and the 400-year era arithmetic on each side) are covered.
        let (mut y, mut m, mut d) = (1970_i64, 1_u32, 1_u32);
        for z in 0..(2801 - 1970) * 366 {
            if y > 2800 {
                break;
            }
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
            assert_eq!(days_in_month(y, m), month_length(y, m), "{y}-{m}");
            d += 1;
            if d > month_length(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        let (mut y, mut m, mut d) = (1969_i64, 12_u32, 31_u32);
        for z in (-(1970 - 1583) * 366..0).rev() {
            if y < 1583 {
                break;
            }
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
            d -= 1;
            if d == 0 {
                if m == 1 {
                    m = 12;
                    y -= 1;
                } else {
                    m -= 1;
                }
                d = month_length(y, m);
            }
        }
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        for (year, expected) in [
            (1900, false),
            (2000, true),
            (2023, false),
            (2024, true),
            (2100, false),
            (2400, true),
            (1600, true),
            (-4, true),
            (-100, false),
        ] {
            assert_eq!(is_leap(year), expected, "{year}");
        }
    }

    /// Timestamps on both sides of the epoch, at day, hour and second edges, and a spread of
    /// others from a fixed linear congruential sequence.
    fn sample_instants() -> Vec<i64> {
        let mut out = vec![
            0,
            -1,
            1,
            999,
            1000,
            MS_PER_HOUR - 1,
            MS_PER_HOUR,
            MS_PER_DAY - 1,
            MS_PER_DAY,
            -MS_PER_DAY,
            -MS_PER_DAY - 1,
            951_782_400_000,     // 2000-02-29T00:00:00Z
            1_709_251_199_999,   // 2024-02-29T23:59:59.999Z
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            -12_219_292_800_000, // 1582-10-15T00:00:00Z
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Years 1583..9999 in both directions from the epoch.
            let span = 253_402_300_799_999_i64 + 12_219_292_800_000;
            out.push((x >> 1) as i64 % span - 12_219_292_800_000);
        }
        out
    }

    #[test]
    fn parts_split_an_instant_and_from_parts_rebuilds_it() {
        for ms in sample_instants() {
            let t = Timestamp(ms);
            let (y, mo, d, h, mi, s, milli) = t.parts();
            let day = ms.div_euclid(MS_PER_DAY);
            let of_day = ms.rem_euclid(MS_PER_DAY);
            assert_eq!(civil_from_days(day), (y, mo, d), "{ms}");
            assert_eq!(i64::from(h), of_day / MS_PER_HOUR, "{ms}");
            assert_eq!(i64::from(mi), of_day % MS_PER_HOUR / 60_000, "{ms}");
            assert_eq!(i64::from(s), of_day % 60_000 / 1000, "{ms}");
            assert_eq!(i64::from(milli), of_day % 1000, "{ms}");
            assert_eq!(Timestamp::from_parts(y, mo, d, h, mi, s, milli), Some(t));
            let text = t.to_rfc3339();
            assert_eq!(Timestamp::parse_rfc3339(&text), Some(t), "{text}");
            assert_eq!(text.len(), if milli == 0 { 20 } else { 24 }, "{text}");
            assert_eq!(t.millis(), ms);
            assert_eq!(t.floor_hour().0, ms.div_euclid(MS_PER_HOUR) * MS_PER_HOUR);
            assert_eq!(t.month_start().parts(), (y, mo, 1, 0, 0, 0, 0));
            let next = if mo == 12 { (y + 1, 1) } else { (y, mo + 1) };
            assert_eq!(
                t.next_month_start().parts(),
                (next.0, next.1, 1, 0, 0, 0, 0)
            );
        }
    }

    #[test]
    fn from_parts_refuses_every_out_of_range_part() {
        let ok = |y, mo, d, h, mi, s, ms| Timestamp::from_parts(y, mo, d, h, mi, s, ms);
        assert_eq!(ok(1970, 1, 1, 0, 0, 0, 0), Some(Timestamp(0)));
        assert_eq!(
            ok(2025, 12, 31, 23, 59, 59, 999),
            Timestamp::parse_rfc3339("2025-12-31T23:59:59.999Z")
        );
        // A leap second is read as the last second of its minute.
        assert_eq!(
            ok(2016, 12, 31, 23, 59, 60, 0),
            ok(2016, 12, 31, 23, 59, 59, 0)
        );
        assert_eq!(
            ok(2024, 2, 29, 0, 0, 0, 0),
            Some(Timestamp(1_709_164_800_000))
        );
        for (y, mo, d, h, mi, s, ms) in [
            (2025, 0, 1, 0, 0, 0, 0),
            (2025, 13, 1, 0, 0, 0, 0),
            (2025, 1, 0, 0, 0, 0, 0),
            (2025, 1, 32, 0, 0, 0, 0),
            (2025, 4, 31, 0, 0, 0, 0),
            (2025, 2, 29, 0, 0, 0, 0),
            (1900, 2, 29, 0, 0, 0, 0),
            (2025, 1, 1, 24, 0, 0, 0),
            (2025, 1, 1, 0, 60, 0, 0),
            (2025, 1, 1, 0, 0, 61, 0),
            (2025, 1, 1, 0, 0, 0, 1000),
        ] {
            assert_eq!(
                ok(y, mo, d, h, mi, s, ms),
                None,
                "{y}-{mo}-{d} {h}:{mi}:{s}.{ms}"
            );
        }
    }

    #[test]
    fn the_parser_reads_every_accepted_form_and_refuses_each_broken_one() {
        let at = |text: &str| Timestamp::parse_rfc3339(text).map(Timestamp::to_rfc3339);
        let base = "2025-01-23T01:23:45Z";
        assert_eq!(at(base).as_deref(), Some(base));
        for (text, expected) in [
            ("2025-01-23t01:23:45z", base),
            ("2025-01-23 01:23:45Z", base),
            ("2025-01-23T01:23:45.1Z", "2025-01-23T01:23:45.100Z"),
            ("2025-01-23T01:23:45.12Z", "2025-01-23T01:23:45.120Z"),
            ("2025-01-23T01:23:45.123Z", "2025-01-23T01:23:45.123Z"),
            ("2025-01-23T01:23:45.123999Z", "2025-01-23T01:23:45.123Z"),
            ("2025-01-23T01:23:45+00:00", base),
            ("2025-01-23T03:53:45+02:30", base),
            ("2025-01-22T23:23:45-02:00", base),
            ("2025-01-22T01:24:45-23:59", base),
            ("2025-01-23T01:23:45.5-00:00", "2025-01-23T01:23:45.500Z"),
        ] {
            assert_eq!(at(text).as_deref(), Some(expected), "{text}");
        }
        for bad in [
            "",
            "2025-01-23T01:23:45",
            "2025-01-23T01:23:4Z",
            "2025_01-23T01:23:45Z",
            "2025-01_23T01:23:45Z",
            "2025-01-23X01:23:45Z",
            "2025-01-23T01_23:45Z",
            "2025-01-23T01:23_45Z",
            "2025-+1-23T01:23:45Z",
            "+025-01-23T01:23:45Z",
            "2025-01-23T01:23:+5Z",
            "2025-01-23T01:23:45.Z",
            "2025-01-23T01:23:45.",
            "2025-01-23T01:23:45.1",
            "2025-01-23T01:23:45ZZ",
            "2025-01-23T01:23:45+02:0",
            "2025-01-23T01:23:45+0200",
            "2025-01-23T01:23:45+02-00",
            "2025-01-23T01:23:45+02:000",
            "2025-01-23T01:23:45+24:00",
            "2025-01-23T01:23:45+02:60",
            "2025-01-23T01:23:45+0a:00",
            "2025-01-23T01:23:45*02:00",
            "2025-01-23T01:23:45.1x",
            "2025-01-32T01:23:45Z",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_add_saturating() {
        assert_eq!(Timestamp(5).plus_ms(7), Timestamp(12));
        assert_eq!(Timestamp(5).plus_ms(-7), Timestamp(-2));
        assert_eq!(Timestamp(i64::MAX - 1).plus_ms(5), Timestamp(i64::MAX));
    }

    #[test]
    fn ids_derive_to_the_values_python_computes() {
        // Computed with Python: uuid5-style SHA-1 over NAMESPACE's bytes and the name bytes
        // (parent bytes, kind, NUL, big-endian sequence number / kind, NUL, key).
        let parent = Id::from_u128(42);
        assert_eq!(
            Id::derive(parent, "workflow", 1).to_string(),
            "6f504050-ac10-57b0-b795-6afc49727a65"
        );
        assert_eq!(
            Id::from_key("alias", "acme").to_string(),
            "373a8b0e-6656-512d-b1f2-858d00fcf39a"
        );
        // The NUL keeps a kind's tail from being read as the key's head.
        assert_ne!(Id::from_key("ab", "c"), Id::from_key("a", "bc"));
        assert_ne!(Id::from_key("alias", "acme"), Id::from_key("alias", "acmf"));
        assert_ne!(
            Id::derive(parent, "w", 1),
            Id::derive(Id::from_u128(43), "w", 1)
        );
    }

    #[test]
    fn ids_parse_only_in_their_canonical_form_and_convert_losslessly() {
        let id = Id::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let text = "01234567-89ab-cdef-0123-456789abcdef";
        assert_eq!(id.to_string(), text);
        assert_eq!(Id::parse(text), Some(id));
        assert_eq!(id.as_u128(), 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(Id::from_bytes(*id.as_bytes()), id);
        assert_eq!(id.as_bytes()[0], 0x01);
        assert_eq!(id.as_bytes()[15], 0xef);
        assert_ne!(Id::from_u128(1), Id::default());
        for other in [
            "01234567-89AB-cdef-0123-456789abcdef",
            "0123456789abcdef0123456789abcdef",
            "{01234567-89ab-cdef-0123-456789abcdef}",
            "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdeg",
        ] {
            assert_eq!(Id::parse(other), None, "{other}");
        }
    }
}
