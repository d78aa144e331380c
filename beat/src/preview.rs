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
