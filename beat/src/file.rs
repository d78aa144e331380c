//! The declarative schedule file (TOML): one `[entries.<name>]` table per periodic task, with the
//! options of Celery's `beat_schedule`.
//!
//! ```toml
//! [entries.add-every-10s]
//! task = "celeriac.test.add"
//! args = [2, 3]
//! every = 10                      # seconds; or crontab = {...}, clocked = ..., solar = {...}
//!
//! [entries.lights-on]
//! task = "home.lights_on"
//! solar = { event = "sunset", latitude = 51.5, longitude = -0.12 }   # Celery's solar()
//!
//! [entries.nightly-report]
//! task = "reports.tasks.nightly"
//! crontab = { minute = "30", hour = "2", day_of_week = "mon-fri" }   # missing fields are "*"
//! timezone = "Europe/London"      # default: --timezone
//! queue = "reports"
//! priority = 5
//! expires = 3600                  # seconds after the send, or an instant
//! headers = { x-source = "beat" }
//! catch_up = "all"                # once (default, as Celery), skip, or all
//! catch_up_window = 7200          # seconds (skip: 5, all: 3600)
//! ```
//!
//! A bad entry is reported by name and left out; the others run.

use std::path::Path;
use std::time::Duration;

use celeriac_protocol::time::Timestamp;
use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::entry::{CatchUp, Entry, Expires, SendOptions};
use crate::schedule::{Crontab, Schedule, Solar};

/// The file as a whole cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FileError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a TOML document of the expected shape.
    #[error("{path} is not a schedule file: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
}

/// An entry that cannot be used, by name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("entry {name:?}: {reason}")]
pub struct EntryError {
    /// The entry's name.
    pub name: String,
    /// Why it is left out.
    pub reason: String,
}

/// What a schedule file holds: the usable entries and the reasons for the others.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Entries to run, in file order.
    pub entries: Vec<Entry>,
    /// Entries left out.
    pub errors: Vec<EntryError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    entries: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    task: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    every: Option<f64>,
    crontab: Option<RawCrontab>,
    clocked: Option<toml::Value>,
    solar: Option<RawSolar>,
    timezone: Option<String>,
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    priority: Option<i64>,
    expires: Option<toml::Value>,
    #[serde(default)]
    headers: Map<String, Value>,
    catch_up: Option<String>,
    catch_up_window: Option<f64>,
    start_time: Option<toml::Value>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrontab {
    #[serde(default)]
    minute: Option<CronField>,
    #[serde(default)]
    hour: Option<CronField>,
    #[serde(default)]
    day_of_week: Option<CronField>,
    #[serde(default)]
    day_of_month: Option<CronField>,
    #[serde(default)]
    month_of_year: Option<CronField>,
}

/// Celery's `solar(event, lat, lon)`: an event name, and degrees north and east.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSolar {
    event: String,
    latitude: f64,
    longitude: f64,
}

/// A crontab field, written as a string (`"*/5"`) or a number (`30`), as Celery takes both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CronField {
    Text(String),
    Number(i64),
}

impl CronField {
    fn text(field: &Option<Self>) -> String {
        match field {
            None => "*".into(),
            Some(Self::Text(s)) => s.clone(),
            Some(Self::Number(n)) => n.to_string(),
        }
    }
}

/// Reads and validates a schedule file; `default_tz` applies to entries without a timezone.
pub fn load(path: &Path, default_tz: Tz) -> Result<Loaded, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, default_tz).map_err(|reason| FileError::Syntax {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses a schedule document (see [`load`]).
pub fn parse(text: &str, default_tz: Tz) -> Result<Loaded, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut loaded = Loaded::default();
    for (name, value) in raw.entries {
        let entry = value
            .try_into::<RawEntry>()
            .map_err(|e| e.message().to_owned())
            .and_then(|raw| build(&name, raw, default_tz));
        match entry {
            Ok(Some(entry)) => loaded.entries.push(entry),
            Ok(None) => {}
            Err(reason) => loaded.errors.push(EntryError { name, reason }),
        }
    }
    Ok(loaded)
}

fn seconds(what: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value < 1e10 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "{what} = {value} is not a positive number of seconds"
        ))
    }
}

/// An instant written as a TOML datetime or a string, with the offset it was written with;
/// without an offset it is read in `tz`.
fn timestamp(what: &str, value: &toml::Value, tz: Tz) -> Result<DateTime<FixedOffset>, String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "{what}: expected a date and time, found {}",
                other.type_str()
            ));
        }
    };
    match Timestamp::parse(&text).map_err(|e| format!("{what} {text:?}: {e}"))? {
        Timestamp::Aware(at) => Ok(at),
        naive => Ok(naive.to_utc(tz).with_timezone(&tz).fixed_offset()),
    }
}

fn instant(what: &str, value: &toml::Value, tz: Tz) -> Result<DateTime<Utc>, String> {
    timestamp(what, value, tz).map(|t| t.with_timezone(&Utc))
}

fn build(name: &str, raw: RawEntry, default_tz: Tz) -> Result<Option<Entry>, String> {
    if !raw.enabled {
        return Ok(None);
    }
    if raw.task.trim().is_empty() {
        return Err("task is empty".into());
    }
    let timezone = match &raw.timezone {
        None => default_tz,
        Some(tz) => tz
            .parse::<Tz>()
            .map_err(|_| format!("unknown timezone {tz:?}"))?,
    };
    let mut schedules = Vec::new();
    if let Some(every) = raw.every {
        schedules.push(Schedule::Interval(seconds("every", every)?));
    }
    if let Some(c) = &raw.crontab {
        let cron = Crontab::parse(
            &CronField::text(&c.minute),
            &CronField::text(&c.hour),
            &CronField::text(&c.day_of_week),
            &CronField::text(&c.day_of_month),
            &CronField::text(&c.month_of_year),
        )
        .map_err(|e| e.to_string())?;
        schedules.push(Schedule::Crontab(cron));
    }
    if let Some(at) = &raw.clocked {
        schedules.push(Schedule::Clocked(instant("clocked", at, timezone)?));
    }
    if let Some(s) = &raw.solar {
        let solar = Solar::new(&s.event, s.latitude, s.longitude).map_err(|e| e.to_string())?;
        schedules.push(Schedule::Solar(solar));
    }
    let schedule = match schedules.len() {
        1 => schedules.remove(0),
        0 => return Err("no schedule: give one of every, crontab, clocked, solar".into()),
        _ => {
            return Err(
                "more than one schedule: give only one of every, crontab, clocked, solar".into(),
            );
        }
    };
    let priority = raw
        .priority
        .map(|p| u8::try_from(p).map_err(|_| format!("priority {p} is outside 0..=255")))
        .transpose()?;
    let expires = match &raw.expires {
        None => None,
        Some(toml::Value::Integer(n)) => Some(Expires::After(seconds("expires", *n as f64)?)),
        Some(toml::Value::Float(f)) => Some(Expires::After(seconds("expires", *f)?)),
        Some(other) => Some(Expires::At(timestamp("expires", other, timezone)?)),
    };
    let catch_up = match raw.catch_up.as_deref().unwrap_or("once") {
        "once" => CatchUp::Once,
        "skip" => CatchUp::Window(window(raw.catch_up_window, CatchUp::SKIP_WINDOW)?),
        "all" => CatchUp::Window(window(raw.catch_up_window, CatchUp::ALL_WINDOW)?),
        other => return Err(format!("catch_up {other:?}: expected once, skip or all")),
    };
    let start_time = raw
        .start_time
        .as_ref()
        .map(|v| instant("start_time", v, timezone))
        .transpose()?;
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(Some(Entry {
        name: name.to_owned(),
        task: raw.task,
        args: raw.args,
        kwargs: raw.kwargs,
        schedule,
        timezone,
        options: SendOptions {
            queue: nonempty(raw.queue),
            exchange: nonempty(raw.exchange),
            routing_key: nonempty(raw.routing_key),
            priority,
            expires,
            headers: raw.headers,
        },
        catch_up,
        start_time,
        until: None,
        one_off: false,
        seed: None,
    }))
}

fn window(given: Option<f64>, default: Duration) -> Result<Duration, String> {
    given.map_or(Ok(default), |w| seconds("catch_up_window", w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_read() {
        let loaded = parse(
            r#"
[entries.a]
task = "t.a"
args = [1, "x"]
kwargs = { k = 2 }
every = 2.5
queue = "media"
priority = 5
expires = 30
headers = { x-source = "beat" }
catch_up = "all"
catch_up_window = 60

[entries.b]
task = "t.b"
clocked = 2026-12-01T10:00:00Z
expires = "2026-12-02T00:00:00+01:00"
exchange = "ex"
routing_key = "rk"
"#,
            Tz::UTC,
        )
        .expect("parses");
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let a = &loaded.entries[0];
        assert_eq!(a.schedule, Schedule::Interval(Duration::from_millis(2500)));
        assert_eq!(a.options.queue.as_deref(), Some("media"));
        assert_eq!(a.options.priority, Some(5));
        assert_eq!(
            a.options.expires,
            Some(Expires::After(Duration::from_secs(30)))
        );
        assert_eq!(a.options.headers["x-source"], "beat");
        assert_eq!(a.catch_up, CatchUp::Window(Duration::from_secs(60)));
        assert_eq!(a.kwargs["k"], 2);
        let b = &loaded.entries[1];
        assert!(matches!(b.schedule, Schedule::Clocked(_)));
        assert_eq!(b.options.routing_key.as_deref(), Some("rk"));
        assert!(matches!(b.options.expires, Some(Expires::At(_))));
    }

    #[test]
    fn bad_entries_are_named_and_the_rest_loads() {
        let loaded = parse(
            r#"
[entries.good]
task = "t"
every = 1
[entries.no-schedule]
task = "t"
[entries.bad-zone]
task = "t"
every = 1
timezone = "Mars/Olympus"
[entries.two-schedules]
task = "t"
every = 1
clocked = "2026-01-01T00:00:00"
[entries.sunny]
task = "t"
solar = { event = "sunny", latitude = 51.5, longitude = 0 }
[entries.polar]
task = "t"
solar = { event = "sunrise", latitude = 91, longitude = 0 }
[entries.east]
task = "t"
solar = { event = "sunrise", latitude = 0, longitude = 180.5 }
[entries.no-place]
task = "t"
solar = { event = "sunrise" }
[entries.typo]
task = "t"
every = 1
qeue = "x"
[entries.off]
task = "t"
every = 1
enabled = false
"#,
            Tz::UTC,
        )
        .expect("parses");
        assert_eq!(loaded.entries.len(), 1);
        let names: Vec<_> = loaded.errors.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "no-schedule",
                "bad-zone",
                "two-schedules",
                "sunny",
                "polar",
                "east",
                "no-place",
                "typo"
            ]
        );
        assert!(
            loaded.errors[3]
                .reason
                .contains("solar event \"sunny\" is invalid")
        );
        assert!(loaded.errors[4].reason.contains("latitude 91 is invalid"));
        assert!(
            loaded.errors[5]
                .reason
                .contains("longitude 180.5 is invalid")
        );
        assert!(loaded.errors[6].reason.contains("latitude"));
    }

    #[test]
    fn a_solar_entry_is_read() {
        let loaded = parse(
            r#"
[entries.lights-on]
task = "t"
solar = { event = "sunset", latitude = 51.5, longitude = -0.12 }
[entries.noon]
task = "t"
solar = { event = "solar_noon", latitude = 0, longitude = 0 }
"#,
            Tz::UTC,
        )
        .expect("parses");
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let expected = Solar::new("sunset", 51.5, -0.12).expect("valid");
        assert_eq!(loaded.entries[0].schedule, Schedule::Solar(expected));
        assert!(matches!(loaded.entries[1].schedule, Schedule::Solar(_)));
    }

    #[test]
    fn the_example_schedule_loads_whole() {
        let loaded = parse(include_str!("../schedule.example.toml"), Tz::UTC).expect("parses");
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.entries.len(), 3);
    }

    #[test]
    fn a_broken_document_is_an_error() {
        assert!(parse("[entries.a\ntask=", Tz::UTC).is_err());
        assert!(parse("[other]\n", Tz::UTC).is_err());
    }
}
