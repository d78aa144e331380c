//! Tests of the crontab parser and of next fire times, DST rule included.

use super::*;
use chrono_tz::America::New_York;
use chrono_tz::Australia::{Lord_Howe, Sydney};
use chrono_tz::Europe::London;

/// "minute hour day_of_week day_of_month month_of_year", Celery's argument order.
fn cron(fields: &str) -> Crontab {
    let f: Vec<&str> = fields.split(' ').collect();
    Crontab::parse(f[0], f[1], f[2], f[3], f[4]).unwrap()
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// The next `n` fires after `after`, printed in `tz` with their offsets.
fn fires(c: &Crontab, after: &str, tz: Tz, n: usize) -> Vec<String> {
    let mut cursor = at(after);
    (0..n)
        .map(|_| {
            cursor = c.next_after(cursor, tz).unwrap();
            cursor
                .with_timezone(&tz)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        })
        .collect()
}

fn values(spec: FieldSpec, text: &str) -> Vec<u32> {
    let bits = parse_field(spec, text).unwrap();
    (0..64).filter(|&v| has(bits, v)).collect()
}

// Each expectation is what Celery 5.7's crontab_parser returns for the same text.
#[test]
fn parses_what_celery_parses() {
    let cases: &[(FieldSpec, &str, &[u32])] = &[
        (MINUTE, "*/15", &[0, 15, 30, 45]),
        (MINUTE, "1-5/2", &[1, 3, 5]),
        (MINUTE, "58-2/2", &[0, 2, 58]),
        (MINUTE, "1,13,30-45/5", &[1, 13, 30, 35, 40, 45]),
        (MINUTE, "*/100", &[0]),
        (MINUTE, "00005", &[5]),
        (MINUTE, " 5", &[5]),
        (MINUTE, "+5", &[5]),
        (MINUTE, "1, 2", &[1, 2]),
        (MINUTE, "5-5", &[5]),
        (HOUR, "22-2", &[0, 1, 2, 22, 23]),
        (HOUR, "22-2/2", &[0, 2, 22]),
        (HOUR, "0,8-17/2", &[0, 8, 10, 12, 14, 16]),
        (DAY_OF_WEEK, "*", &[0, 1, 2, 3, 4, 5, 6]),
        (DAY_OF_WEEK, "sun", &[0]),
        (DAY_OF_WEEK, "Sunday", &[0]),
        (DAY_OF_WEEK, "MON-fri/2", &[1, 3, 5]),
        (DAY_OF_WEEK, "fri-mon", &[0, 1, 5, 6]),
        (DAY_OF_WEEK, "sat-sun", &[0, 6]),
        (DAY_OF_WEEK, "tues,thurs,weds", &[2, 3, 4]),
        (DAY_OF_WEEK, "*/2", &[0, 2, 4, 6]),
        (
            DAY_OF_MONTH,
            "*/3",
            &[1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
        ),
        (DAY_OF_MONTH, "30-2", &[1, 2, 30, 31]),
        (MONTH_OF_YEAR, "jan-mar", &[1, 2, 3]),
        (MONTH_OF_YEAR, "dec-feb", &[1, 2, 12]),
        (MONTH_OF_YEAR, "September", &[9]),
        (MONTH_OF_YEAR, "sept,12", &[9, 12]),
        (MONTH_OF_YEAR, "2-12/2", &[2, 4, 6, 8, 10, 12]),
    ];
    for (spec, text, expected) in cases {
        assert_eq!(values(*spec, text), *expected, "{} {text:?}", spec.name);
    }
}

#[test]
fn rejects_what_celery_rejects() {
    let cases: &[(FieldSpec, &str)] = &[
        (MINUTE, ""),            // ParseException: empty part
        (MINUTE, "1,,2"),        // empty part
        (MINUTE, "1,"),          // empty part
        (MINUTE, "*/"),          // empty filter
        (MINUTE, "1-5/"),        // empty filter
        (MINUTE, "*/0"),         // slice step cannot be zero
        (MINUTE, "-5"),          // negative numbers not supported
        (MINUTE, "5/2"),         // a/n: "Invalid weekday literal"
        (MINUTE, "*-5"),         // Invalid weekday literal
        (MINUTE, "**"),          // Invalid weekday literal
        (MINUTE, "*5"),          // Invalid weekday literal
        (MINUTE, "mo"),          // Invalid weekday literal
        (MINUTE, "a-b"),         // Invalid weekday literal
        (MINUTE, "1-5/2x"),      // int('2x')
        (MINUTE, "*/x"),         // int('x')
        (MINUTE, "60"),          // Invalid end range: 60 > 59
        (HOUR, "24"),            // 24 > 23
        (HOUR, "20-24"),         // 24 > 23
        (DAY_OF_WEEK, "7"),      // 7 > 6: Sunday is 0 only
        (DAY_OF_WEEK, "0-7"),    // 7 > 6
        (DAY_OF_WEEK, "funday"), // Invalid weekday literal
        (DAY_OF_MONTH, "0"),     // Invalid beginning range: 0 < 1
        (DAY_OF_MONTH, "32"),    // 32 > 31
        (MONTH_OF_YEAR, "0"),    // 0 < 1
        (MONTH_OF_YEAR, "13"),   // 13 > 12
        (MINUTE, "99999999999999999999999"),
    ];
    for (spec, text) in cases {
        let err = parse_field(*spec, text).unwrap_err();
        assert_eq!(err.field, spec.name);
        assert_eq!(err.value, *text);
    }
}

// Input Celery accepts only because its regexes match a prefix, or because it tries both
// name tables in every field: refused here (see the module doc).
#[test]
fn refuses_celery_accidents() {
    let cases: &[(FieldSpec, &str)] = &[
        (MINUTE, "*/5/2"),      // Celery: */5
        (MINUTE, "1-5/2/3"),    // Celery: 1-5/2
        (MINUTE, "1-5-9"),      // Celery: 1-5
        (MINUTE, "1-5 "),       // Celery: 1-5
        (DAY_OF_WEEK, "mon/2"), // Celery: mon
        (DAY_OF_WEEK, "mon1"),  // Celery: mon
        (MINUTE, "jan"),        // Celery: 1
        (DAY_OF_WEEK, "jan"),   // Celery: 1 (Monday)
        (MONTH_OF_YEAR, "mon"), // Celery: 1 (January)
        (MINUTE, "1_0"),        // Celery: int("1_0") == 10
    ];
    for (spec, text) in cases {
        assert!(parse_field(*spec, text).is_err(), "{} {text:?}", spec.name);
    }
}

#[test]
fn errors_name_the_field_and_the_reason() {
    let err = Crontab::parse("0", "25", "*", "*", "*").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"crontab hour "25": 25 is above the maximum 23"#
    );
    let err = Crontab::parse("0", "1", "*", "1,0", "*").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"crontab day_of_month "1,0": in "0": 0 is below the minimum 1"#
    );
    let err = Crontab::parse("0", "1", "jan", "*", "*").unwrap_err();
    assert_eq!(err.field, "day_of_week");
    assert!(err.reason.contains("month name"), "{err}");
}

// Celery's crontab.__init__ refuses a day_of_month that no month_of_year has (CRON_INVALID_DATE,
// February counted with 29 days).
#[test]
fn refuses_days_that_never_occur() {
    for (dom, moy) in [
        ("31", "2"),
        ("30", "2"),
        ("30-31", "feb"),
        ("31", "4,6,9,11"),
    ] {
        let err = Crontab::parse("0", "0", "*", dom, moy).unwrap_err();
        assert_eq!(err.field, "day_of_month");
    }
    assert!(Crontab::parse("0", "0", "*", "29", "2").is_ok());
    assert!(Crontab::parse("0", "0", "*", "31", "2,3").is_ok());
}

#[test]
fn displays_the_fields_as_given() {
    let c = cron("*/5 9-17 mon-fri 1,15 *");
    assert_eq!(c.to_string(), "*/5 9-17 mon-fri 1,15 *");
    assert!(cron("0 * * * *").hour_is_wildcard());
    assert!(cron("0 0-23 * * *").hour_is_wildcard());
    assert!(cron("0 */1 * * *").hour_is_wildcard());
    assert!(!cron("0 */2 * * *").hour_is_wildcard());
}

#[test]
fn next_is_strictly_after_on_whole_minutes() {
    let c = cron("*/15 * * * *");
    assert_eq!(
        fires(&c, "2025-06-01T10:07:30Z", Tz::UTC, 2),
        ["2025-06-01T10:15:00+00:00", "2025-06-01T10:30:00+00:00"]
    );
    assert_eq!(
        fires(&c, "2025-06-01T10:15:00Z", Tz::UTC, 1),
        ["2025-06-01T10:30:00+00:00"]
    );
    assert_eq!(
        fires(&c, "2025-06-01T10:14:59.999Z", Tz::UTC, 1),
        ["2025-06-01T10:15:00+00:00"]
    );
    assert_eq!(
        fires(&c, "2025-06-01T23:50:00Z", Tz::UTC, 1),
        ["2025-06-02T00:00:00+00:00"]
    );
}

#[test]
fn next_jumps_to_matching_days() {
    // Friday 10:00 -> Monday 09:00.
    assert_eq!(
        fires(&cron("0 9 mon-fri * *"), "2025-06-06T10:00:00Z", Tz::UTC, 1),
        ["2025-06-09T09:00:00+00:00"]
    );
    // Wrapped hours.
    assert_eq!(
        fires(&cron("0 22-2/2 * * *"), "2025-06-01T12:00:00Z", Tz::UTC, 3),
        [
            "2025-06-01T22:00:00+00:00",
            "2025-06-02T00:00:00+00:00",
            "2025-06-02T02:00:00+00:00"
        ]
    );
    // The 31st skips months without one.
    assert_eq!(
        fires(&cron("0 0 * 31 *"), "2025-04-01T00:00:00Z", Tz::UTC, 2),
        ["2025-05-31T00:00:00+00:00", "2025-07-31T00:00:00+00:00"]
    );
    // Year end.
    assert_eq!(
        fires(&cron("0 0 * 1 jan"), "2025-01-01T00:00:00Z", Tz::UTC, 1),
        ["2026-01-01T00:00:00+00:00"]
    );
    // Local time: 09:00 in New York is 13:00 UTC in summer.
    assert_eq!(
        fires(&cron("0 9 * * *"), "2025-06-01T12:00:00Z", New_York, 1),
        ["2025-06-01T09:00:00-04:00"]
    );
}

// Celery ANDs the two day fields: both must match (Vixie cron would OR them).
#[test]
fn day_of_month_and_day_of_week_both_match() {
    // The first Monday of each month.
    assert_eq!(
        fires(&cron("0 0 mon 1-7 *"), "2025-01-01T00:00:00Z", Tz::UTC, 3),
        [
            "2025-01-06T00:00:00+00:00",
            "2025-02-03T00:00:00+00:00",
            "2025-03-03T00:00:00+00:00"
        ]
    );
    // Friday the 13th.
    assert_eq!(
        fires(&cron("0 0 fri 13 *"), "2025-01-01T00:00:00Z", Tz::UTC, 2),
        ["2025-06-13T00:00:00+00:00", "2026-02-13T00:00:00+00:00"]
    );
}

// 29 February on a Monday: 28 years apart, but 40 across 2100, which is not a leap year.
#[test]
fn rare_slots_are_found_and_the_search_ends() {
    let c = cron("0 0 mon 29 2");
    assert_eq!(
        fires(&c, "2025-01-01T00:00:00Z", Tz::UTC, 3),
        [
            "2044-02-29T00:00:00+00:00",
            "2072-02-29T00:00:00+00:00",
            "2112-02-29T00:00:00+00:00"
        ]
    );
    assert_eq!(
        fires(&cron("30 3 * 29 2"), "2025-01-01T00:00:00Z", Tz::UTC, 1),
        ["2028-02-29T03:30:00+00:00"]
    );
    // Near the end of chrono's calendar there is no next slot: None, not a hang or a panic.
    let end = NaiveDate::MAX.and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert_eq!(c.next_after(end, Tz::UTC), None);
    assert_eq!(
        cron("* * * * *").next_after(DateTime::<Utc>::MAX_UTC, Tz::UTC),
        None
    );
}

// (a) London springs forward at 01:00 UTC on 30 March 2025: 01:00-01:59 local do not exist.
#[test]
fn london_gap_fires_at_the_transition() {
    assert_eq!(
        fires(&cron("30 1 * * *"), "2025-03-29T12:00:00Z", London, 3),
        [
            "2025-03-30T02:00:00+01:00", // 01:30 does not exist: the transition, 01:00 UTC
            "2025-03-31T01:30:00+01:00",
            "2025-04-01T01:30:00+01:00",
        ]
    );
    // Every slot of the gap fires once, together, then the schedule goes on.
    assert_eq!(
        fires(&cron("*/20 * * * *"), "2025-03-30T00:30:00Z", London, 3),
        [
            "2025-03-30T00:40:00+00:00",
            "2025-03-30T02:00:00+01:00", // 01:00, 01:20, 01:40 and 02:00 at one instant
            "2025-03-30T02:20:00+01:00",
        ]
    );
}

// (b) and (c) London falls back at 01:00 UTC on 26 October 2025: 01:00-01:59 local twice.
#[test]
fn london_fold() {
    let fixed = cron("30 1 * * *");
    assert_eq!(
        fires(&fixed, "2025-10-25T12:00:00Z", London, 2),
        ["2025-10-26T01:30:00+01:00", "2025-10-27T01:30:00+00:00"]
    );
    // Even from inside the second pass of the hour it does not fire again.
    assert_eq!(
        fires(&fixed, "2025-10-26T01:10:00Z", London, 1),
        ["2025-10-27T01:30:00+00:00"]
    );
    // Hourly: every real hour, the repeated one included.
    assert_eq!(
        fires(&cron("0 * * * *"), "2025-10-25T23:30:00Z", London, 4),
        [
            "2025-10-26T01:00:00+01:00",
            "2025-10-26T01:00:00+00:00",
            "2025-10-26T02:00:00+00:00",
            "2025-10-26T03:00:00+00:00",
        ]
    );
    // From inside the first pass, the second pass of a slot already past comes next.
    assert_eq!(
        fires(&cron("30 * * * *"), "2025-10-26T00:50:00Z", London, 2),
        ["2025-10-26T01:30:00+00:00", "2025-10-26T02:30:00+00:00"]
    );
    // Every quarter hour of real time, 00:00 to 03:00 UTC.
    let quarter = fires(&cron("*/15 * * * *"), "2025-10-25T23:59:00Z", London, 13);
    let expected: Vec<String> = (0..13)
        .map(|i| {
            (at("2025-10-26T00:00:00Z") + Duration::minutes(15 * i))
                .with_timezone(&London)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        })
        .collect();
    assert_eq!(quarter, expected);
}

// New York: the gap is 02:00-02:59 on 9 March 2025 (07:00 UTC), the fold 01:00-01:59 on
// 2 November 2025 (first pass EDT, 05:xx UTC; second EST, 06:xx UTC).
#[test]
fn new_york() {
    assert_eq!(
        fires(&cron("30 2 * * *"), "2025-03-09T06:00:00Z", New_York, 2),
        ["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"]
    );
    assert_eq!(
        fires(&cron("30 1 * * *"), "2025-11-02T04:00:00Z", New_York, 2),
        ["2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]
    );
    assert_eq!(
        fires(&cron("30 1 * * *"), "2025-11-02T06:15:00Z", New_York, 1),
        ["2025-11-03T01:30:00-05:00"]
    );
    assert_eq!(
        fires(&cron("0 * * * *"), "2025-11-02T04:30:00Z", New_York, 3),
        [
            "2025-11-02T01:00:00-04:00",
            "2025-11-02T01:00:00-05:00",
            "2025-11-02T02:00:00-05:00"
        ]
    );
    // An hour list that is not all 24 hours is a fixed time: 01:00 fires once.
    assert_eq!(
        fires(&cron("0 0-3 * * *"), "2025-11-02T03:30:00Z", New_York, 4),
        [
            "2025-11-02T00:00:00-04:00",
            "2025-11-02T01:00:00-04:00",
            "2025-11-02T02:00:00-05:00",
            "2025-11-02T03:00:00-05:00",
        ]
    );
}

// Sydney: DST ends 6 April 2025 03:00 AEDT -> 02:00 AEST (16:00 UTC on the 5th), and starts
// 5 October 2025 02:00 AEST -> 03:00 AEDT (16:00 UTC on the 4th).
#[test]
fn sydney() {
    assert_eq!(
        fires(&cron("30 2 * * *"), "2025-10-04T12:00:00Z", Sydney, 2),
        ["2025-10-05T03:00:00+11:00", "2025-10-06T02:30:00+11:00"]
    );
    assert_eq!(
        fires(&cron("30 2 * * *"), "2025-04-05T12:00:00Z", Sydney, 2),
        ["2025-04-06T02:30:00+11:00", "2025-04-07T02:30:00+10:00"]
    );
    assert_eq!(
        fires(&cron("30 * * * *"), "2025-04-05T15:00:00Z", Sydney, 3),
        [
            "2025-04-06T02:30:00+11:00",
            "2025-04-06T02:30:00+10:00",
            "2025-04-06T03:30:00+10:00"
        ]
    );
}

// Lord Howe shifts by 30 minutes: DST ends 6 April 2025 02:00 LHDT -> 01:30 LHST (15:00 UTC
// on the 5th), and starts 5 October 2025 02:00 LHST -> 02:30 LHDT (15:30 UTC on the 4th).
#[test]
fn lord_howe() {
    assert_eq!(
        fires(&cron("15 2 * * *"), "2025-10-04T12:00:00Z", Lord_Howe, 2),
        ["2025-10-05T02:30:00+11:00", "2025-10-06T02:15:00+11:00"]
    );
    assert_eq!(
        fires(&cron("45 1 * * *"), "2025-04-05T12:00:00Z", Lord_Howe, 2),
        ["2025-04-06T01:45:00+11:00", "2025-04-07T01:45:00+10:30"]
    );
    assert_eq!(
        fires(&cron("*/15 * * * *"), "2025-04-05T14:30:00Z", Lord_Howe, 4),
        [
            "2025-04-06T01:45:00+11:00",
            "2025-04-06T01:30:00+10:30",
            "2025-04-06T01:45:00+10:30",
            "2025-04-06T02:00:00+10:30",
        ]
    );
}

/// Whether a local minute matches every field.
fn matches(c: &Crontab, n: NaiveDateTime) -> bool {
    has(c.minute, n.minute())
        && has(c.hour, n.hour())
        && has(c.day_of_week, n.weekday().num_days_from_sunday())
        && has(c.day_of_month, n.day())
        && has(c.month_of_year, n.month())
}

/// The rule read minute by minute of real time: `u` fires when its local time matches and is
/// that time's first occurrence (or any, for an all-hours crontab), or when the clock jumps
/// at `u` over a matching local time.
fn brute_force_next(c: &Crontab, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let local = |u: DateTime<Utc>| u.with_timezone(&tz).naive_local();
    let minute = Duration::minutes(1);
    let mut u = after.with_second(0)?.with_nanosecond(0)? + minute;
    for _ in 0..3 * 1440 {
        let (now, before) = (local(u), local(u - minute));
        let first = match tz.from_local_datetime(&now) {
            LocalResult::Ambiguous(a, b) => u == a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
            _ => true,
        };
        let mut skipped = before + minute;
        let mut jumped_over_slot = false;
        while skipped < now {
            jumped_over_slot |= matches(c, skipped);
            skipped += minute;
        }
        if (matches(c, now) && (first || c.hour_is_wildcard())) || jumped_over_slot {
            return Some(u);
        }
        u += minute;
    }
    None
}

#[test]
fn agrees_with_minute_by_minute_reading_around_every_2025_transition() {
    let transitions = [
        (London, "2025-03-30T01:00:00Z"),
        (London, "2025-10-26T01:00:00Z"),
        (New_York, "2025-03-09T07:00:00Z"),
        (New_York, "2025-11-02T06:00:00Z"),
        (Sydney, "2025-04-05T16:00:00Z"),
        (Sydney, "2025-10-04T16:00:00Z"),
        (Lord_Howe, "2025-04-05T15:00:00Z"),
        (Lord_Howe, "2025-10-04T15:30:00Z"),
    ];
    let minutes = ["*/7", "0", "30", "15,45", "58-2", "*/20", "59"];
    let hours = ["*", "1", "2", "0-3", "*/2", "1,2", "22-3", "0-23"];
    let mut checked = 0;
    for (tz, t) in transitions {
        for offset in [-75, -50, -20, 10, 40] {
            let start = at(t) + Duration::minutes(offset) + Duration::seconds(17);
            for m in minutes {
                for h in hours {
                    let c = Crontab::parse(m, h, "*", "*", "*").unwrap();
                    let mut after = start;
                    for _ in 0..3 {
                        let expected = brute_force_next(&c, after, tz);
                        assert_eq!(
                            c.next_after(after, tz),
                            expected,
                            "{c} in {tz} after {after}"
                        );
                        after = expected.unwrap();
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 8 * 5 * 7 * 8 * 3);
}
