"""When a cron schedule is due, in its own time zone (pure; croniter parses and iterates).

A schedule is a five-field cron expression (or a macro such as ``@daily``) and an IANA
time zone. Its *slots* are the instants it names; the dispatcher starts one run per
instance and slot (``runs_one_per_slot``), so a slot is the identity of a scheduled run.

Wall-clock times are iterated as the people who wrote the expression read them, then
placed on the time line:

* a wall-clock time that occurs twice (the hour repeated when clocks go back) is the
  first of the two: a tick in a repeated hour has one slot, and runs once;
* a wall-clock time that does not occur (the hour skipped when clocks go forward) is
  placed where the skipped hour would have put it, one gap later by the wall clock
  (02:30 on a spring-forward night in Paris is 03:30 CEST): it runs once. Two ticks
  that land on one instant (``0 * * * *`` gives 02:00 and 03:00 both at 03:00 CEST)
  are one slot, so one run.

:func:`due_slot` is the slot to run now: the latest slot not after ``now`` and after
the last slot run. Slots missed while no dispatcher ran are caught up once — only the
latest of them — not once per missed tick.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

#: Wall-clock ticks looked at, at most, going back or forward (a minute schedule has
#: 525,600 a year).
MAX_STEPS_BACK = 600_000
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a usable cron expression, or ``None``.

    Five fields (minute hour day-of-month month day-of-week) or a macro (``@daily``,
    ``@hourly``, ...); a seconds or year field is refused, as is an expression that
    never fires (``0 0 30 feb *``).
    """
    text = expression.strip()
    fields = text.split()
    if text.startswith("@"):
        if len(fields) != 1 or _refusal(text.lower()) is not None:
            return f"unknown cron macro {text!r}"
        return None
    if len(fields) != len(_FIELDS):
        return (f"a cron expression has 5 fields (minute hour day-of-month month "
                f"day-of-week), this one has {len(fields)}")
    refusal = _refusal(text)
    if refusal is None:
        return None
    for index, (name, value) in enumerate(zip(_FIELDS, fields, strict=True)):
        alone = ["*"] * len(_FIELDS)
        alone[index] = value
        if _refusal(" ".join(alone)) is not None:  # which field croniter refuses
            return f"the {name} field {value!r} is invalid: {_plain(refusal)}"
    return refusal


def _plain(refusal: str) -> str:
    """croniter's reason without the expression it quotes first (``[0 25 * * *] is …``)."""
    return re.sub(r"^\[[^\]]*\]\s*", "", refusal)


def _refusal(text: str) -> str | None:
    """croniter's reason for refusing ``text``, or ``None``."""
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        return "it names no date that exists: it would never run"
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        return str(exc) or type(exc).__name__
    return None


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``. Raises ``ValueError`` naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def place(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant (UTC) of the wall-clock time ``wall`` (naive) in ``tz``: the first
    of two in a repeated hour, one gap later in a skipped hour (see the module)."""
    first = wall.replace(tzinfo=tz, fold=0)
    return first.astimezone(UTC)


def slots_before(cron: str, tz_name: str, now: datetime) -> Iterator[datetime]:
    """The schedule's slots not after ``now`` (aware), latest first, each once."""
    tz = zone(tz_name)
    # croniter's get_prev is strictly before its start: start a second after the
    # wall-clock now so that a slot exactly at now is included; a wall-clock time can
    # be placed after now (a skipped hour), so placed slots are filtered, not trusted.
    wall_now = now.astimezone(tz).replace(tzinfo=None)
    ticks = croniter(cron.strip(), wall_now + timedelta(seconds=1))
    seen: set[datetime] = set()
    for _ in range(MAX_STEPS_BACK):
        try:
            wall = ticks.get_prev(datetime)
        except CroniterBadDateError:
            return
        slot = place(wall, tz)
        if slot > now or slot in seen:  # a skipped hour's tick is a later tick's slot
            continue
        seen.add(slot)
        yield slot


def latest_slot(cron: str, tz_name: str, now: datetime) -> datetime | None:
    """The schedule's latest slot not after ``now``; ``None`` if none is found within a
    year or so of wall-clock ticks."""
    return next(slots_before(cron, tz_name, now), None)


def due_slot(cron: str, tz_name: str, now: datetime, *, last_slot: datetime | None,
             since: datetime | None = None) -> datetime | None:
    """The slot to run at ``now``, or ``None`` when nothing is due.

    ``last_slot``: the slot of the instance's last scheduled run (any status: a slot
    runs once). ``since``: when the schedule began to apply (the instance's creation, or
    the schedule's last change); slots before it are not caught up. Of the slots after
    both and not after ``now``, only the latest is due: missed slots are caught up once.
    """
    slot = latest_slot(cron, tz_name, now)
    if slot is None:
        return None
    for floor in (last_slot, since):
        if floor is not None and slot <= floor:
            return None
    return slot


def next_slot(cron: str, tz_name: str, after: datetime) -> datetime | None:
    """The schedule's first slot after ``after`` (aware): when to look again."""
    tz = zone(tz_name)
    wall_after = after.astimezone(tz).replace(tzinfo=None)
    ticks = croniter(cron.strip(), wall_after - timedelta(hours=3))
    for _ in range(MAX_STEPS_BACK):
        try:
            slot = place(ticks.get_next(datetime), tz)
        except CroniterBadDateError:
            return None
        if slot > after:
            return slot
    return None
