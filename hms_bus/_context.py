"""What a step handler receives: :class:`StepContext`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ._events import ErrorInfo
from ._pii import mask_text
from ._results import Next

__all__ = ["StepContext", "StepLogger"]


class StepLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines start with ``[<workflow_id> <step>#<seq> attempt <n>]``.

    The same values are also on each record as ``workflow_id``, ``step``, ``seq`` and
    ``attempt``, for structured log formatters. The step's sensitive values (see
    :class:`hms_bus.Sensitive`) are masked in its lines, arguments included.
    """

    def __init__(
        self,
        logger: logging.Logger,
        extra: Mapping[str, object] | None = None,
        *,
        secrets: Sequence[str] = (),
    ) -> None:
        super().__init__(logger, extra or {})
        self._secrets = secrets

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log like ``Logger.log``, masking the step's sensitive values."""
        if not self.isEnabledFor(level):
            return
        if self._secrets:
            text = str(msg) % args if args else str(msg)
            msg, args = mask_text(text, self._secrets), ()
        msg, kwargs = self.process(msg, kwargs)
        self.logger.log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Prefix the message and attach the context to the record."""
        x = self.extra or {}
        kwargs.setdefault("extra", {}).update(x)
        prefix = (
            f"[{x.get('workflow_id')} {x.get('step')}#{x.get('seq')} attempt {x.get('attempt')}]"
        )
        return f"{prefix} {msg}", kwargs


@dataclass(frozen=True, slots=True)
class StepContext:
    """One attempt of one step, as its handler sees it.

    Attributes:
        payload: the step's input: an instance of the step's ``input=`` model when one is
            declared, else the JSON value (usually a dict).
        workflow_id: the workflow instance.
        workflow: the workflow's name.
        step: this step's name.
        seq: this step execution's position in the workflow (1 for the first).
        attempt: 1 for the first attempt, 2 for the first retry, …
        idempotency_key: the same for every attempt of this step execution
            (``<workflow_id>:<step>:<seq>``): pass it to payment and other external
            APIs so a retried or redelivered attempt does not repeat a side effect.
        error: for a step reached through an error path, why the earlier step failed
            (or, after a signal's timeout, which signal timed out).
        signal: for a step woken by a signal (``WaitFor``), the signal's data.
        started_at: when this attempt started (UTC).
        log: a :class:`StepLogger` whose lines name the workflow id, step and attempt.
    """

    payload: Any
    workflow_id: str
    workflow: str
    step: str
    seq: int
    attempt: int
    idempotency_key: str
    started_at: datetime
    error: ErrorInfo | None = None
    signal: Any = None
    log: logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: StepLogger(logging.getLogger("hms_bus.step"), {})
    )

    def schedule(
        self, step: str, data: Any = None, *, delay: timedelta | float | None = None
    ) -> Next:
        """Return this from the handler to run ``step`` after ``delay`` (a durable timer).

        ``return ctx.schedule("checkPaymentStatus", delay=timedelta(hours=1))`` is the
        same as returning ``Next("checkPaymentStatus", delay=timedelta(hours=1))``: the
        timer is kept in the store and fires even if every process restarts meanwhile.
        """
        return Next(step, data, delay)
