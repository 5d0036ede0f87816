"""The definition-time half of :class:`~hms_bus.Management`: what an application defines.

Workflows (``define_workflow``), step handlers (``on_step``) and schedules
(``schedule``) are defined before the Management is entered, need no connection, and
live in the Management's own :class:`~hms_bus._definitions.Registry`, never in module
globals. :class:`Defining` holds them; :class:`~hms_bus.Management` inherits it and adds
the node and the client. The checks are the registry's (:mod:`hms_bus._definitions`)
and the schedules' (:mod:`hms_bus._schedules`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from ._definitions import Handler, Parallel, Registry, WorkflowDefinition
from ._retry import RetryPolicy
from ._schedules import Schedule, add_schedule

__all__ = ["Defining"]


class Defining:
    """The workflows, handlers and schedules of one Management (see module docs)."""

    def __init__(self) -> None:
        self._registry = Registry()

    @property
    def workflows(self) -> dict[str, WorkflowDefinition]:
        """Defined workflows by name (read-only use)."""
        return dict(self._registry.workflows)

    def define_workflow(
        self,
        name: str,
        steps: Sequence[str | Parallel],
        *,
        error_steps: Iterable[str] = (),
        input: type[BaseModel] | None = None,
        sla: timedelta | float | None = None,
        on_error: str | None = None,
        retry: RetryPolicy | None = None,
        version: str | None = None,
    ) -> WorkflowDefinition:
        """Define a workflow: its main path of steps, run in order.

        Args:
            name: the workflow's name (letters, digits, ``_``, ``-``).
            steps: the main path: step names, and groups of steps that run in parallel
                (:func:`hms_bus.parallel`). A handler that returns plain data (or None)
                moves the workflow to the next entry of this list; after the last one
                the workflow is ``completed`` with the last data as its result.
            error_steps: steps off the main path, reached only through ``on_error=``
                or ``Next(...)``; when one returns plain data the workflow completes.
            input: pydantic model the start payload must match (checked at ``start``).
            sla: the workflow should be terminal this long after it starts; a breach
                raises an ``slaBreached`` event and a log line (it does not fail it).
            on_error: default error-path step for steps that set no ``on_error``.
            retry: default :class:`RetryPolicy` for the workflow's steps.
            version: names this definition (default: a hash of its steps). Each instance
                runs by the version it started with. To change a workflow while
                instances of it run, define the new version beside the old one (call
                again with a new ``version=``): new starts take the last one defined,
                and instances in flight finish by theirs.

        Raises:
            ConfigError: for bad or duplicate names, an unknown ``on_error`` step, or a
                second definition of a workflow without a new ``version=``.
        """
        return self._registry.define(
            name,
            steps,
            error_steps=error_steps,
            input=input,
            sla=sla,
            on_error=on_error,
            retry=retry,
            version=version,
        )

    def schedule(
        self,
        name: str,
        workflow: str,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        payload: Any = None,
        timezone: str = "UTC",
        catchup: str = "latest",
    ) -> Schedule:
        """Start ``workflow`` with ``payload`` on every tick of ``cron`` or ``every``.

        The scheduler role starts one workflow per tick, whose id is
        ``<name>@<tick, UTC, to the second>``, so however many schedulers run, each tick
        starts once. Ticks missed while every scheduler was down follow ``catchup``:
        ``"latest"`` starts the most recent one, ``"all"`` starts each (at most 1,000),
        ``"skip"`` starts none. ``hms-bus schedules APP`` lists them with their next tick.

        Args:
            name: the schedule's name (letters, digits, ``_``, ``-``).
            workflow: a workflow defined on this Management.
            cron: a cron expression (5 fields, or 6 with seconds first), read in
                ``timezone``.
            every: an interval (timedelta or seconds), ticking on its multiples since
                the Unix epoch.
            payload: each workflow's payload, checked now against the workflow's
                ``input=``.
            timezone: an IANA time zone name for ``cron``.
            catchup: ``"latest"``, ``"all"`` or ``"skip"``.

        Raises:
            ConfigError: a bad name, a name used twice, an unknown workflow, not exactly
                one of ``cron`` and ``every``, a bad cron expression or time zone.
            PayloadValidationError: the payload does not match the workflow's input.
        """
        return add_schedule(
            self._registry,
            name,
            workflow,
            cron=cron,
            every=every,
            payload=payload,
            timezone=timezone,
            catchup=catchup,
        )

    @property
    def schedules(self) -> dict[str, Schedule]:
        """Registered schedules by name (read-only use)."""
        return dict(self._registry.schedules)

    def on_step(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
        on_error: str | None = None,
        input: type[BaseModel] | None = None,
        sla: timedelta | float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated ``async def`` as the handler of ``"workflow.step"``.

        Args:
            name: ``"<workflow>.<step>"`` of a defined workflow.
            retry: attempts and backoff for exceptions other than :class:`Fail`.
            timeout: seconds (or timedelta) one attempt may run; a timeout is retried.
            on_error: step to route to when this step fails for good (the error path).
            input: pydantic model the step's payload must match; the handler then gets
                an instance in ``ctx.payload``. A payload that does not match fails the
                step at once (and, for the first step, is refused at ``start``).
            sla: report (not fail) the step if it runs longer than this.

        Raises:
            ConfigError: unknown workflow or step, a second handler for one step, a
                handler that is not ``async def``, or a bad option.
        """

        def register(handler: Handler) -> Handler:
            self._registry.register(
                name, handler, retry=retry, timeout=timeout, on_error=on_error, input=input, sla=sla
            )
            return handler

        return register
