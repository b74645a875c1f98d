"""A cron expression (the settings' STACK_BACKUP_CRON) as a systemd ``OnCalendar=`` value,
so a timer on a host fires when the control plane's schedule would, in the same time zone.

    >>> on_calendar("0 2 * * *", "Europe/Madrid")
    '*-*-* 02:00:00 Europe/Madrid'
    >>> on_calendar("*/15 8-18 * * 1-5", "UTC")
    'Mon..Fri *-*-* 08..18:00/15:00 UTC'
    >>> shifted_cron("45 23 * * 1-5", 30)  # the safety stop: the teardown's time plus the grace
    '15 0 * * 2,3,4,5,6'
"""

from __future__ import annotations

import re

DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_PART = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?$")


class CalendarError(ValueError):
    """A cron expression that has no systemd calendar equivalent."""


def _field(value: str, first: int, width: int = 2) -> str:
    out = []
    for part in value.split(","):
        m = _PART.match(part)
        if not m:
            raise CalendarError(f"{value!r}: only numbers, '*', ranges a-b, lists and steps /n are supported")
        base, step = m.group(1), m.group(3)
        if base == "*":
            text = "*" if not step else f"{first:0{width}d}"
        elif "-" in base:
            a, b = base.split("-")
            text = f"{int(a):0{width}d}..{int(b):0{width}d}"
        else:
            text = f"{int(base):0{width}d}"
        out.append(text + (step or ""))
    return ",".join(out)


def _days(value: str) -> str:
    if value == "*":
        return ""
    out = []
    for part in value.split(","):
        if "/" in part or not re.fullmatch(r"\d(-\d)?", part):
            raise CalendarError(f"day of week {value!r}: use numbers 0-7, ranges a-b and lists")
        if "-" in part:
            a, b = part.split("-")
            out.append(f"{DAYS[int(a)]}..{DAYS[int(b)]}")
        else:
            out.append(DAYS[int(part)])
    return ",".join(out) + " "


def on_calendar(cron: str, timezone: str) -> str:
    """The systemd calendar expression of a five-field ``cron`` in ``timezone``."""
    fields = cron.split()
    if len(fields) != 5:
        raise CalendarError(f"{cron!r}: expected five fields (minute hour day month weekday)")
    minute, hour, dom, month, dow = fields
    if dom != "*" and dow != "*":
        # cron runs when either matches, systemd when both do: not the same schedule.
        raise CalendarError(f"{cron!r}: a day of the month and a day of the week together have no systemd equivalent")
    return (f"{_days(dow)}*-{_field(month, 1)}-{_field(dom, 1)} "
            f"{_field(hour, 0)}:{_field(minute, 0)}:00 {timezone}")


def shifted_cron(cron: str, minutes: int) -> str:
    """``cron`` moved ``minutes`` later: the host's safety stop fires at the nightly
    teardown's time plus the grace. Only a teardown at one fixed time of day can be moved
    (a number for the minute and the hour, '*' for the day of the month and the month; the
    day of the week follows when the time passes midnight)."""
    fields = cron.split()
    if len(fields) != 5:
        raise CalendarError(f"{cron!r}: expected five fields (minute hour day month weekday)")
    minute, hour, dom, month, dow = fields
    if not (minute.isdigit() and hour.isdigit() and dom == "*" and month == "*"):
        raise CalendarError(f"{cron!r}: the safety stop needs a teardown at one fixed time of day "
                            "(numbers for the minute and the hour, '*' for the day of the month and the month)")
    total = int(hour) * 60 + int(minute) + minutes
    days, total = divmod(total, 24 * 60)
    if dow != "*" and days:
        weekdays = set()
        for part in dow.split(","):
            if not re.fullmatch(r"\d(-\d)?", part):
                raise CalendarError(f"day of week {dow!r}: use numbers 0-7, ranges a-b and lists")
            a, _, b = part.partition("-")
            weekdays.update(d % 7 for d in range(int(a), int(b or a) + 1))
        dow = ",".join(str(d) for d in sorted((d + days) % 7 for d in weekdays))
    return f"{total % 60} {total // 60} * * {dow}"


def host_timers(settings) -> dict[str, str]:
    """The hosts' own timers, as systemd calendars in the schedules' time zone ('' for a
    timer disarmed): the server's nightly backup (STACK_BACKUP_CRON), and every host's
    safety stop at the nightly teardown's time plus the grace, for a night the teardown
    did not come (none with STACK_SAFETY_STOP=false or no nightly teardown to wait for).
    Configure writes them; bootstrap's key for configure hashes them, so a changed
    schedule reaches the hosts."""
    tz = settings.schedule_timezone
    stop = stop_at = ""
    if settings.safety_stop and settings.nightly_teardown_cron:
        shifted = shifted_cron(settings.nightly_teardown_cron, settings.teardown_grace_minutes)
        stop = on_calendar(shifted, tz)
        minute, hour = shifted.split()[:2]
        stop_at = f"{int(hour):02d}:{int(minute):02d}"  # the script's lateness check reads it
    return {"backup": on_calendar(settings.backup_cron, tz) if settings.backup_cron else "",
            "safety_stop": stop, "safety_stop_at": stop_at, "timezone": tz}
