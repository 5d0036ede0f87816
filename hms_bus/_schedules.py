"""Schedules: start a workflow on every tick of a cron expression or a fixed interval.

``mgmt.schedule("slaSweep", "slaSweep", cron="0 2 * * *", timezone="Europe/Paris")``
registers a :class:`Schedule`; the scheduler role starts one workflow per tick. Each
tick's workflow id derives from the schedule and the tick
(``slaSweep@2026-12-08T01:00:00Z``), so several scheduler replicas start each tick once:
a start is idempotent by id. The last tick started is kept in the store; ticks missed
while every scheduler was down follow the schedule's ``catchup``:

- ``"latest"`` (default): the most recent missed tick starts, the older ones are skipped;
- ``"all"``: every missed tick starts, oldest first (at most :data:`MAX_CATCHUP`);
- ``"skip"``: missed ticks are skipped; the schedule goes on from the next one.

A tick counts as missed when it is more than ``scheduler.misfire_grace`` seconds late.
Cron expressions are parsed by ``croniter`` (5 fields, or 6 with seconds first), in the
schedule's time zone, so "02:00 every night" stays 02:00 across daylight saving changes;
intervals (``every=``) tick on multiples of the interval since the Unix epoch, in UTC.
"""

from __future__ import annotations

import math
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from croniter import CroniterError, croniter

from ._definitions import check_name, validate_payload
from ._errors import ConfigError
from ._results import to_jsonable

if TYPE_CHECKING:
    from ._definitions import Registry

__all__ = ["CATCHUP", "MAX_CATCHUP", "Schedule", "add_schedule", "make_schedule"]

Catchup = Literal["latest", "all", "skip"]
CATCHUP: tuple[Catchup, ...] = ("latest", "all", "skip")

MAX_CATCHUP = 1000
"""The most missed ticks ``catchup="all"`` starts at once (the newest ones)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A workflow started on every tick (see module docs).

    Attributes:
        name: the schedule's name (letters, digits, ``_``, ``-``).
        workflow: the workflow each tick starts.
        cron: a cron expression, or None.
        every: the interval in seconds, or None (exactly one of the two is set).
        payload: each started workflow's payload (JSON-ready).
        timezone: the IANA zone the cron expression is read in.
        catchup: what happens to ticks missed while no scheduler ran.
    """

    name: str
    workflow: str
    cron: str | None
    every: float | None
    payload: Any
    timezone: str
    catchup: Catchup

    @property
    def spec(self) -> str:
        """The schedule's rule as text: the cron expression, or ``every 300s``."""
        return self.cron if self.cron is not None else f"every {self.every:g}s"

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t`` (UTC)."""
        if self.every is not None:
            n = math.floor(t.timestamp() / self.every) + 1
            return datetime.fromtimestamp(n * self.every, UTC)
        assert self.cron is not None
        local = t.astimezone(zoneinfo.ZoneInfo(self.timezone))
        nxt: datetime = croniter(self.cron, local).get_next(datetime)
        return nxt.astimezone(UTC)

    def due(
        self, last: datetime, now: datetime, *, grace: float
    ) -> tuple[list[datetime], datetime]:
        """The ticks to start at ``now`` after the last one started at ``last``, by the
        schedule's ``catchup``, and the newest tick passed (to record as the last)."""
        ticks: list[datetime] = []
        t = self.next_after(last)
        while t <= now:
            ticks.append(t)
            if len(ticks) > MAX_CATCHUP:
                del ticks[0]
            t = self.next_after(t)
        if not ticks:
            return [], last
        newest = ticks[-1]
        late = [tick for tick in ticks if (now - tick).total_seconds() > grace]
        on_time = [tick for tick in ticks if tick not in late]
        if self.catchup == "all":
            return ticks, newest
        if self.catchup == "skip":
            return on_time, newest
        return [newest], newest

    def count_between(self, after: datetime, until: datetime, *, most: int = 100_000) -> int:
        """How many ticks fall in (``after``, ``until``] (counting stops at ``most``)."""
        n, t = 0, self.next_after(after)
        while t <= until and n < most:
            n += 1
            t = self.next_after(t)
        return n

    def workflow_id(self, tick: datetime) -> str:
        """The id of the workflow ``tick`` starts: the same in every scheduler. The tick
        in UTC, to the second, or to the millisecond for an interval of a fraction of a
        second."""
        t = tick.astimezone(UTC)
        # Milliseconds for every tick of a schedule that has any (an interval that is not
        # whole seconds), so that its ids sort in tick order.
        fine = self.every is not None and self.every != int(self.every)
        frac = f".{t.microsecond // 1000:03d}" if fine else ""
        return f"{self.name}@{t:%Y-%m-%dT%H:%M:%S}{frac}Z"


def make_schedule(
    name: str,
    workflow: str,
    *,
    cron: str | None,
    every: timedelta | float | None,
    payload: Any,
    timezone: str,
    catchup: str,
) -> Schedule:
    """Check a schedule's arguments and build it; ConfigError naming what is wrong."""
    check_name("schedule", name)
    if (cron is None) == (every is None):
        raise ConfigError(f"schedule {name!r} needs exactly one of cron= and every=")
    seconds: float | None = None
    if every is not None:
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
        if not seconds > 0:
            raise ConfigError(f"schedule {name!r}: every= must be positive, got {every!r}")
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f"schedule {name!r}: unknown time zone {timezone!r} (use an IANA name such as "
            "'UTC' or 'Europe/Paris')"
        ) from None
    if cron is not None:
        if not isinstance(cron, str):
            raise ConfigError(f"schedule {name!r}: cron= must be a string, got {cron!r}")
        try:
            croniter(cron, datetime.now(zone)).get_next(datetime)
        except (CroniterError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"schedule {name!r}: invalid cron expression {cron!r}: {exc}"
            ) from None
    if catchup not in CATCHUP:
        raise ConfigError(
            f"schedule {name!r}: catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}"
        )
    return Schedule(name, workflow, cron, seconds, payload, timezone, catchup)


def add_schedule(
    registry: Registry,
    name: str,
    workflow: str,
    *,
    cron: str | None,
    every: timedelta | float | None,
    payload: Any,
    timezone: str,
    catchup: str,
) -> Schedule:
    """Check a schedule against ``registry`` (its workflow defined, its name new, its
    payload the workflow's input), build it and add it (see :meth:`Management.schedule`).

    Raises:
        ConfigError: as :func:`make_schedule`, or for an unknown workflow or a name used
            twice.
        PayloadValidationError: the payload does not match the workflow's input.
    """
    wf = registry.workflow(workflow)
    if name in registry.schedules:
        raise ConfigError(f"schedule {name!r} is already defined")
    validated = validate_payload(wf.start_model(), payload, f"schedule {name!r}")
    made = make_schedule(
        name,
        workflow,
        cron=cron,
        every=every,
        payload=to_jsonable(validated),
        timezone=timezone,
        catchup=catchup,
    )
    registry.schedules[name] = made
    return made
