"""STACK_BACKUP_CRON as the server host's systemd timer (stack/oncalendar.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from stack.oncalendar import CalendarError, on_calendar, shifted_cron


@pytest.mark.parametrize(("cron", "expected"), [
    ("0 2 * * *", "*-*-* 02:00:00 UTC"),
    ("30 4 * * 0", "Sun *-*-* 04:30:00 UTC"),
    ("*/15 8-18 * * 1-5", "Mon..Fri *-*-* 08..18:00/15:00 UTC"),
    ("0 3 1,15 * *", "*-*-01,15 03:00:00 UTC"),
])
def test_a_cron_becomes_the_same_systemd_calendar(cron, expected):
    assert on_calendar(cron, "UTC") == expected


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze checks the expression where it exists")
def test_systemd_accepts_each_calendar():
    for cron in ("0 2 * * *", "*/15 8-18 * * 1-5", "0 3 1,15 * *"):
        done = subprocess.run(["systemd-analyze", "calendar", on_calendar(cron, "Europe/Madrid")], capture_output=True)
        assert done.returncode == 0, done.stderr


def test_a_cron_systemd_cannot_express_is_refused_with_a_reason():
    with pytest.raises(CalendarError, match="day of the month and a day of the week"):
        on_calendar("0 2 1 * 1", "UTC")
    with pytest.raises(CalendarError, match="five fields"):
        on_calendar("0 2 * *", "UTC")


@pytest.mark.parametrize(("cron", "minutes", "expected"), [
    ("0 3 * * *", 30, "30 3 * * *"),
    ("45 23 * * *", 30, "15 0 * * *"),
    ("45 23 * * 1-5", 30, "15 0 * * 2,3,4,5,6"),   # Friday night's stop is early on Saturday
    ("50 23 * * 6", 20, "10 0 * * 0"),              # Saturday -> Sunday
    ("0 3 * * 7", 1439, "59 2 * * 1"),               # 7 is Sunday too
])
def test_the_safety_stop_is_the_teardown_moved_by_the_grace(cron, minutes, expected):
    assert shifted_cron(cron, minutes) == expected


@pytest.mark.parametrize("cron", ["*/30 3 * * *", "0 3,15 * * *", "0 3 1 * *", "0 3 * 6 *", "0 3 * *"])
def test_a_teardown_at_no_single_time_of_day_cannot_be_moved(cron):
    with pytest.raises(CalendarError):
        shifted_cron(cron, 30)
