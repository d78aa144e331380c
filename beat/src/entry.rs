//! A periodic task as beat knows it, whatever its source (a schedule file or
//! django-celery-beat's tables): what to send, when, and what to do about missed ticks.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::schedule::Schedule;

/// One periodic task.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique name (the `beat_schedule` key, or django-celery-beat's `PeriodicTask.name`).
    pub name: String,
    /// Task name to send.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// When it fires.
    pub schedule: Schedule,
    /// Time zone the schedule is read in (the entry's own, or the global one).
    pub timezone: Tz,
    /// Message options.
    pub options: SendOptions,
    /// What happens to ticks missed while no beat ran.
    pub catch_up: CatchUp,
    /// No tick before this instant (django-celery-beat's `start_time`).
    pub start_time: Option<DateTime<Utc>>,
    /// No tick after this instant (django-celery-beat's `expires`, which disables the task).
    pub until: Option<DateTime<Utc>>,
    /// Sent once, then done (django-celery-beat's `one_off`).
    pub one_off: bool,
    /// Where the schedule starts when no tick was ever recorded for the entry: Celery's
    /// `last_run_at` (django-celery-beat: the row's `last_run_at`, or `date_changed`). `None`:
    /// the instant beat first sees the entry, as Celery's default.
    pub seed: Option<DateTime<Utc>>,
}

impl Entry {
    /// An entry sending `task` with no arguments on `schedule` read in `timezone`, with default
    /// options, Celery's catch-up (`once`) and no start, end or seed.
    pub fn new(name: &str, task: &str, schedule: Schedule, timezone: Tz) -> Self {
        Self {
            name: name.into(),
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            schedule,
            timezone,
            options: SendOptions::default(),
            catch_up: CatchUp::Once,
            start_time: None,
            until: None,
            one_off: false,
            seed: None,
        }
    }

    /// Whether `other` is this entry with, at most, another [`seed`](Self::seed).
    pub fn same_as(&self, other: &Entry) -> bool {
        let seed = self.seed;
        let mut other = other.clone();
        other.seed = seed;
        *self == other
    }
}

/// The options Celery's `beat_schedule` entries and django-celery-beat rows give the message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendOptions {
    /// Queue (its list on Redis); `None` sends to the default queue.
    pub queue: Option<String>,
    /// Exchange; on Redis, a named exchange routes through its binding set.
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Message priority (0-255 as Celery takes it; Kombu's Redis layout clamps to 0-9).
    pub priority: Option<u8>,
    /// When the task stops being worth running.
    pub expires: Option<Expires>,
    /// Custom headers, merged flat into the message headers.
    pub headers: Map<String, Value>,
}

/// An entry's `expires` option.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expires {
    /// Seconds after the send.
    After(Duration),
    /// A fixed instant, with the offset it was given in (Celery writes it as given).
    At(DateTime<FixedOffset>),
}

/// What beat does with the ticks of an entry that fell due while no beat was running (or was
/// leader). Every tick not sent is logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Celery's behaviour: the missed ticks are collapsed into one send of the latest.
    #[default]
    Once,
    /// Every due tick no older than this is sent, in order; older ones are not sent. The file
    /// names this `skip` (default window [`CatchUp::SKIP_WINDOW`]: only ticks that are barely
    /// late go out) or `all` (default [`CatchUp::ALL_WINDOW`]: everything missed is sent).
    Window(Duration),
}

impl CatchUp {
    /// Default lateness a `skip` entry tolerates.
    pub const SKIP_WINDOW: Duration = Duration::from_secs(5);
    /// Default look-back of an `all` entry.
    pub const ALL_WINDOW: Duration = Duration::from_secs(3600);
}
