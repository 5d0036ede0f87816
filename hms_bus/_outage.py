"""Outages in the log: once when they start, once a minute while they last, once at the end.

A lost broker or database makes every loop of every process fail the same way, several
times a second. :class:`Outage` reports one loop's failures as one outage;
:class:`Repeats` holds back a library's own per-attempt warnings (aiokafka's, asyncpg's)
the same way. :func:`retrying` is how a loop rides one out: it backs off and tries
again, woken early by a :class:`Recovery` once the backends answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from ._errors import HmsBusError
from ._retry import RetryPolicy

__all__ = [
    "OUTAGE",
    "RECOVERY_PROBE",
    "SAY_AGAIN",
    "Outage",
    "Recovery",
    "Repeats",
    "quiet",
    "retrying",
]

log = logging.getLogger("hms_bus.consume")
"""Where :func:`retrying` logs its outages (the consumer loops' logger, as it always was)."""

OUTAGE = RetryPolicy(max_attempts=1, initial_delay=0.1, max_delay=30.0, jitter=0.5)
"""How roles back off while the bus or the store is away: from 0.1 s, doubling, up to
30 s, with jitter, so that many processes do not all come back at the same instant."""

RECOVERY_PROBE = 1.0
"""Seconds between a node's pings of its bus and store while one of its loops is failing
(see :class:`Recovery`)."""

SAY_AGAIN = 60.0
"""Seconds between the log lines of one outage (and of one repeated library warning)."""


class Outage:
    """The log of one loop's failures: an outage starts at the first failure and ends at
    the next success.

    Logged once when it starts (a traceback only for errors that are not a retriable
    :class:`HmsBusError`, which may be bugs), then at most once every ``every`` seconds
    with how long it has lasted, and once when it ends.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        every: float = SAY_AGAIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._log = logger
        self._every = every
        self._clock = clock
        self.attempts = 0
        """Failures since the outage began (0: no outage)."""
        self.error = ""
        """The last failure, as ``Type: message``."""
        self._began = self._said = 0.0

    def failed(self, exc: BaseException, retry_in: float | None = None) -> None:
        """Count a failure (log it if it starts the outage, or a minute has passed)."""
        self.attempts += 1
        self.error = f"{type(exc).__name__}: {exc}"
        now = self._clock()
        if self.attempts == 1:
            self._began = self._said = now
            transient = isinstance(exc, HmsBusError) and exc.retriable
            then = f"; retrying in {retry_in:.1f}s" if retry_in is not None else ""
            self._log.log(
                logging.WARNING if transient else logging.ERROR,
                "%s failed (%s: %s)%s",
                self.what,
                type(exc).__name__,
                exc,
                then,
                exc_info=exc if not transient else None,
            )
        elif now - self._said >= self._every:
            self._said = now
            self._log.warning(
                "%s still failing after %.0fs and %d attempts (%s: %s)",
                self.what,
                now - self._began,
                self.attempts,
                type(exc).__name__,
                exc,
            )

    def ok(self) -> None:
        """A success: ends the outage, if there was one (and logs that)."""
        if self.attempts:
            self._log.warning(
                "%s succeeded again after %.1fs and %d failed attempts",
                self.what,
                self._clock() - self._began,
                self.attempts,
            )
            self.attempts = 0

    @property
    def lasted(self) -> float:
        """Seconds since the outage began (0 when there is none)."""
        return self._clock() - self._began if self.attempts else 0.0


class Recovery:
    """Wakes the loops that back off through an outage as soon as the backends answer.

    A loop that retries (:func:`retrying`) backs off exponentially, up to 30 s, so
    without help its next attempt after an outage could come up to half a minute after
    the bus or the store is back: a durable timer would fire that late, a step would
    wait that long. Each failing loop says so (:meth:`failed`); the node's
    probe then pings the bus and the store every :data:`RECOVERY_PROBE` seconds, and when
    a ping that had failed answers again (:meth:`recovered`) every loop waiting in
    :meth:`wait` tries again at once. A loop whose failure is not an outage (the pings
    answer throughout) keeps its own backoff: nothing wakes it early.
    """

    def __init__(self) -> None:
        self._woken = asyncio.Event()
        self.failing = asyncio.Event()
        """Set by a loop that failed; cleared by the probe after a round of answers."""

    def failed(self) -> None:
        """A loop failed and is about to back off: the probe should look more often."""
        self.failing.set()

    def recovered(self) -> None:
        """The backends answer again after an outage: wake every loop backing off."""
        woken, self._woken = self._woken, asyncio.Event()
        woken.set()

    async def wait(self, delay: float, stopping: asyncio.Event) -> bool:
        """Sleep ``delay`` seconds, less if the backends recover or ``stopping`` is set.

        Returns True when it was woken by a recovery.
        """
        woken = self._woken
        waits = [asyncio.ensure_future(e.wait()) for e in (woken, stopping)]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
        return woken.is_set()


async def retrying(
    what: str,
    op: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    backoff: RetryPolicy | None = None,
    recovery: Recovery | None = None,
) -> bool:
    """Run ``op`` until it succeeds, backing off after each failure (``backoff``, by
    default :data:`~hms_bus._outage.OUTAGE`).

    Used where giving up would lose data (the store or the bus is down): the loop
    waits and tries again. The failures are one :class:`~hms_bus._outage.Outage` in
    the log: when it starts, at most once a minute while it lasts, and when it ends.
    With a ``recovery``, a wait ends early once the backends answer again after an
    outage (see :class:`~hms_bus._outage.Recovery`). Returns False if ``stopping`` was
    set before ``op`` succeeded.
    """
    outage: Outage | None = None  # made at the first failure: most calls succeed at once
    backed_off = 0  # failures since the last recovery: the backoff's exponent
    while True:
        try:
            await op()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            backed_off += 1
            delay = (backoff or OUTAGE).delay(backed_off)
            if outage is None:
                outage = Outage(what, log)
            outage.failed(exc, retry_in=delay)
        else:
            if outage is not None:
                outage.ok()
            return True
        if stopping.is_set():
            return False
        if recovery is not None:
            recovery.failed()
            if await recovery.wait(delay, stopping):
                # The backend is back: start the backoff again from its shortest wait,
                # in case the first attempt meets a connection the outage broke.
                backed_off = 0
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)


class Repeats(logging.Filter):
    """Lets a warning or error through once, then at most once every ``every`` seconds.

    Repeats are told apart by logger, level and message template (not its arguments),
    so "Unable connect to node with id 1: [Errno 111] …" logged ten times a second
    during an outage is one line, then one line a minute that says how many were held
    back. Lines below WARNING pass untouched.
    """

    def __init__(self, every: float = SAY_AGAIN, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int, object], tuple[float, int]] = {}  # -> (said, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.msg)
        now = self._clock()
        with self._lock:
            said, held = self._last.get(key, (float("-inf"), 0))
            if now - said < self._every:
                self._last[key] = (said, held + 1)
                return False
            self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {now - said:.0f}s)"
        return True


_QUIET = Repeats()


def quiet(package: str) -> None:
    """Rate-limit the warnings and errors of ``package``'s loggers (see :class:`Repeats`).

    For the client libraries that log each failed attempt of their own retries
    (aiokafka, asyncpg): hms-bus reports the outage itself. Call it once the package
    is imported (its modules create their loggers then); calling it again is harmless.
    """
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == package]
    for name in (package, *names):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
