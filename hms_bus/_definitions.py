"""Workflow and step definitions, kept per :class:`~hms_bus.Management` (never globally)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ._errors import ConfigError, PayloadValidationError
from ._retry import RetryPolicy

if TYPE_CHECKING:
    from ._context import StepContext

__all__ = ["Handler", "Registry", "StepDefinition", "WorkflowDefinition", "validate_payload"]

Handler = Callable[["StepContext"], Awaitable[Any]]

# Names become Kafka topic names (``<workflow>.<step>``), so they may not hold dots.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
DEFAULT_RETRY = RetryPolicy()


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid workflow/step name, else raise ConfigError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use a letter then letters, digits, '_' or '-' "
            "(at most 100 characters, no dots: names become topic names)"
        )
    return name


def seconds(value: timedelta | float | None, what: str) -> float | None:
    """Convert a timeout/SLA/delay to positive seconds, rejecting nonsense."""
    if value is None:
        return None
    s = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if s <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}")
    return s


def validate_payload(model: type[BaseModel] | None, payload: Any, where: str) -> Any:
    """Validate ``payload`` against ``model``; return the model instance (or the payload).

    Raises:
        PayloadValidationError: naming ``where`` and every offending field.
    """
    if model is None:
        return payload
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise PayloadValidationError(
            f"payload for {where} does not match {model.__name__}: {fields}",
            errors=[dict(e) for e in exc.errors(include_url=False)],
        ) from exc


@dataclass(slots=True)
class StepDefinition:
    """One step of a workflow and how it runs.

    Attributes:
        workflow: the owning workflow's name.
        name: the step's name; its command topic is ``<workflow>.<name>``.
        handler: the async function registered with ``on_step`` (None until then).
        retry: attempts and backoff for exceptions other than ``Fail``.
        timeout: seconds one attempt may run before it is failed (and retried).
        on_error: step to route to when this step fails for good.
        input: pydantic model the step's payload must match.
        sla: seconds after which a running step is reported as breaching its SLA.
        error_step: True for steps outside the main path (reached only by ``on_error``
            or ``Next``); such a step ends the workflow unless it routes on itself.
    """

    workflow: str
    name: str
    handler: Handler | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: float | None = None
    on_error: str | None = None
    input: type[BaseModel] | None = None
    sla: float | None = None
    error_step: bool = False

    @property
    def qualname(self) -> str:
        """``<workflow>.<step>``, the name handlers register under."""
        return f"{self.workflow}.{self.name}"


@dataclass(slots=True)
class WorkflowDefinition:
    """A named workflow: its main path of steps, its error-path steps and defaults.

    Attributes:
        name: the workflow's name.
        steps: every step by name (main path first, in order, then error steps).
        main_path: the step names run in order when handlers return plain data.
        input: pydantic model the start payload must match.
        sla: seconds after start by which the workflow should be terminal.
        on_error: default error-path step for steps that set none.
    """

    name: str
    steps: dict[str, StepDefinition]
    main_path: tuple[str, ...]
    input: type[BaseModel] | None = None
    sla: float | None = None
    on_error: str | None = None

    @property
    def first_step(self) -> str:
        """The first step of the main path."""
        return self.main_path[0]

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``; ConfigError naming the known steps otherwise."""
        try:
            return self.steps[name]
        except KeyError:
            raise ConfigError(
                f"workflow {self.name!r} has no step {name!r} (its steps: {', '.join(self.steps)})"
            ) from None

    def next_after(self, name: str) -> str | None:
        """The main-path step after ``name``; None after the last one or an error step."""
        if self.steps[name].error_step:
            return None
        i = self.main_path.index(name)
        return self.main_path[i + 1] if i + 1 < len(self.main_path) else None

    def error_route(self, name: str) -> str | None:
        """Where a failed ``name`` goes: its own ``on_error``, else the workflow's."""
        step = self.steps[name]
        target = step.on_error or self.on_error
        if target == name:  # an error step failing must not loop into itself
            return None
        return target

    def input_model(self, name: str) -> type[BaseModel] | None:
        """The model a payload for step ``name`` must match (step's, else workflow's for step 1)."""
        step = self.steps[name]
        if step.input is not None:
            return step.input
        return self.input if name == self.first_step else None


@dataclass(slots=True)
class Registry:
    """The workflows and handlers of one Management."""

    workflows: dict[str, WorkflowDefinition] = field(default_factory=dict)

    def define(
        self,
        name: str,
        steps: Sequence[str],
        *,
        error_steps: Iterable[str] = (),
        input: type[BaseModel] | None = None,
        sla: timedelta | float | None = None,
        on_error: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> WorkflowDefinition:
        """Create a workflow definition (see :meth:`Management.define_workflow`)."""
        check_name("workflow", name)
        if name in self.workflows:
            raise ConfigError(f"workflow {name!r} is already defined")
        if isinstance(steps, str) or not steps:
            raise ConfigError(
                f"workflow {name!r} needs a non-empty list of step names, got {steps!r}"
            )
        main = tuple(check_name("step", s) for s in steps)
        extra = tuple(check_name("step", s) for s in error_steps)
        seen: set[str] = set()
        for s in main + extra:
            if s in seen:
                raise ConfigError(f"workflow {name!r} lists step {s!r} twice")
            seen.add(s)
        _check_model(input, f"workflow {name!r} input")
        policy = retry or DEFAULT_RETRY
        defs = {s: StepDefinition(workflow=name, name=s, retry=policy) for s in main}
        defs.update(
            {s: StepDefinition(workflow=name, name=s, retry=policy, error_step=True) for s in extra}
        )
        wf = WorkflowDefinition(
            name=name,
            steps=defs,
            main_path=main,
            input=input,
            sla=seconds(sla, f"workflow {name!r} sla"),
            on_error=on_error,
        )
        if on_error is not None:
            wf.step(on_error)
        self.workflows[name] = wf
        return wf

    def workflow(self, name: str) -> WorkflowDefinition:
        """The workflow called ``name``; ConfigError naming the defined ones otherwise."""
        try:
            return self.workflows[name]
        except KeyError:
            known = ", ".join(self.workflows) or "none"
            raise ConfigError(f"unknown workflow {name!r} (defined: {known})") from None

    def resolve(self, qualname: str) -> StepDefinition:
        """Find ``"<workflow>.<step>"``; ConfigError for a malformed or unknown name."""
        if not isinstance(qualname, str) or qualname.count(".") != 1:
            raise ConfigError(f"step name must look like 'workflow.step', got {qualname!r}")
        wf_name, step_name = qualname.split(".")
        return self.workflow(wf_name).step(step_name)

    def register(
        self,
        qualname: str,
        handler: Handler,
        *,
        retry: RetryPolicy | None,
        timeout: timedelta | float | None,
        on_error: str | None,
        input: type[BaseModel] | None,
        sla: timedelta | float | None,
    ) -> StepDefinition:
        """Attach a handler and its options to a step (see :meth:`Management.on_step`)."""
        step = self.resolve(qualname)
        if step.handler is not None:
            raise ConfigError(
                f"step {qualname!r} already has a handler ({step.handler.__qualname__})"
            )
        import inspect

        if not inspect.iscoroutinefunction(handler):
            raise ConfigError(
                f"handler for {qualname!r} must be an 'async def' function, got {handler!r}"
            )
        wf = self.workflow(step.workflow)
        if on_error is not None:
            wf.step(on_error)
            if on_error == step.name:
                raise ConfigError(f"step {qualname!r} cannot be its own on_error step")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry for {qualname!r} must be a RetryPolicy, got {retry!r}")
        _check_model(input, f"step {qualname!r} input")
        step.handler = handler
        step.retry = retry or step.retry
        step.timeout = seconds(timeout, f"timeout of {qualname!r}")
        step.on_error = on_error
        step.input = input
        step.sla = seconds(sla, f"sla of {qualname!r}")
        return step

    def models(self) -> list[type[BaseModel]]:
        """Every ``input=`` model of every workflow and step."""
        found: list[type[BaseModel]] = []
        for wf in self.workflows.values():
            found += [m for m in (wf.input, *(s.input for s in wf.steps.values())) if m]
        return list(dict.fromkeys(found))

    def all_steps(self) -> list[StepDefinition]:
        """Every step of every workflow, in definition order."""
        return [s for wf in self.workflows.values() for s in wf.steps.values()]


def _check_model(model: object, what: str) -> None:
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{what} must be a pydantic model class, got {model!r}")
