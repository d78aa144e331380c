//! When entries fire: Celery's `schedule` (an interval), `crontab` and `solar`, and
//! django-celery-beat's clocked schedule, as pure functions of an instant passed in.
//!
//! A tick is identified by its nominal fire time. Interval ticks lie on a grid anchored at the
//! entry's first tick (`first + k * every`), so every beat process computes the same ticks;
//! Python beat re-anchors at each send instead (`last_run_at = now`), which drifts and cannot
//! be shared between processes.

pub mod crontab;
pub mod solar;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

pub use crontab::{Crontab, CrontabError};
pub use solar::{Solar, SolarError, SolarEvent};

/// When an entry fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every `every`, from the first tick on (Celery's `schedule(run_every)`).
    Interval(Duration),
    /// At the slots of a crontab, in the entry's time zone.
    Crontab(Crontab),
    /// Once, at this instant (django-celery-beat's `ClockedSchedule`).
    Clocked(DateTime<Utc>),
    /// At each occurrence of a solar event at a place (Celery's `solar`); time zones play no
    /// part.
    Solar(Solar),
}

impl Schedule {
    /// The first tick strictly after `after`, in time zone `tz`; for an interval, `after` is
    /// the previous tick. `None` when there is none (a clocked entry already past, a crontab
    /// that never matches, or a solar event that does not happen within a year).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Self::Interval(every) => {
                let step = TimeDelta::from_std(*every).ok()?;
                after.checked_add_signed(step)
            }
            Self::Crontab(c) => c.next_after(after, tz),
            Self::Clocked(at) => (*at > after).then_some(*at),
            Self::Solar(s) => s.next_after(after),
        }
    }

    /// The first tick of an entry first seen at `now`, as Celery's default `last_run_at = now`
    /// gives it: one interval later, the next crontab slot, or the clocked instant (even when it
    /// is already past, as django-celery-beat runs an overdue clocked task once).
    pub fn first_tick(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Self::Clocked(at) => Some(*at),
            other => other.next_after(now, tz),
        }
    }

    /// A short description for logs and the schedule listing.
    pub fn describe(&self) -> String {
        match self {
            Self::Interval(every) => format!("every {}s", every.as_secs_f64()),
            Self::Crontab(c) => format!("crontab {c}"),
            Self::Clocked(at) => format!("clocked {}", at.to_rfc3339()),
            Self::Solar(s) => format!("solar {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, s)
            .single()
            .expect("valid")
    }

    #[test]
    fn interval_ticks_lie_on_a_grid() {
        let s = Schedule::Interval(Duration::from_millis(2500));
        assert_eq!(
            s.next_after(at(10, 0, 0), Tz::UTC),
            Some(at(10, 0, 2) + TimeDelta::milliseconds(500))
        );
        assert_eq!(
            s.first_tick(at(10, 0, 0), Tz::UTC),
            s.next_after(at(10, 0, 0), Tz::UTC)
        );
    }

    #[test]
    fn clocked_fires_once_even_when_overdue() {
        let s = Schedule::Clocked(at(9, 0, 0));
        assert_eq!(s.first_tick(at(10, 0, 0), Tz::UTC), Some(at(9, 0, 0)));
        assert_eq!(s.next_after(at(9, 0, 0), Tz::UTC), None);
        assert_eq!(s.next_after(at(8, 0, 0), Tz::UTC), Some(at(9, 0, 0)));
    }

    #[test]
    fn solar_ignores_the_time_zone_and_describes_itself() {
        let s = Schedule::Solar(Solar::new("sunset", 51.5, -0.12).expect("valid"));
        assert_eq!(
            s.next_after(at(10, 0, 0), Tz::UTC),
            s.next_after(at(10, 0, 0), Tz::Asia__Tokyo)
        );
        assert_eq!(
            s.describe(),
            "solar sunset at latitude 51.5, longitude -0.12"
        );
    }
}
