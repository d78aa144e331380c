//! Celery's `crontab` schedule: its five fields parsed as `celery.schedules.crontab_parser`
//! reads them, and the next fire instant in a time zone under celeriac's DST rule.
//!
//! We do not use the `cron` crate: it reads a different language. Checked against cron 0.17
//! (zslayton/cron): it numbers days of the week 1-7 with Sunday = 1 and rejects 0, where Celery
//! uses 0-6 with Sunday = 0 (and rejects 7); it requires a seconds field (6 or 7 fields) where
//! Celery has five and fires on whole minutes; it rejects a range whose start is above its end,
//! where Celery wraps around (`hour="22-2"` is 22, 23, 0, 1, 2, and `"22-2/2"` steps over that
//! list: 22, 0, 2); its `5/15` means 5 to the maximum every 15, which Celery rejects; it rejects a
//! step above the field's maximum, which Celery allows (`*/100` is just the first value); its day
//! and month names are a fixed list, where Celery takes any word whose first three letters name one
//! (`weds`, `thurs`, `sept`); and across DST it skips local times that do not exist and fires every
//! schedule at both occurrences of a repeated local time. Like Celery (and unlike Vixie cron, which
//! fires when *either* day field matches), both crates AND `day_of_month` with `day_of_week`:
//! Celery's `remaining_delta` requires month, day of month and day of week all to match
//! (`execute_this_date`), and `_delta_to_next` walks the allowed days of the allowed months and
//! keeps the first whose weekday is allowed; so `day_of_month="1-7", day_of_week="mon"` is the
//! first Monday of each month.
//!
//! Slots are whole minutes of local wall-clock time in the schedule's zone. Away from DST changes
//! [`Crontab::next_after`] is exactly Celery's next run after `last_run_at`: the first matching
//! minute strictly after it (`remaining_delta` compares only `last_run_at.minute` and sets seconds
//! and microseconds to zero). Across a change we follow our own rule, where Celery is
//! inconsistent: it fires a nonexistent 01:30 at 01:30 of the old offset (02:30 of the new), its
//! hourly crontab skips the second pass of a repeated hour, and from inside that second pass it
//! computes a next run that is already past (`ffwd` loses the `fold` of `last_run_at`), so a
//! fixed 01:30 fires a second time at once. Ours:
//! (a) a slot whose local time does not exist (spring forward) fires once, at the first instant
//!     after it, the transition itself: every slot of the gap fires there, together;
//! (b) a slot whose local time occurs twice (fall back) fires once, at its first occurrence, when
//!     the hour field is not a wildcard;
//! (c) when the hour field matches all 24 hours, slots in the repeated hour fire at both
//!     occurrences: an hourly schedule fires every real hour.
//!
//! Parsing follows Celery 5.7's `crontab_parser` and `crontab.__init__` with these deliberate
//! refusals of input Celery accepts by accident: text after a complete part (`*/5/2`, `1-5-9`,
//! `1-5 `, all of which Celery's prefix-matching regexes silently truncate), names outside their
//! field (Celery reads `minute="jan"` as 1 and `day_of_week="jan"` as Monday), names with digits or
//! underscores (`mon1`), and numbers with `_` separators or non-ASCII digits. Month names and
//! the never-occurring-day check are Celery 5.7's; Celery 5.3 had neither.

use std::fmt;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use thiserror::Error;

/// How far ahead [`Crontab::next_after`] looks: a whole Gregorian cycle, after which dates and
/// weekdays repeat, so a crontab with no slot in this window has none ever. Every crontab that
/// [`Crontab::parse`] accepts has a slot in any such window (the rarest, a 29 February on a given
/// weekday, recurs within 40 years).
const SEARCH_YEARS: i32 = 400;

/// The longest month of each month of the year, February counted in a leap year, as Celery's
/// `CRON_DAYS_IN_MONTH`.
const LONGEST_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// A field of a crontab that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("crontab {field} {value:?}: {reason}")]
pub struct CrontabError {
    /// `minute`, `hour`, `day_of_week`, `day_of_month` or `month_of_year`.
    pub field: &'static str,
    /// The text as given.
    pub value: String,
    /// Why it cannot be read.
    pub reason: String,
}

/// A parsed crontab: the text of its five fields and the set of values each one allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crontab {
    /// minute, hour, day_of_week, day_of_month, month_of_year, as given.
    text: [String; 5],
    /// Bit `v` is set when value `v` is allowed (days of the week: Sunday = 0).
    minute: u64,
    hour: u64,
    day_of_week: u64,
    day_of_month: u64,
    month_of_year: u64,
}

/// Which names a field accepts besides numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    None,
    Days,
    Months,
}

/// A field's name and range, as Celery's `crontab_parser(max_, min_)`: values `min..min + count`.
#[derive(Debug, Clone, Copy)]
struct FieldSpec {
    name: &'static str,
    min: u32,
    count: u32,
    names: Names,
}

impl FieldSpec {
    fn max(self) -> u32 {
        self.min + self.count - 1
    }
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    count: 60,
    names: Names::None,
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    count: 24,
    names: Names::None,
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day_of_week",
    min: 0,
    count: 7,
    names: Names::Days,
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day_of_month",
    min: 1,
    count: 31,
    names: Names::None,
};
const MONTH_OF_YEAR: FieldSpec = FieldSpec {
    name: "month_of_year",
    min: 1,
    count: 12,
    names: Names::Months,
};

impl Crontab {
    /// Parses the five fields in Celery's argument order (`crontab(minute, hour, day_of_week,
    /// day_of_month, month_of_year)`). Each field is a comma-separated list of `*`, `*/step`, a
    /// number or name, `a-b` or `a-b/step` (a range with `a > b` wraps around the field's end).
    /// Like Celery, a `day_of_month` that occurs in none of the months of `month_of_year` (the 30th
    /// of February) is refused.
    pub fn parse(
        minute: &str,
        hour: &str,
        day_of_week: &str,
        day_of_month: &str,
        month_of_year: &str,
    ) -> Result<Self, CrontabError> {
        // Celery's order of evaluation, so the first error reported is the one Celery raises.
        let hour_bits = parse_field(HOUR, hour)?;
        let minute_bits = parse_field(MINUTE, minute)?;
        let dow_bits = parse_field(DAY_OF_WEEK, day_of_week)?;
        let dom_bits = parse_field(DAY_OF_MONTH, day_of_month)?;
        let moy_bits = parse_field(MONTH_OF_YEAR, month_of_year)?;
        let some_day_exists = (1..=12u32).any(|month| {
            let longest = LONGEST_MONTH[month as usize - 1];
            has(moy_bits, month) && (1..=longest).any(|day| has(dom_bits, day))
        });
        if !some_day_exists {
            return Err(CrontabError {
                field: DAY_OF_MONTH.name,
                value: day_of_month.to_owned(),
                reason: format!("never occurs in month_of_year {month_of_year:?}"),
            });
        }
        Ok(Self {
            text: [minute, hour, day_of_week, day_of_month, month_of_year].map(str::to_owned),
            minute: minute_bits,
            hour: hour_bits,
            day_of_week: dow_bits,
            day_of_month: dom_bits,
            month_of_year: moy_bits,
        })
    }

    /// True when the hour field allows all 24 hours (`*`, `0-23`, `*/1`, ...): then slots in a
    /// repeated local hour fire at both occurrences (rule (c) of the module doc).
    pub fn hour_is_wildcard(&self) -> bool {
        self.hour == (1u64 << 24) - 1
    }

    /// The first fire instant strictly after `after`, with slots at whole minutes of local time
    /// in `tz`, under the DST rule of the module doc. `None` only when no slot exists within
    /// 400 years of `after` (the calendar's full cycle) or the date range of `chrono` ends.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let floor = local.with_second(0)?.with_nanosecond(0)?;
        let both_occurrences = self.hour_is_wildcard();
        // The first occurrence of a local time (the transition, for a nonexistent one) grows with
        // the local time, and that of `floor` is not after `after`: the answer is the first slot
        // from `floor` on whose first occurrence is after `after`, unless the second occurrence of
        // a repeated slot comes sooner. Such a slot lies before `floor` only when `after` is
        // itself inside a repeated stretch of local time, and then no earlier than its start.
        let mut cursor = floor;
        if both_occurrences && let LocalResult::Ambiguous(a, b) = tz.from_local_datetime(&local) {
            let fold = (b.with_timezone(&Utc) - a.with_timezone(&Utc)).abs();
            let start = local.checked_sub_signed(fold)?;
            cursor = start.with_second(0)?.with_nanosecond(0)?;
        }
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            let Some(slot) = self.next_local_slot(cursor) else {
                return best;
            };
            let (first, second) = occurrences(slot, tz)?;
            if first > after {
                return Some(best.map_or(first, |b| b.min(first)));
            }
            if let Some(second) = second.filter(|s| both_occurrences && *s > after) {
                best = Some(best.map_or(second, |b| b.min(second)));
            }
            cursor = slot.checked_add_signed(Duration::minutes(1))?;
        }
    }

    /// The first matching local minute at or after `from` (a whole minute), jumping over months,
    /// days and hours that do not match.
    fn next_local_slot(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = from.date();
        let last_year = start.year().checked_add(SEARCH_YEARS)?;
        let (mut year, mut month, mut first_day) = (start.year(), start.month(), start.day());
        while year <= last_year {
            if has(self.month_of_year, month) {
                let days = days_in_month(year, month);
                let mut day = first_day;
                while let Some(d) = next_value(self.day_of_month, day).filter(|&d| d <= days) {
                    let date = NaiveDate::from_ymd_opt(year, month, d)?;
                    if has(self.day_of_week, date.weekday().num_days_from_sunday()) {
                        let not_before = (date == start).then(|| (from.hour(), from.minute()));
                        if let Some((h, m)) = self.first_time(not_before) {
                            return date.and_hms_opt(h, m, 0);
                        }
                    }
                    day = d + 1;
                }
            }
            first_day = 1;
            (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
        }
        None
    }

    /// The first matching (hour, minute) of a matching day, at or after `not_before` if given.
    fn first_time(&self, not_before: Option<(u32, u32)>) -> Option<(u32, u32)> {
        let first_minute = next_value(self.minute, 0)?;
        match not_before {
            None => Some((next_value(self.hour, 0)?, first_minute)),
            Some((h, m)) => {
                if let Some(minute) = next_value(self.minute, m).filter(|_| has(self.hour, h)) {
                    return Some((h, minute));
                }
                Some((next_value(self.hour, h + 1)?, first_minute))
            }
        }
    }
}

impl fmt::Display for Crontab {
    /// The five fields as given, in `parse`'s order: minute hour day_of_week day_of_month
    /// month_of_year.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.text.join(" "))
    }
}

/// The instants of a local time: its first occurrence (for a nonexistent time, the transition
/// that skips it) and, for a repeated time, its second.
fn occurrences(local: NaiveDateTime, tz: Tz) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some((t.with_timezone(&Utc), None)),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            Some((a.min(b), Some(a.max(b))))
        }
        LocalResult::None => Some((transition_past(local, tz)?, None)),
    }
}

/// The instant at which the local clock of `tz` jumps over the nonexistent time `local`: the
/// first instant whose local time is after it.
fn transition_past(local: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    let is_past =
        |t: i64| DateTime::from_timestamp(t, 0).map(|u| u.with_timezone(&tz).naive_local() > local);
    // UTC offsets lie within ±26 hours, so `lo` reads before `local` and `hi` after it.
    let centre = local.and_utc().timestamp();
    let (mut lo, mut hi) = (centre - 26 * 3600, centre + 26 * 3600);
    if is_past(lo)? || !is_past(hi)? {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if is_past(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

fn has(bits: u64, value: u32) -> bool {
    value < 64 && bits & (1u64 << value) != 0
}

/// The smallest allowed value at or above `from`.
fn next_value(bits: u64, from: u32) -> Option<u32> {
    let above = bits.checked_shr(from)?;
    (above != 0).then(|| from + above.trailing_zeros())
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if NaiveDate::from_ymd_opt(year, 2, 29).is_some() => 29,
        2 => 28,
        _ => 31,
    }
}

/// One field, as `crontab_parser.parse`: the union of its comma-separated parts.
fn parse_field(spec: FieldSpec, text: &str) -> Result<u64, CrontabError> {
    let error = |reason: String| CrontabError {
        field: spec.name,
        value: text.to_owned(),
        reason,
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(error(if text.is_empty() {
                "empty field".into()
            } else {
                "empty part in the list".into()
            }));
        }
        let values = parse_part(spec, part).map_err(|reason| {
            // Name the part only when the field has several.
            error(if part == text {
                reason
            } else {
                format!("in {part:?}: {reason}")
            })
        })?;
        for value in values {
            bits |= 1u64 << value;
        }
    }
    Ok(bits)
}

/// One part of a list, as `crontab_parser._parse_part`, expanded in Celery's order (a step
/// counts along that order, so a wrapped range steps across the wrap).
fn parse_part(spec: FieldSpec, part: &str) -> Result<Vec<u32>, String> {
    let all = || (spec.min..=spec.max()).collect::<Vec<_>>();
    if part == "*" {
        return Ok(all());
    }
    if let Some(step) = part.strip_prefix("*/") {
        return Ok(take_steps(all(), parse_step(step)?));
    }
    if part.starts_with('-') {
        return Err("negative numbers are not supported".into());
    }
    if let Some((from, rest)) = part.split_once('-') {
        let (to, step) = match rest.split_once('/') {
            Some((to, step)) => (to, Some(parse_step(step)?)),
            None => (rest, None),
        };
        let (from, to) = (parse_value(spec, from)?, parse_value(spec, to)?);
        let values = if to < from {
            (from..=spec.max()).chain(spec.min..=to).collect()
        } else {
            (from..=to).collect()
        };
        return Ok(match step {
            Some(step) => take_steps(values, step),
            None => values,
        });
    }
    if part.contains('/') {
        return Err(
            "a step needs * or a range before it: write */n or a-b/n (Celery does not read a/n)"
                .into(),
        );
    }
    // A lone number goes through Python's int(), which allows spaces around it and a `+`.
    let trimmed = part.trim_matches(|c: char| c.is_ascii_whitespace());
    let number = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        return parse_value(spec, number).map(|v| vec![v]);
    }
    parse_value(spec, part).map(|v| vec![v])
}

/// Every `step`-th value, starting with the first (Python's `values[::step]`).
fn take_steps(values: Vec<u32>, step: usize) -> Vec<u32> {
    values.into_iter().step_by(step).collect()
}

fn parse_step(text: &str) -> Result<usize, String> {
    if text.is_empty() {
        return Err("empty step after /".into());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("step {text:?} is not a number"));
    }
    // A step beyond the field's size keeps only the first value, however large it is.
    match text.parse::<usize>() {
        Ok(0) => Err("step must be at least 1".into()),
        Ok(step) => Ok(step),
        Err(_) => Ok(usize::MAX),
    }
}

/// A number, or a day or month name where the field takes one, as `_expand_number`: a name is
/// read by its first three letters, case-insensitively (`Monday`, `tues`, `SEPT`).
fn parse_value(spec: FieldSpec, token: &str) -> Result<u32, String> {
    let value = if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still just "above the maximum".
        token.parse::<u64>().unwrap_or(u64::MAX)
    } else if token.len() >= 3 && token.bytes().all(|b| b.is_ascii_alphabetic()) {
        let prefix = token[..3].to_ascii_lowercase();
        let day = DAY_NAMES.iter().position(|n| *n == prefix);
        let month = MONTH_NAMES.iter().position(|n| *n == prefix);
        match (spec.names, day, month) {
            (Names::Days, Some(day), _) => day as u64,
            (Names::Months, _, Some(month)) => month as u64 + 1,
            (_, Some(_), _) => {
                return Err(format!("{token:?} is a day name, read only in day_of_week"));
            }
            (_, _, Some(_)) => {
                return Err(format!(
                    "{token:?} is a month name, read only in month_of_year"
                ));
            }
            _ => return Err(format!("{token:?} is not a number or a name")),
        }
    } else {
        return Err(format!("{token:?} is not a number or a name"));
    };
    if value > u64::from(spec.max()) {
        return Err(format!("{token} is above the maximum {}", spec.max()));
    }
    if value < u64::from(spec.min) {
        return Err(format!("{token} is below the minimum {}", spec.min));
    }
    Ok(value as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
