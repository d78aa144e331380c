//! `celeriac-beat schedule`: the next fire times of each entry, in its time zone, so a schedule
//! can be checked before it is deployed. Offsets are printed with every time, and a change of
//! offset between two fires (a DST transition) is called out.

use std::fmt::Write as _;

use celeriac_protocol::time::isoformat;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::entry::Entry;
use crate::file::EntryError;
use crate::plan::plan;

/// The first `count` ticks of `entry` after `after`, computed as the scheduler does.
pub fn next_fires(entry: &Entry, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(count);
    let mut cursor = after;
    while out.len() < count {
        let p = plan(entry, cursor, cursor);
        match p.next {
            Some(t) if t > cursor => {
                out.push(t);
                cursor = t;
            }
            _ => break,
        }
        if entry.one_off {
            break;
        }
    }
    out
}

/// The listing as text.
pub fn text(
    entries: &[Entry],
    errors: &[EntryError],
    after: DateTime<Utc>,
    count: usize,
) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "{}  {} -> {}  ({}, {})",
            e.name,
            e.schedule.describe(),
            e.task,
            e.timezone,
            catch_up_name(e)
        );
        let fires = next_fires(e, after, count);
        if fires.is_empty() {
            let _ = writeln!(out, "    (no more fire times)");
        }
        let mut previous_offset: Option<String> = None;
        for t in fires {
            let local = isoformat(t, e.timezone);
            let offset = local
                .get(local.len().saturating_sub(6)..)
                .unwrap_or("")
                .to_owned();
            match &previous_offset {
                Some(p) if *p != offset => {
                    let _ = writeln!(out, "    {local}   <- UTC offset {p} -> {offset}");
                }
                _ => {
                    let _ = writeln!(out, "    {local}");
                }
            }
            previous_offset = Some(offset);
        }
    }
    for err in errors {
        let _ = writeln!(out, "{}  NOT SCHEDULED: {}", err.name, err.reason);
    }
    out
}

/// The listing as JSON lines: `{"entry", "timezone", "schedule", "fires": [...]}` per entry and
/// `{"entry", "error"}` per entry left out.
pub fn json_lines(
    entries: &[Entry],
    errors: &[EntryError],
    after: DateTime<Utc>,
    count: usize,
) -> String {
    let mut out = String::new();
    for e in entries {
        let fires: Vec<Value> = next_fires(e, after, count)
            .into_iter()
            .map(|t| Value::String(isoformat(t, e.timezone)))
            .collect();
        let line = json!({"entry": e.name, "timezone": e.timezone.name(),
                          "schedule": e.schedule.describe(), "fires": fires});
        let _ = writeln!(out, "{line}");
    }
    for err in errors {
        let _ = writeln!(out, "{}", json!({"entry": err.name, "error": err.reason}));
    }
    out
}

fn catch_up_name(e: &Entry) -> String {
    match e.catch_up {
        crate::entry::CatchUp::Once => "catch-up once".into(),
        crate::entry::CatchUp::Window(w) => format!("catch-up within {}s", w.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file;
    use chrono::TimeZone as _;
    use chrono_tz::Tz;

    #[test]
    fn the_listing_marks_dst_changes_and_names_bad_entries() {
        let loaded = file::parse(
            r#"
[entries.nightly]
task = "t"
crontab = { minute = "30", hour = "1" }
timezone = "Europe/London"
[entries.broken]
task = "t"
crontab = { hour = "24" }
"#,
            Tz::UTC,
        )
        .expect("parses");
        // The night of 2026-03-29 (clocks go forward at 01:00 UTC): 01:30 does not exist.
        let after = Utc
            .with_ymd_and_hms(2026, 3, 27, 12, 0, 0)
            .single()
            .expect("valid");
        let listing = text(&loaded.entries, &loaded.errors, after, 4);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines[1].trim(), "2026-03-28T01:30:00+00:00");
        // The gap: fires once at the first valid instant, 02:00 BST.
        assert_eq!(
            lines[2].trim(),
            "2026-03-29T02:00:00+01:00   <- UTC offset +00:00 -> +01:00"
        );
        assert_eq!(lines[3].trim(), "2026-03-30T01:30:00+01:00");
        assert!(listing.contains("broken  NOT SCHEDULED: crontab hour"));
        let json = json_lines(&loaded.entries, &loaded.errors, after, 2);
        let first: Value =
            serde_json::from_str(json.lines().next().expect("a line")).expect("JSON");
        assert_eq!(first["entry"], "nightly");
        assert_eq!(first["fires"][1], "2026-03-29T02:00:00+01:00");
    }
}
