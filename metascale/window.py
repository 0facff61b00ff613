"""Maintenance windows: parse a spec such as "Sat,Sun 02:00-04:00 Europe/Berlin" and check a moment against it.

Pure: no I/O, no prefect. The grammar is `<days> <HH:MM>-<HH:MM> <IANA timezone>`:

* days: `*` (every day), or a comma list of day names and ranges: `Mon`, `Sat,Sun`, `Mon-Fri`, `Fri-Mon` (wraps);
* times are wall-clock times in the timezone; an end before the start crosses midnight, and the window then
  belongs to the day it opens on (`Fri 22:00-02:00` covers Friday 22:00 to Saturday 02:00); `24:00` ends at midnight;
* an empty spec means "any time".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES: tuple[str, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
VALID_FORM = ("'<days> <HH:MM>-<HH:MM> <timezone>', days '*' or a comma list of Mon..Sun and ranges "
              "(e.g. 'Sat,Sun 02:00-04:00 Europe/Berlin', 'Mon-Fri 22:00-02:00 UTC', '* 01:00-05:00 UTC')")
_SPEC = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s+(?P<tz>\S+)\s*$")
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class MaintenanceWindow:
    """A weekly window: opens at `start_minute` on each day in `days` and lasts until `end_minute` (local time)."""

    spec: str
    days: frozenset[int]          # 0 = Monday … 6 = Sunday: the days the window OPENS on
    start_minute: int             # minutes after local midnight
    end_minute: int               # minutes after local midnight; <= start_minute means "the next day"
    timezone: str

    @property
    def crosses_midnight(self) -> bool:
        return self.end_minute <= self.start_minute

    @property
    def length(self) -> timedelta:
        minutes = self.end_minute - self.start_minute
        return timedelta(minutes=minutes + _MINUTES_PER_DAY if minutes <= 0 else minutes)

    def local_time(self, now: datetime) -> datetime:
        """`now` in the window's timezone. Raises ValueError for a naive `now`."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"maintenance window check needs a timezone-aware time, got naive {now.isoformat()}")
        return now.astimezone(ZoneInfo(self.timezone))

    def contains(self, now: datetime) -> bool:
        """True if `now` (timezone-aware) falls inside the window."""
        local = self.local_time(now)
        minute = local.hour * 60 + local.minute
        today, yesterday = local.weekday(), (local.weekday() - 1) % 7
        if not self.crosses_midnight:
            return today in self.days and self.start_minute <= minute < self.end_minute
        return (today in self.days and minute >= self.start_minute) or (
            yesterday in self.days and minute < self.end_minute)

    def next_opening(self, now: datetime) -> datetime:
        """The next local moment (after `now`) at which the window opens."""
        local = self.local_time(now)
        for offset in range(0, 8):
            day = local.date() + timedelta(days=offset)
            opening = datetime.combine(day, _to_time(self.start_minute), tzinfo=local.tzinfo)
            if opening.weekday() in self.days and opening > local:
                return opening
        raise AssertionError(f"no opening within 8 days for {self.spec!r}")  # unreachable: days is never empty


    def closes_at(self, now: datetime) -> datetime | None:
        """The local moment the window that contains `now` closes (an opening that starts right when it closes
        continues it), or None when `now` is outside the window."""
        if not self.contains(now):
            return None
        local = self.local_time(now)
        minute = local.hour * 60 + local.minute
        opened = local.date()
        if self.crosses_midnight and not (local.weekday() in self.days and minute >= self.start_minute):
            opened -= timedelta(days=1)          # inside the opening of the day before, which ends today
        end = datetime.combine(opened, _to_time(self.start_minute), tzinfo=local.tzinfo) + self.length
        for _ in range(8):                       # back-to-back openings (e.g. `* 00:00-24:00`) are one window
            if not self.contains(end):
                break
            end += self.length
        return end


def _to_time(minute: int) -> time:
    return time(hour=minute // 60, minute=minute % 60)


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"invalid maintenance window {spec!r}: {why}; valid form: {VALID_FORM}")


def _parse_day(spec: str, name: str) -> int:
    for index, day in enumerate(DAY_NAMES):
        if name.lower() == day.lower():
            return index
    raise _bad(spec, f"unknown day {name!r} (use {', '.join(DAY_NAMES)})")


def _parse_days(spec: str, text: str) -> frozenset[int]:
    if text == "*":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        if not part:
            raise _bad(spec, f"empty day in {text!r}")
        first, sep, last = part.partition("-")
        start = _parse_day(spec, first)
        end = _parse_day(spec, last) if sep else start
        length = (end - start) % 7
        days.update((start + i) % 7 for i in range(length + 1))
    return frozenset(days)


def _parse_minute(spec: str, text: str) -> int:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours == 24 and minutes == 0:
        return _MINUTES_PER_DAY
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise _bad(spec, f"time {text!r} is not a valid HH:MM (00:00..23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def parse_window(spec: str) -> MaintenanceWindow:
    """Parse a maintenance window spec.

    Raises: ValueError naming the spec, what is wrong with it and the valid form.
    """
    match = _SPEC.match(spec)
    if match is None:
        raise _bad(spec, "expected days, a time range and a time zone separated by spaces")
    start = _parse_minute(spec, match["start"])
    end = _parse_minute(spec, match["end"])
    if start == _MINUTES_PER_DAY:
        raise _bad(spec, "24:00 can only end a window")
    if end == _MINUTES_PER_DAY:
        end = 0
    if start == end and match["end"] != "24:00":
        raise _bad(spec, f"start and end are both {match['start']} (an empty window)")
    try:
        ZoneInfo(match["tz"])
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise _bad(spec, f"unknown time zone {match['tz']!r} (use an IANA name such as UTC or Europe/Berlin)") from exc
    return MaintenanceWindow(spec=spec.strip(), days=_parse_days(spec, match["days"]), start_minute=start,
                             end_minute=end, timezone=match["tz"])


def time_left(spec: str, now: datetime) -> timedelta | None:
    """Return how long the window `spec` stays open after `now`: None for an empty spec (any time), zero when `now`
    is outside it. Raises: ValueError for a malformed spec or a naive `now`."""
    if not spec.strip():
        return None
    closes = parse_window(spec).closes_at(now)
    if closes is None:
        return timedelta(0)
    return max(closes - now, timedelta(0))


def check_window(spec: str, now: datetime) -> str | None:
    """Return None if `now` is inside the window `spec` (or `spec` is empty), else a sentence saying why not.

    Raises: ValueError for a malformed spec or a naive `now`.
    """
    if not spec.strip():
        return None
    window = parse_window(spec)
    if window.contains(now):
        return None
    local = window.local_time(now)
    opening = window.next_opening(now)
    return (f"outside the maintenance window {window.spec!r}: it is {local:%a %H:%M} {window.timezone} now "
            f"({local:%Y-%m-%d %H:%M %Z}); the window next opens {opening:%a %Y-%m-%d %H:%M %Z}")
