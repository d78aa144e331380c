//! A Celery-compatible beat: sends periodic tasks as Python `celery beat` does (the same
//! messages, through the protocol crate), exactly once per tick even when several beat
//! processes run, with DST handled by a stated rule.
//!
//! * [`schedule`]: when entries fire (interval, crontab, clocked), pure functions of an instant;
//! * [`entry`] and [`file`](mod@file): what an entry is, and the TOML schedule file;
//! * `django` (feature `django-db`, on by default): django-celery-beat's tables on MySQL or
//!   PostgreSQL;
//! * [`plan`]: which ticks are due now under an entry's catch-up policy;
//! * [`message`]: the message of a tick;
//! * [`scheduler`]: the loop that holds the leader lease and sends, on a [`store`] (the broker:
//!   Redis, or memory for tests), with time from a [`clock`];
//! * [`source`]: where entries come from (the file, or django-celery-beat's tables);
//! * [`preview`] and [`cli`]: the `celeriac-beat` binary and its `schedule` listing.

pub mod cli;
pub mod clock;
#[cfg(feature = "django-db")]
pub mod django;
pub mod entry;
pub mod file;
pub mod health;
pub mod message;
pub mod plan;
pub mod preview;
pub mod schedule;
pub mod scheduler;
pub mod source;
pub mod store;

pub use entry::{CatchUp, Entry, Expires, SendOptions};
pub use scheduler::{Beat, BeatConfig};
