"""celeriac-beat's crontab against real Python Celery: the next fire time after an instant.

44 crontab expressions (steps, wrapped ranges, lists, day and month names, day_of_month combined
with day_of_week, month restrictions, 29 February) in 6 time zones (UTC, Europe/London,
America/New_York, Australia/Sydney, Australia/Lord_Howe, Asia/Kolkata) from 10 instants over
2025 (exact slot boundaries, seconds and microseconds, moments just before and inside DST
changes): 2640 cases. For each, Celery's next run after `last_run_at` (the instant) is
`start + ffwd` from `crontab.remaining_delta(last_run_at)`, the end date `remaining()` counts
down to, cross-checked through `is_due`, which turns due exactly then.
`celeriac-beat schedule --count 1 --after INSTANT` runs once per instant with all 264 entries.

* 2127 cases touch no DST transition of their zone (none in (instant - 3 h, next fire]): each
  must agree with Celery exactly, or the test fails.
* All 2640, the 513 near a transition included, must agree with a brute-force model of
  celeriac's DST rule written here: a nonexistent local slot fires at the transition that skips
  it, a repeated one at its first occurrence, or at both when the hour field allows all 24 hours.
  33 of the 513 differ from Celery because of that rule; `-s` prints them.

The same counts hold with Celery 5.3 (the compatibility pass), given month names as numbers.
A second test follows six fires in a row from the instants near DST changes.
"""

import datetime as dt
import os
import re
import zoneinfo
from bisect import bisect_right

import celery.utils.time
import pytest
from celery import Celery
from celery.schedules import crontab, crontab_parser

from support import BEAT_BIN, beat_listing

UTC = dt.timezone.utc

ZONES = ["UTC", "Europe/London", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe",
         "Asia/Kolkata"]

# (minute, hour, day_of_week, day_of_month, month_of_year): Celery's argument order.
EXPRESSIONS = [
    ("*", "*", "*", "*", "*"),
    ("*/5", "*", "*", "*", "*"),
    ("*/15", "*", "*", "*", "*"),
    ("0", "*", "*", "*", "*"),
    ("30", "*", "*", "*", "*"),
    ("0,30", "*", "*", "*", "*"),
    ("7", "*/2", "*", "*", "*"),
    ("0", "0", "*", "*", "*"),
    ("30", "2", "*", "*", "*"),
    ("30", "1", "*", "*", "*"),
    ("45", "1", "*", "*", "*"),
    ("15", "2", "*", "*", "*"),
    ("0", "9-17", "mon-fri", "*", "*"),
    ("*/10", "9-17", "mon-fri", "*", "*"),
    ("0", "22-2", "*", "*", "*"),
    ("0", "22-2/2", "*", "*", "*"),
    ("58-2/2", "*", "*", "*", "*"),
    ("1,13,30-45,50-59/2", "*", "*", "*", "*"),
    ("0", "0,8-17/2", "*", "*", "*"),
    ("0", "12", "sun", "*", "*"),
    ("0", "12", "sat,sun", "*", "*"),
    ("0", "12", "fri-mon", "*", "*"),
    ("0", "8", "*/2", "*", "*"),
    ("0", "0", "*", "1", "*"),
    ("0", "0", "*", "15", "*"),
    ("0", "0", "*", "31", "*"),
    ("0", "0", "mon", "1-7", "*"),
    ("0", "0", "fri", "13", "*"),
    ("0", "6", "*", "2-30/2", "*"),
    ("0", "0", "*", "1,15", "jan-mar"),
    ("0", "0", "*", "*", "*/3"),
    ("0", "0", "*", "1", "dec-feb"),
    ("30", "3", "*", "29", "2"),
    ("0", "0", "Monday", "*", "*"),
    ("0", "0", "tues,THURS", "*", "*"),
    ("0", "12", "*", "*", "sept"),
    ("*/20", "1-3", "*", "*", "*"),
    ("0", "*/6", "*", "*", "*"),
    ("5", "4", "sun", "*", "oct,apr"),
    ("0", "2", "sun", "*", "mar,nov"),
    ("59", "23", "*", "31", "dec"),
    ("0", "0", "mon", "29", "2"),
    ("0", "0-23", "*", "*", "*"),
    ("30", "*/1", "*", "*", "*"),
]


def _at(text):
    return dt.datetime.fromisoformat(text).astimezone(UTC)


INSTANTS = [
    _at("2025-01-01T00:00:00+00:00"),         # a slot boundary in UTC (05:30 in Kolkata)
    _at("2025-02-28T23:59:59.999999+00:00"),  # a microsecond before March in UTC
    _at("2025-03-09T06:30:00+00:00"),         # New York 01:30 EST, half an hour before its gap
    _at("2025-03-30T00:45:30+00:00"),         # London 00:45:30 GMT, before its gap at 01:00 UTC
    _at("2025-04-05T14:40:00+00:00"),         # Sydney 01:40 AEDT, Lord Howe 01:10 LHDT: folds ahead
    _at("2025-06-15T12:00:00+00:00"),
    _at("2025-10-04T15:10:12.345000+00:00"),  # Lord Howe 01:40 LHST, Sydney 01:10 AEST: gaps ahead
    _at("2025-10-26T00:30:00+00:00"),         # London 01:30 BST, first pass of the repeated hour
    _at("2025-11-02T06:15:00.500000+00:00"),  # New York 01:15:00.5 EST, second pass
    _at("2025-12-31T23:59:00+00:00"),
]

# Transitions this far before the instant still count: the repeated hour's second pass (or the
# hour after a gap) begins at the transition, and no zone here shifts by more than an hour.
TRANSITION_MARGIN = dt.timedelta(hours=3)


@pytest.fixture(autouse=True)
def _clean_redis():
    """This module needs no Redis: it replaces the suite's autouse fixture that empties it."""
    yield


def entry_name(i, zone):
    return f"c{i:02d}-{ZONES.index(zone)}"


# --- Python Celery -------------------------------------------------------------------------

_apps = {}


def _app(zone):
    if zone not in _apps:
        app = Celery("beat-crontab", set_as_current=False)
        app.conf.timezone = zone
        app.conf.enable_utc = True
        _apps[zone] = app
    return _apps[zone]


# Celery 5.3 (the compatibility pass) reads no month names; 5.7 does.
HAS_MONTH_NAMES = hasattr(celery.utils.time, "yearmonth")


def celery_fields(expr):
    """The expression as this Celery reads it: month names as numbers where it has none."""
    minute, hour, dow, dom, moy = expr
    if not HAS_MONTH_NAMES:
        names = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        moy = re.sub(r"[A-Za-z]+", lambda m: str(names.index(m.group()[:3].lower()) + 1), moy)
    return dict(minute=minute, hour=hour, day_of_week=dow, day_of_month=dom, month_of_year=moy)


def celery_next(expr, zone, instant):
    """Celery's next run after last_run_at = instant, as a UTC datetime. Beat passes
    last_run_at and now in the app's zone (app.now()), and now is last_run_at just after a send:
    Celery 5.3's remaining_delta matches fields in last_run_at's own zone and requires now on
    the same date for the current hour."""
    app = _app(zone)
    z = zoneinfo.ZoneInfo(zone)
    last = instant.astimezone(z)
    c = crontab(**celery_fields(expr), app=app, nowfun=lambda: last)
    start, delta, _now = c.remaining_delta(last)
    return (start + delta).astimezone(UTC)


def check_is_due(expr, zone, instant, nxt):
    """Celery's beat asks is_due(last_run_at): not due a microsecond before nxt, due at nxt."""
    z = zoneinfo.ZoneInfo(zone)
    for now, due in ((nxt - dt.timedelta(microseconds=1), False), (nxt, True)):
        probe = crontab(**celery_fields(expr), app=_app(zone),
                        nowfun=lambda now=now.astimezone(z): now)
        assert probe.is_due(instant.astimezone(z)).is_due is due, (expr, zone, instant, now)


# --- Reference model of celeriac's DST rule --------------------------------------------------

def _offset(z, t):
    return t.astimezone(z).utcoffset()


def transitions(zone, start, end):
    """UTC instants (to the second) where the zone's offset changes, in [start, end]."""
    z = zoneinfo.ZoneInfo(zone)
    out = []
    step = dt.timedelta(hours=6)
    t = start
    while t < end:
        u = t + step
        if _offset(z, t) != _offset(z, u):
            lo, hi = t, u  # offset(lo) != offset(hi): bisect to the first second of the new one
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if _offset(z, mid) == _offset(z, lo):
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        t = u
    return out


class Expanded:
    def __init__(self, expr):
        f = celery_fields(expr)
        self.minute = sorted(crontab_parser(60).parse(f["minute"]))
        self.hour = sorted(crontab_parser(24).parse(f["hour"]))
        self.dow = crontab_parser(7).parse(f["day_of_week"])
        self.dom = crontab_parser(31, 1).parse(f["day_of_month"])
        self.moy = crontab_parser(12, 1).parse(f["month_of_year"])
        self.hour_wildcard = len(self.hour) == 24

    def slots_from(self, start, stop):
        """Matching naive local minutes >= start, in order, until stop(day) or 50 years."""
        d = start.date()
        while d.year < start.year + 50 and not stop(d):
            if d.month in self.moy and d.day in self.dom and d.isoweekday() % 7 in self.dow:
                for h in self.hour:
                    for m in self.minute:
                        n = dt.datetime(d.year, d.month, d.day, h, m)
                        if n >= start:
                            yield n
            d += dt.timedelta(days=1)


def rule_instants(n, z, hour_wildcard, zone_transitions):
    """The instants at which naive local slot n fires under celeriac's rule."""
    a = n.replace(tzinfo=z, fold=0).astimezone(UTC)
    b = n.replace(tzinfo=z, fold=1).astimezone(UTC)
    real = [u for u in sorted({a, b}) if u.astimezone(z).replace(tzinfo=None) == n]
    if len(real) == 2:  # repeated local time
        return real if hour_wildcard else real[:1]
    if real:
        return real
    # Nonexistent: the transition between the two readings is the first instant past it.
    lo, hi = min(a, b), max(a, b)
    skip = [t for t in zone_transitions if lo < t <= hi]
    assert len(skip) == 1, (n, z, skip)
    return skip


def rule_next(expanded, zone, instant, zone_transitions):
    """Brute force: every matching slot from 3 h of local time before the instant's, until 3 h
    of local time past the best found; the smallest instant after `instant`."""
    z = zoneinfo.ZoneInfo(zone)
    local = instant.astimezone(z).replace(tzinfo=None)
    best = None

    def horizon():
        return best.astimezone(z).replace(tzinfo=None) + TRANSITION_MARGIN

    def past_horizon(day):
        return best is not None and day > horizon().date()

    start = (local - TRANSITION_MARGIN).replace(second=0, microsecond=0)
    for n in expanded.slots_from(start, past_horizon):
        if best is not None and n > horizon():
            break
        for u in rule_instants(n, z, expanded.hour_wildcard, zone_transitions):
            if u > instant and (best is None or u < best):
                best = u
    return best


# --- celeriac-beat ---------------------------------------------------------------------------

def schedule_file(tmp_path):
    lines = []
    for i, expr in enumerate(EXPRESSIONS):
        fields = dict(zip(("minute", "hour", "day_of_week", "day_of_month", "month_of_year"), expr))
        table = ", ".join(f'{k} = "{v}"' for k, v in fields.items())
        for zone in ZONES:
            lines += [f'[entries."{entry_name(i, zone)}"]', 'task = "celeriac.test.add"',
                      f"crontab = {{ {table} }}", f'timezone = "{zone}"', ""]
    path = tmp_path / "beat-schedule.toml"
    path.write_text("\n".join(lines))
    return path


def beat_fires(path, instant, count):
    """{entry: (zone, [fires, aware as printed])} from `celeriac-beat schedule`."""
    return {rec["entry"]: (rec["timezone"], [dt.datetime.fromisoformat(f) for f in rec["fires"]])
            for rec in beat_listing(path, instant, count)}


def zone_transitions():
    span = (dt.datetime(2024, 12, 1, tzinfo=UTC), dt.datetime(2046, 1, 1, tzinfo=UTC))
    return {zone: transitions(zone, *span) for zone in ZONES}


def require_binary():
    if not os.path.exists(BEAT_BIN):
        pytest.fail(f"{BEAT_BIN} is missing: build it with `cargo build -p celeriac-beat`")


def test_crontab_next_fire_matches_celery(tmp_path):
    require_binary()
    path = schedule_file(tmp_path)
    all_transitions = zone_transitions()
    expanded = [Expanded(e) for e in EXPRESSIONS]

    compared = dst_cases = 0
    mismatches, rule_breaks, dst_differs = [], [], []
    for instant in INSTANTS:
        ours_by_entry = beat_fires(path, instant, 1)
        assert len(ours_by_entry) == len(EXPRESSIONS) * len(ZONES)
        for i, expr in enumerate(EXPRESSIONS):
            for zone in ZONES:
                tz_name, (ours_local,) = ours_by_entry[entry_name(i, zone)]
                assert tz_name == zone
                ours = ours_local.astimezone(UTC)
                # Printed in the entry's zone, with the offset in force at that instant.
                assert ours_local.utcoffset() == _offset(zoneinfo.ZoneInfo(zone), ours), ours_local
                celery = celery_next(expr, zone, instant)
                case = f"{' '.join(expr)} in {zone} after {instant.isoformat()}"
                reference = rule_next(expanded[i], zone, instant, all_transitions[zone])
                if ours != reference:
                    rule_breaks.append(f"{case}: ours {ours}, rule {reference}, celery {celery}")
                ts = all_transitions[zone]
                lo, hi = instant - TRANSITION_MARGIN, max(ours, celery)
                near_transition = bisect_right(ts, hi) > bisect_right(ts, lo)
                if near_transition:
                    dst_cases += 1
                    if ours != celery:
                        dst_differs.append(f"{case}: ours {ours_local.isoformat()}, celery "
                                           f"{celery.astimezone(zoneinfo.ZoneInfo(zone)).isoformat()}")
                else:
                    compared += 1
                    check_is_due(expr, zone, instant, celery)
                    if ours != celery:
                        mismatches.append(f"{case}: ours {ours}, celery {celery}")

    print(f"\n{compared} cases compared with Celery, {dst_cases} near a DST transition "
          f"({len(dst_differs)} of which differ from Celery by our DST rule):")
    for line in dst_differs:
        print("  " + line)
    assert not mismatches, "\n".join(mismatches)
    assert not rule_breaks, "\n".join(rule_breaks)
    assert compared > 2000


def test_crontab_fire_sequences_follow_dst_rule(tmp_path):
    """Six fires in a row from each instant near a DST change: a gap's slots fire once, together,
    at the transition; a repeated hour fires once, or twice for an all-hours crontab."""
    require_binary()
    path = schedule_file(tmp_path)
    all_transitions = zone_transitions()
    expanded = [Expanded(e) for e in EXPRESSIONS]
    wrong = []
    for instant in INSTANTS[2:5] + INSTANTS[6:9]:
        ours_by_entry = beat_fires(path, instant, 6)
        for i, expr in enumerate(EXPRESSIONS):
            for zone in ZONES:
                _, ours = ours_by_entry[entry_name(i, zone)]
                expected, cursor = [], instant
                for _ in range(6):
                    cursor = rule_next(expanded[i], zone, cursor, all_transitions[zone])
                    expected.append(cursor)
                if [f.astimezone(UTC) for f in ours] != expected:
                    wrong.append(f"{' '.join(expr)} in {zone} after {instant.isoformat()}: ours "
                                 f"{[f.isoformat() for f in ours]}, rule {[e.isoformat() for e in expected]}")
    assert not wrong, "\n".join(wrong)
