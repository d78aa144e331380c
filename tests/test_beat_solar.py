"""celeriac-beat's solar schedules against real Python Celery (`celery.schedules.solar`, which
computes the events with `ephem`): the next event after an instant.

All 9 events at 7 latitudes (-65° to 64°, among them places with polar days and nights for the
twilights and, at ±65°, days without a civil dusk) and 3 longitudes, from 3 instants: 567 cases.
Celery's next run after `last_run_at` is `last_run_at + remaining_estimate(last_run_at)`, with
`now` = `last_run_at` (as just after a send). `celeriac-beat schedule --count 1 --after INSTANT`
runs once per instant with all 189 entries. Each must be within a minute of Celery's; in
practice they are within a few seconds (`-s` prints the largest differences).

A second test follows four events in a row: each of Celery's is computed from the previous one.
"""

import datetime as dt
import os

import pytest
from celery import Celery
from celery.schedules import solar

from support import BEAT_BIN, beat_listing

pytestmark = pytest.mark.once

UTC = dt.timezone.utc

EVENTS = ["dawn_astronomical", "dawn_nautical", "dawn_civil", "sunrise", "solar_noon", "sunset",
          "dusk_civil", "dusk_nautical", "dusk_astronomical"]
LATITUDES = [-65.0, -40.25, -10.0, 0.0, 35.7, 51.5, 64.1]
LONGITUDES = [-122.42, -0.12, 139.69]
INSTANTS = [
    dt.datetime(2026, 6, 10, 8, 15, tzinfo=UTC),                   # northern summer
    dt.datetime(2026, 12, 21, 19, 45, 30, 500000, tzinfo=UTC),     # southern summer
    dt.datetime(2027, 3, 20, 0, 0, tzinfo=UTC),                    # equinox, midnight UTC
]
TOLERANCE = dt.timedelta(seconds=60)


@pytest.fixture(autouse=True)
def _clean_redis():
    """This module needs no Redis: it replaces the suite's autouse fixture that empties it."""
    yield


def cases():
    for i, event in enumerate(EVENTS):
        for j, lat in enumerate(LATITUDES):
            for k, lon in enumerate(LONGITUDES):
                yield f"s{i}-{j}-{k}", event, lat, lon


_app = Celery("beat-solar", set_as_current=False)
_app.conf.timezone = "UTC"


def celery_next(event, lat, lon, last_run_at):
    """Celery's next run after last_run_at: the instant remaining_estimate counts down to."""
    s = solar(event, lat, lon, app=_app, nowfun=lambda: last_run_at)
    return last_run_at + s.remaining_estimate(last_run_at)


def schedule_file(tmp_path):
    lines = []
    for name, event, lat, lon in cases():
        lines += [f'[entries."{name}"]', 'task = "celeriac.test.add"',
                  f'solar = {{ event = "{event}", latitude = {lat}, longitude = {lon} }}', ""]
    path = tmp_path / "beat-schedule.toml"
    path.write_text("\n".join(lines))
    return path


def beat_fires(path, instant, count):
    """{entry: [fires, as UTC datetimes]} from `celeriac-beat schedule`."""
    records = beat_listing(path, instant, count)
    assert all(rec["schedule"].startswith("solar ") for rec in records)
    return {rec["entry"]: [dt.datetime.fromisoformat(f).astimezone(UTC) for f in rec["fires"]]
            for rec in records}


def require_binary():
    if not os.path.exists(BEAT_BIN):
        pytest.fail(f"{BEAT_BIN} is missing: build it with `cargo build -p celeriac-beat`")


def test_solar_next_event_matches_celery(tmp_path):
    require_binary()
    path = schedule_file(tmp_path)
    diffs, wrong = [], []
    for instant in INSTANTS:
        ours_by_entry = beat_fires(path, instant, 1)
        assert len(ours_by_entry) == len(EVENTS) * len(LATITUDES) * len(LONGITUDES)
        for name, event, lat, lon in cases():
            (ours,) = ours_by_entry[name]
            theirs = celery_next(event, lat, lon, instant)
            diff = abs(ours - theirs)
            case = f"{event} at ({lat}, {lon}) after {instant.isoformat()}"
            diffs.append((diff, f"{case}: ours {ours.isoformat()}, celery {theirs.isoformat()}"))
            if not ours > instant or diff >= TOLERANCE:
                wrong.append(diffs[-1][1])
    diffs.sort(reverse=True)
    print(f"\n{len(diffs)} cases; largest differences from Celery:")
    for diff, line in diffs[:5]:
        print(f"  {diff.total_seconds():.3f} s  {line}")
    assert not wrong, "\n".join(wrong)
    assert len(diffs) > 500


def test_solar_events_in_a_row_match_celery(tmp_path):
    require_binary()
    path = schedule_file(tmp_path)
    instant = INSTANTS[0]
    wrong = []
    for name, fires in beat_fires(path, instant, 4).items():
        _, event, lat, lon = next(c for c in cases() if c[0] == name)
        cursor = instant
        for ours in fires:
            theirs = celery_next(event, lat, lon, cursor)
            if abs(ours - theirs) >= TOLERANCE:
                wrong.append(f"{event} at ({lat}, {lon}) after {cursor.isoformat()}: ours "
                             f"{ours.isoformat()}, celery {theirs.isoformat()}")
            cursor = theirs
    assert not wrong, "\n".join(wrong)
