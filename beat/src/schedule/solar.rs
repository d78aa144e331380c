//! Celery's `solar(event, lat, lon)` schedule: a task that fires at a solar event (a dawn, the
//! sunrise, solar noon, the sunset or a dusk) at a place on Earth.
//!
//! Celery computes the events with the `ephem` package: the crossing of the Sun's centre through
//! -18°, -12° or -6° for the dawns and dusks, of its upper limb through -0°34' (the conventional
//! refraction) for sunrise and sunset, and the meridian transit for solar noon, with no atmosphere
//! otherwise (`pressure = 0`). Here the `solar-positioning` crate (NREL's SPA and a bracketing root
//! search) finds the same crossings with the same horizons, the centre's horizon for sunrise and
//! sunset being -0°34' less the Sun's apparent radius (959.63″ over its distance in AU, as in
//! `ephem`). Measured against Celery 5.7 with `ephem` 4.2.1, for every event at latitudes -80° to
//! 80° (every 10°, and ±65°), longitudes -180° to 180° (every 45°) and 24 instants over 2026-2027
//! (36,936 cases): the next event after an instant differs from Celery's by at most 0.5 s (p99 0.1
//! s) where the event happens every day, and by at most 2.3 s for the first event after a polar day
//! or night. The `sunrise` crate was measured too and left out: its solar declination lags by about
//! nine hours, which puts its sunsets and dusks up to 98 s from Celery's at 50° (and 69 s for an
//! astronomical dusk at 30°).
//!
//! Where an event does not happen every day (sunrise in the polar night, astronomical dusk in a
//! summer at 50°), the next one is the first that happens, as Celery searches ahead for it; its
//! search stops after 366 days (and runs the task then), this one after 367 (and then there is no
//! next event).

use std::fmt;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use solar_positioning::{Horizon, Location, SolarEvents, SolarPositions, delta_t};
use thiserror::Error;

/// The days searched for an event that does not happen every day (Celery: 366).
const MAX_SEARCH_DAYS: u32 = 367;

/// The horizon of Celery's sunrise and sunset, for the Sun's upper limb: -0°34'.
const RISE_SET_HORIZON: f64 = -34.0 / 60.0;

/// The Sun's apparent radius at 1 AU, in degrees (959.63″, as in `ephem`).
const SUN_RADIUS_AT_1_AU: f64 = 959.63 / 3600.0;

/// A solar event, by Celery's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolarEvent {
    /// The Sun's centre rises through -18°.
    DawnAstronomical,
    /// The Sun's centre rises through -12°.
    DawnNautical,
    /// The Sun's centre rises through -6°.
    DawnCivil,
    /// The Sun's upper limb rises through -0°34'.
    Sunrise,
    /// The Sun crosses the meridian.
    SolarNoon,
    /// The Sun's upper limb sets through -0°34'.
    Sunset,
    /// The Sun's centre sets through -6°.
    DuskCivil,
    /// The Sun's centre sets through -12°.
    DuskNautical,
    /// The Sun's centre sets through -18°.
    DuskAstronomical,
}

impl SolarEvent {
    /// Every event, in the order of a day.
    pub const ALL: [Self; 9] = [
        Self::DawnAstronomical,
        Self::DawnNautical,
        Self::DawnCivil,
        Self::Sunrise,
        Self::SolarNoon,
        Self::Sunset,
        Self::DuskCivil,
        Self::DuskNautical,
        Self::DuskAstronomical,
    ];

    /// Celery's name of the event.
    pub fn name(self) -> &'static str {
        match self {
            Self::DawnAstronomical => "dawn_astronomical",
            Self::DawnNautical => "dawn_nautical",
            Self::DawnCivil => "dawn_civil",
            Self::Sunrise => "sunrise",
            Self::SolarNoon => "solar_noon",
            Self::Sunset => "sunset",
            Self::DuskCivil => "dusk_civil",
            Self::DuskNautical => "dusk_nautical",
            Self::DuskAstronomical => "dusk_astronomical",
        }
    }

    /// The event of a Celery name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl fmt::Display for SolarEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A solar schedule that cannot be used, with Celery's reasons.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SolarError {
    /// Not one of Celery's event names.
    #[error("solar event {0:?} is invalid, must be one of {names}", names = sorted_names())]
    Event(String),
    /// Outside -90..=90.
    #[error("solar latitude {0} is invalid, must be between -90 and 90")]
    Latitude(f64),
    /// Outside -180..=180.
    #[error("solar longitude {0} is invalid, must be between -180 and 180")]
    Longitude(f64),
}

fn sorted_names() -> String {
    let mut names: Vec<&str> = SolarEvent::ALL.iter().map(|e| e.name()).collect();
    names.sort_unstable();
    names.join(", ")
}

/// Fires at each occurrence of `event` at (`latitude`, `longitude`), in degrees (north and
/// east positive), as Celery's `solar(event, lat, lon)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Solar {
    /// The event.
    pub event: SolarEvent,
    /// Latitude, -90..=90.
    pub latitude: f64,
    /// Longitude, -180..=180.
    pub longitude: f64,
}

/// What is looked for in a day.
#[derive(Clone, Copy)]
enum Crossing {
    Rise(Horizon),
    Set(Horizon),
    Transit,
}

impl Solar {
    /// The schedule of an event named as in Celery, validated as Celery does.
    pub fn new(event: &str, latitude: f64, longitude: f64) -> Result<Self, SolarError> {
        let event = SolarEvent::parse(event).ok_or_else(|| SolarError::Event(event.to_owned()))?;
        if !(-90.0..=90.0).contains(&latitude) {
            return Err(SolarError::Latitude(latitude));
        }
        if !(-180.0..=180.0).contains(&longitude) {
            return Err(SolarError::Longitude(longitude));
        }
        Ok(Self {
            event,
            latitude,
            longitude,
        })
    }

    /// The first occurrence of the event strictly after `after` (Celery's next run for
    /// `last_run_at = after`); `None` if there is none within a year, or the date is outside
    /// the years the solar model covers (-2000 to 6000).
    ///
    /// The events are searched for one UTC day at a time, from the start of the day, each day
    /// with its own ΔT and Sun's distance: an event is then the same instant to the nanosecond
    /// whatever `after` asked for it, so every beat process names a tick alike, and searching
    /// on from an event never finds it again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let location = Location {
            latitude: self.latitude,
            longitude: self.longitude,
        };
        let events = SolarEvents::new();
        let mut day = after.date_naive().and_time(NaiveTime::MIN).and_utc();
        for _ in 0..=MAX_SEARCH_DAYS {
            let end = day + TimeDelta::days(1);
            let dt = delta_t::estimate_from_date_like(&day).ok()?;
            let crossing = self.crossing(day, dt)?;
            // The day's events in (day, end], in order, until one is past `after`.
            let mut cursor = day;
            loop {
                let found = match crossing {
                    Crossing::Rise(h) => events.next_rise(&cursor, &end, location, dt, h),
                    Crossing::Set(h) => events.next_set(&cursor, &end, location, dt, h),
                    Crossing::Transit => events.next_transit(&cursor, &end, self.longitude, dt),
                }
                .ok()?;
                match found {
                    Some(t) if t > after => return Some(t),
                    Some(t) if t > cursor => cursor = t,
                    _ => break,
                }
            }
            day = end;
        }
        None
    }

    fn crossing(&self, day: DateTime<Utc>, dt: f64) -> Option<Crossing> {
        use SolarEvent as E;
        let upper_limb = || -> Option<Horizon> {
            let noon = day + TimeDelta::hours(12);
            let distance = SolarPositions::new()
                .for_time(&noon, dt)
                .ok()?
                .earth_radius_vector()?;
            Some(Horizon::Custom(
                RISE_SET_HORIZON - SUN_RADIUS_AT_1_AU / distance,
            ))
        };
        Some(match self.event {
            E::DawnAstronomical => Crossing::Rise(Horizon::AstronomicalTwilight),
            E::DawnNautical => Crossing::Rise(Horizon::NauticalTwilight),
            E::DawnCivil => Crossing::Rise(Horizon::CivilTwilight),
            E::Sunrise => Crossing::Rise(upper_limb()?),
            E::SolarNoon => Crossing::Transit,
            E::Sunset => Crossing::Set(upper_limb()?),
            E::DuskCivil => Crossing::Set(Horizon::CivilTwilight),
            E::DuskNautical => Crossing::Set(Horizon::NauticalTwilight),
            E::DuskAstronomical => Crossing::Set(Horizon::AstronomicalTwilight),
        })
    }
}

impl fmt::Display for Solar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at latitude {}, longitude {}",
            self.event, self.latitude, self.longitude
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid")
    }

    fn near(got: Option<DateTime<Utc>>, want: DateTime<Utc>) {
        let got = got.expect("an event");
        assert!(
            (got - want).abs() < TimeDelta::seconds(2),
            "{got} is not {want}"
        );
    }

    #[test]
    fn events_match_celerys() {
        // Celery 5.7 / ephem 4.2.1: solar(event, 51.5, -0.12).remaining_estimate(2026-06-01).
        let after = utc(2026, 6, 1, 0, 0, 0);
        let london = |event| Solar::new(event, 51.5, -0.12).expect("valid");
        near(
            london("sunrise").next_after(after),
            utc(2026, 6, 1, 3, 49, 7),
        );
        near(
            london("solar_noon").next_after(after),
            utc(2026, 6, 1, 11, 58, 19),
        );
        near(
            london("sunset").next_after(after),
            utc(2026, 6, 1, 20, 8, 9),
        );
        near(
            london("dusk_civil").next_after(after),
            utc(2026, 6, 1, 20, 53, 47),
        );
        // The Sun stays above -18° all night in a London June: the next one is in July.
        near(
            london("dusk_astronomical").next_after(after),
            utc(2026, 7, 21, 23, 43, 6),
        );
    }

    #[test]
    fn the_next_event_is_strictly_after() {
        let s = Solar::new("sunset", -33.9, 18.4).expect("valid");
        let first = s.next_after(utc(2026, 3, 1, 0, 0, 0)).expect("a sunset");
        let second = s.next_after(first).expect("the next");
        assert!(second - first > TimeDelta::hours(23), "{first} {second}");
        assert!(second - first < TimeDelta::hours(25), "{first} {second}");
        // The same instant, whatever it is searched from.
        for back in [1, 1_000, 3_600_000, 50_000_000] {
            let earlier = first - TimeDelta::milliseconds(back);
            assert_eq!(s.next_after(earlier), Some(first), "{back} ms before");
        }
        assert_eq!(s.next_after(first - TimeDelta::nanoseconds(1)), Some(first));
    }

    #[test]
    fn the_polar_night_has_no_sunrise() {
        // Tromsø (69.65° N): no sunrise from late November to mid-January.
        let s = Solar::new("sunrise", 69.65, 18.96).expect("valid");
        near(
            s.next_after(utc(2026, 12, 1, 0, 0, 0)),
            utc(2027, 1, 15, 10, 34, 38),
        );
    }

    #[test]
    fn bad_events_and_coordinates_are_refused() {
        assert!(matches!(
            Solar::new("sunny", 0.0, 0.0),
            Err(SolarError::Event(_))
        ));
        assert_eq!(
            Solar::new("sunset", 90.5, 0.0),
            Err(SolarError::Latitude(90.5))
        );
        assert_eq!(
            Solar::new("sunset", 0.0, -180.5),
            Err(SolarError::Longitude(-180.5))
        );
        assert!(Solar::new("sunset", f64::NAN, 0.0).is_err());
        assert!(Solar::new("dawn_civil", -90.0, 180.0).is_ok());
        let text = SolarError::Event("x".into()).to_string();
        assert!(text.contains("dawn_astronomical, dawn_civil"), "{text}");
    }
}
