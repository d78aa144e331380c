//! Which ticks of an entry to send now: a pure function of the last tick recorded, the current
//! instant and the entry's catch-up policy.

use chrono::{DateTime, TimeDelta, Utc};

use crate::entry::{CatchUp, Entry};
use crate::schedule::Schedule;

/// Most due ticks looked at for one entry in one step; a longer outage of an every-minute
/// crontab is still handled, by counting only this many as skipped.
const MAX_SCAN: u64 = 200_000;

/// What to do with one entry now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Ticks to send, oldest first.
    pub send: Vec<DateTime<Utc>>,
    /// Due ticks not sent, by the catch-up policy.
    pub skipped: u64,
    /// The oldest and newest of the skipped ticks, for the log.
    pub skipped_span: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The first tick after the last one due now (when to look again), if any.
    pub next: Option<DateTime<Utc>>,
}

impl Plan {
    fn skip(&mut self, tick: DateTime<Utc>) {
        self.skipped += 1;
        self.skipped_span = Some(match self.skipped_span {
            Some((first, _)) => (first, tick),
            None => (tick, tick),
        });
    }
}

/// The ticks of `entry` due in `(last, now]` and what its catch-up policy does with them.
/// Slots before its `start_time` or after its `until` are no ticks at all.
pub fn plan(entry: &Entry, last: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    let (schedule, tz) = (&entry.schedule, entry.timezone);
    let mut out = Plan::default();
    let mut cursor = match entry.start_time {
        Some(start) if start > last => start - TimeDelta::milliseconds(1),
        _ => last,
    };
    if let (Schedule::Interval(every), Some(start)) = (schedule, entry.start_time) {
        // django-celery-beat: an interval entry with a start time first fires at that time.
        if start > last {
            cursor = start - TimeDelta::from_std(*every).unwrap_or(TimeDelta::zero());
        }
    }
    let window = match entry.catch_up {
        CatchUp::Once => None,
        CatchUp::Window(w) => Some(TimeDelta::from_std(w).unwrap_or(TimeDelta::MAX)),
    };
    cursor = skip_interval_ticks(schedule, cursor, now, window, &mut out);
    let mut latest = None;
    let mut scanned = 0;
    while let Some(tick) = schedule.next_after(cursor, tz) {
        if entry.until.is_some_and(|until| tick > until) {
            break;
        }
        if tick > now {
            out.next = Some(tick);
            break;
        }
        scanned += 1;
        if scanned > MAX_SCAN {
            // Jump close to now: far older ticks are skipped whatever the policy.
            let resume = now - window.unwrap_or(TimeDelta::days(1)).min(TimeDelta::days(1));
            if resume > tick {
                out.skip(tick);
                cursor = resume;
                scanned = 0;
                continue;
            }
        }
        match window {
            None => {
                if let Some(previous) = latest.replace(tick) {
                    out.skip(previous);
                }
            }
            Some(w) if now - tick <= w => out.send.push(tick),
            Some(_) => out.skip(tick),
        }
        cursor = tick;
    }
    if let Some(tick) = latest {
        out.send.push(tick);
    }
    out
}

/// Jumps over interval ticks that are certainly skipped (older than the window, or for `once`
/// older than the last period), counting them, so a long outage of a short interval costs
/// nothing. Returns the new cursor.
fn skip_interval_ticks(
    schedule: &Schedule,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    window: Option<TimeDelta>,
    out: &mut Plan,
) -> DateTime<Utc> {
    let Schedule::Interval(every) = schedule else {
        return cursor;
    };
    let Ok(step) = TimeDelta::from_std(*every) else {
        return cursor;
    };
    let step_ms = step.num_milliseconds().max(1);
    // Keep the last window's (or the last period's) ticks for the loop; jump the rest.
    let keep = window.unwrap_or(step).max(step);
    let jump_to = now - keep;
    if jump_to <= cursor {
        return cursor;
    }
    // Only ticks strictly older than `jump_to` are jumped.
    let whole = ((jump_to - cursor).num_milliseconds() - 1) / step_ms;
    if whole < 1 {
        return cursor;
    }
    let last_jumped = cursor + TimeDelta::milliseconds(whole * step_ms);
    let first_jumped = cursor + step;
    out.skipped += whole as u64;
    out.skipped_span = Some(match out.skipped_span {
        Some((first, _)) => (first, last_jumped),
        None => (first_jumped, last_jumped),
    });
    last_jumped
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::schedule::Crontab;
    use chrono::TimeZone as _;
    use chrono_tz::Tz;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("valid")
    }

    fn every(secs: u64) -> Schedule {
        Schedule::Interval(Duration::from_secs(secs))
    }

    /// An entry of `schedule` with policy `catch_up`, in UTC.
    fn entry(schedule: Schedule, catch_up: CatchUp) -> Entry {
        Entry {
            catch_up,
            ..Entry::new("e", "t", schedule, Tz::UTC)
        }
    }

    fn plan(
        schedule: &Schedule,
        catch_up: CatchUp,
        last: DateTime<Utc>,
        start_time: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Plan {
        let mut e = entry(schedule.clone(), catch_up);
        e.start_time = start_time;
        super::plan(&e, last, now)
    }

    #[test]
    fn nothing_due_gives_the_next_tick() {
        let p = plan(&every(10), CatchUp::Once, t(0), None, t(5));
        assert!(p.send.is_empty());
        assert_eq!(p.next, Some(t(10)));
    }

    #[test]
    fn on_time_ticks_are_sent_by_every_policy() {
        for policy in [CatchUp::Once, CatchUp::Window(CatchUp::SKIP_WINDOW)] {
            let p = plan(&every(10), policy, t(0), None, t(10));
            assert_eq!(p.send, vec![t(10)]);
            assert_eq!(p.skipped, 0);
            assert_eq!(p.next, Some(t(20)));
        }
    }

    #[test]
    fn once_collapses_missed_ticks_into_the_latest() {
        let p = plan(&every(10), CatchUp::Once, t(0), None, t(35));
        assert_eq!(p.send, vec![t(30)]);
        assert_eq!(p.skipped, 2);
        assert_eq!(p.skipped_span, Some((t(10), t(20))));
        assert_eq!(p.next, Some(t(40)));
    }

    #[test]
    fn window_sends_recent_ticks_and_skips_older_ones() {
        let w = CatchUp::Window(Duration::from_secs(15));
        let p = plan(&every(10), w, t(0), None, t(35));
        assert_eq!(p.send, vec![t(20), t(30)]);
        assert_eq!(p.skipped, 1);
        let skip = CatchUp::Window(CatchUp::SKIP_WINDOW);
        let p = plan(&every(10), skip, t(0), None, t(37));
        assert!(p.send.is_empty());
        assert_eq!(p.skipped, 3);
        assert_eq!(p.next, Some(t(40)));
    }

    #[test]
    fn a_long_outage_of_a_short_interval_is_counted_not_walked() {
        let year = 365 * 86_400;
        let p = plan(&every(1), CatchUp::Once, t(0), None, t(year));
        assert_eq!(p.send, vec![t(year)]);
        assert_eq!(p.skipped, year as u64 - 1);
        let all = CatchUp::Window(Duration::from_secs(3));
        let p = plan(&every(1), all, t(0), None, t(year));
        assert_eq!(p.send, vec![t(year - 3), t(year - 2), t(year - 1), t(year)]);
        assert_eq!(p.skipped, year as u64 - 4);
    }

    #[test]
    fn start_time_holds_ticks_back() {
        let p = plan(&every(10), CatchUp::Once, t(0), Some(t(100)), t(50));
        assert!(p.send.is_empty());
        assert_eq!(p.next, Some(t(100)));
        let p = plan(&every(10), CatchUp::Once, t(0), Some(t(100)), t(100));
        assert_eq!(p.send, vec![t(100)]);
    }

    #[test]
    fn no_tick_after_until() {
        let mut e = entry(every(10), CatchUp::Window(Duration::from_secs(60)));
        e.until = Some(t(25));
        let p = super::plan(&e, t(0), t(60));
        assert_eq!(p.send, vec![t(10), t(20)]);
        assert_eq!(p.next, None);
    }

    #[test]
    fn clocked_entries_fire_once() {
        let s = Schedule::Clocked(t(5));
        let p = plan(&s, CatchUp::Once, t(0), None, t(60));
        assert_eq!(p.send, vec![t(5)]);
        assert_eq!(p.next, None);
        assert!(plan(&s, CatchUp::Once, t(5), None, t(60)).send.is_empty());
    }

    #[test]
    fn crontab_ticks_collapse_like_intervals() {
        let c = Crontab::parse("*/5", "*", "*", "*", "*").expect("a valid crontab");
        let s = Schedule::Crontab(c);
        let base = Utc
            .with_ymd_and_hms(2026, 12, 1, 10, 0, 0)
            .single()
            .expect("valid");
        let now = base + TimeDelta::minutes(17);
        let p = plan(&s, CatchUp::Once, base, None, now);
        assert_eq!(p.send, vec![base + TimeDelta::minutes(15)]);
        assert_eq!(p.skipped, 2);
        assert_eq!(p.next, Some(base + TimeDelta::minutes(20)));
    }
}
