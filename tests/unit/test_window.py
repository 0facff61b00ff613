"""Maintenance window parsing and checking (metascale/window.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from metascale.window import check_window, parse_window

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
# 2026-11-23 is a Monday; 2026-11-28 a Saturday.


def at(day: int, hour: int, minute: int = 0, tz: timezone | ZoneInfo = UTC) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=tz)


@pytest.mark.parametrize(("spec", "now", "inside"), [
    ("Sat,Sun 02:00-04:00 Europe/Berlin", at(28, 2, 30, BERLIN), True),
    ("Sat,Sun 02:00-04:00 Europe/Berlin", at(28, 1, 30, UTC), True),       # 02:30 CET
    ("Sat,Sun 02:00-04:00 Europe/Berlin", at(28, 3, 0, UTC), False),       # 04:00 CET: the end is exclusive
    ("Sat,Sun 02:00-04:00 Europe/Berlin", at(28, 2, 0, BERLIN), True),     # the start is inclusive
    ("Sat,Sun 02:00-04:00 Europe/Berlin", at(27, 2, 30, BERLIN), False),   # Friday
    ("Mon-Fri 22:00-02:00 UTC", at(27, 23, 0), True),                      # Friday night
    ("Mon-Fri 22:00-02:00 UTC", at(28, 1, 59), True),                      # Saturday early: Friday's window
    ("Mon-Fri 22:00-02:00 UTC", at(28, 22, 30), False),                    # Saturday night: not a listed day
    ("Mon-Fri 22:00-02:00 UTC", at(23, 1, 0), False),                      # Monday early: Sunday's, not listed
    ("Mon-Fri 22:00-02:00 UTC", at(24, 2, 0), False),
    ("* 01:00-05:00 UTC", at(25, 4, 59), True),
    ("* 01:00-05:00 UTC", at(25, 5, 0), False),
    ("Fri-Mon 00:00-24:00 UTC", at(23, 12, 0), True),                      # wrapping day range, whole day
    ("Fri-Mon 00:00-24:00 UTC", at(24, 12, 0), False),                     # Tuesday
    ("sat 02:00-04:00 UTC", at(28, 3, 0), True),                           # day names case-insensitive
])
def test_check_window_says_inside_or_gives_a_reason(spec: str, now: datetime, inside: bool) -> None:
    reason = check_window(spec, now)

    assert (reason is None) is inside
    if not inside:
        assert reason is not None and spec.strip() in reason and "next opens" in reason


def test_empty_spec_means_any_time() -> None:
    assert check_window("", at(24, 12)) is None
    assert check_window("   ", at(24, 12)) is None


def test_reason_names_the_local_time_and_the_next_opening() -> None:
    reason = check_window("Sat,Sun 02:00-04:00 Europe/Berlin", at(26, 13, 30))  # Thursday 14:30 CET

    assert reason == ("outside the maintenance window 'Sat,Sun 02:00-04:00 Europe/Berlin': it is Thu 14:30 "
                      "Europe/Berlin now (2026-11-26 14:30 CET); the window next opens Sat 2026-11-28 02:00 CET")


def test_window_crossing_midnight_reports_its_length() -> None:
    window = parse_window("Mon-Fri 22:00-02:00 UTC")

    assert window.crosses_midnight
    assert window.length.total_seconds() == 4 * 3600
    assert window.days == frozenset({0, 1, 2, 3, 4})


def test_next_opening_is_later_the_same_day_when_before_the_start() -> None:
    window = parse_window("* 01:00-05:00 UTC")

    assert window.next_opening(at(25, 0, 30)) == at(25, 1, 0)
    assert window.next_opening(at(25, 6, 0)) == at(26, 1, 0)


@pytest.mark.parametrize(("spec", "fragment"), [
    ("Sat 02:00-04:00", "expected days, a time range and a time zone"),
    ("Sat 2am-4am UTC", "expected days, a time range and a time zone"),
    ("Sbt 02:00-04:00 UTC", "unknown day 'Sbt'"),
    ("Sat, 02:00-04:00 UTC", "empty day in 'Sat,'"),
    ("Sat,,Sun 02:00-04:00 UTC", "empty day"),
    ("Sat 25:00-04:00 UTC", "time '25:00' is not a valid HH:MM"),
    ("Sat 02:60-04:00 UTC", "time '02:60' is not a valid HH:MM"),
    ("Sat 24:00-04:00 UTC", "24:00 can only end a window"),
    ("Sat 02:00-02:00 UTC", "an empty window"),
    ("Sat 02:00-04:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
])
def test_bad_spec_raises_value_error_naming_value_and_valid_form(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_window(spec, at(28, 3))

    message = str(caught.value)
    assert repr(spec) in message
    assert fragment in message
    assert "valid form" in message and "Sat,Sun 02:00-04:00 Europe/Berlin" in message


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check_window("* 01:00-05:00 UTC", datetime(2026, 11, 25, 2, 0))


def test_window_module_does_not_import_prefect() -> None:
    import subprocess
    import sys

    code = "import sys, metascale.window; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
