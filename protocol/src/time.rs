//! Timestamps as Python writes them with `datetime.isoformat()`.
//!
//! Celery sends `eta` and `expires` as ISO-8601 strings: aware (`…+00:00`) for countdowns and
//! numbers of seconds, but **naive** when the caller passed a naive datetime, which the worker
//! must then read in the app's time zone. Result records carry `date_done` in the same format,
//! with the fraction left out when the microseconds are zero.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// A parsed `isoformat()` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// It carried an offset.
    Aware(DateTime<FixedOffset>),
    /// It carried none: read it in the app's time zone.
    Naive(NaiveDateTime),
}

impl Timestamp {
    /// Parses what Python's `datetime.fromisoformat` accepts in practice: `T` or a space between
    /// date and time, optional fraction, optional `Z` or `±HH:MM` offset.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self::Aware(dt));
        }
        for fmt in [
            "%Y-%m-%dT%H:%M:%S%.f%:z",
            "%Y-%m-%d %H:%M:%S%.f%:z",
            "%Y-%m-%dT%H:%M%:z",
        ] {
            if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
                return Ok(Self::Aware(dt));
            }
        }
        for fmt in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ] {
            if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
                return Ok(Self::Naive(dt));
            }
        }
        Err(format!("`{s}` is not an ISO-8601 timestamp"))
    }

    /// The instant this timestamp names, reading a naive one in `tz`.
    ///
    /// A naive time that falls twice (DST end) takes the earlier instant; one that does not
    /// exist (DST start) is read as if the clock had already moved forward, as `zoneinfo` does.
    pub fn to_utc(&self, tz: Tz) -> DateTime<Utc> {
        match self {
            Self::Aware(dt) => dt.with_timezone(&Utc),
            Self::Naive(naive) => match tz.from_local_datetime(naive) {
                LocalResult::Single(dt) | LocalResult::Ambiguous(dt, _) => dt.with_timezone(&Utc),
                LocalResult::None => {
                    // The offset in force just before the gap: a day earlier is safely before it.
                    let day_before = *naive - chrono::Duration::hours(24);
                    let before = tz.offset_from_utc_datetime(&day_before).fix();
                    let utc =
                        *naive - chrono::Duration::seconds(i64::from(before.local_minus_utc()));
                    Utc.from_utc_datetime(&utc)
                }
            },
        }
    }
}

/// Formats an instant like Python's `datetime.isoformat()` in `tz`:
/// `2026-11-26T10:23:12.199135+00:00`, or without the fraction when it is zero.
pub fn isoformat(instant: DateTime<Utc>, tz: Tz) -> String {
    let local = instant.with_timezone(&tz);
    isoformat_fixed(local.with_timezone(&local.offset().fix()))
}

/// Formats a time with a fixed offset like Python's `datetime.isoformat()`.
pub fn isoformat_fixed(fixed: DateTime<FixedOffset>) -> String {
    let micros = fixed.timestamp_subsec_micros();
    let base = fixed.format("%Y-%m-%dT%H:%M:%S").to_string();
    let offset = fixed.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    let (h, m, sec) = (abs / 3600, (abs % 3600) / 60, abs % 60);
    let mut out = base;
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    out.push_str(&format!("{sign}{h:02}:{m:02}"));
    if sec != 0 {
        out.push_str(&format!(":{sec:02}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aware_and_naive_forms_parse() {
        let aware = Timestamp::parse("2026-11-26T10:22:56.241282+00:00").unwrap();
        assert!(matches!(aware, Timestamp::Aware(_)));
        assert_eq!(
            isoformat(aware.to_utc(Tz::UTC), Tz::UTC),
            "2026-11-26T10:22:56.241282+00:00"
        );
        let naive = Timestamp::parse("2030-01-02T03:04:05").unwrap();
        assert!(matches!(naive, Timestamp::Naive(_)));
        let in_paris = naive.to_utc(Tz::Europe__Paris);
        assert_eq!(isoformat(in_paris, Tz::UTC), "2030-01-02T02:04:05+00:00");
        assert!(Timestamp::parse("2026-11-26 10:22:56Z").is_ok());
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn isoformat_drops_zero_fraction_and_writes_the_offset() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 10, 23, 12).unwrap();
        assert_eq!(isoformat(t, Tz::UTC), "2026-11-26T10:23:12+00:00");
        assert_eq!(isoformat(t, Tz::Asia__Kolkata), "2026-11-26T15:53:12+05:30");
        assert_eq!(
            isoformat(t, Tz::America__New_York),
            "2026-11-26T05:23:12-05:00"
        );
    }

    #[test]
    fn a_naive_time_in_a_dst_gap_moves_forward() {
        // 2026-03-29 02:30 does not exist in Paris (clocks go 02:00 -> 03:00).
        let gap = Timestamp::parse("2026-03-29T02:30:00").unwrap();
        let utc = gap.to_utc(Tz::Europe__Paris);
        assert_eq!(isoformat(utc, Tz::UTC), "2026-03-29T01:30:00+00:00");
    }
}
