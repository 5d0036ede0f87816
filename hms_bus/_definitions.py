"""Workflow and step definitions, kept per :class:`~hms_bus.Management` (never globally).

A workflow's main path is a list of entries run in order: a step name, or a
:class:`Parallel` group whose branch steps run side by side and join before the next
entry. Each definition has a version (by default a hash of its shape): an instance runs
by the version it started with, and a Management may keep several versions of one
workflow so that instances started before a change of steps finish on the old shape.
"""

from __future__ import annotations

import hashlib
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
    from ._schedules import Schedule

__all__ = [
    "Handler",
    "Parallel",
    "Registry",
    "StepDefinition",
    "WorkflowDefinition",
    "parallel",
    "validate_payload",
]

Handler = Callable[["StepContext"], Awaitable[Any]]

# Names become Kafka topic names (``<workflow>.<step>``), so they may not hold dots.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
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


@dataclass(frozen=True, slots=True)
class Parallel:
    """Branch steps that run concurrently, all with the same payload; the entry after
    the group runs once every branch has succeeded, with ``{branch: result}``.

    Make one with :func:`hms_bus.parallel`. ``name`` identifies the group: ``Next`` may
    route to it, and diagrams and statuses show it.
    """

    branches: tuple[str, ...]
    name: str


def parallel(*steps: str, name: str | None = None) -> Parallel:
    """A group of steps that run in parallel, for a workflow's step list.

    ``define_workflow("grantApproval", ["validateApp", parallel("creditCheck",
    "eligibilityCheck"), "finalize"])`` runs both checks at once after ``validateApp``;
    ``finalize`` then gets ``{"creditCheck": …, "eligibilityCheck": …}``. A branch that
    fails (after its retries) fails the group: its error path applies and the later
    steps do not run.

    Args:
        steps: the branch steps, at least two, each a new step name.
        name: the group's name (default: the branch names joined by ``+``).

    Raises:
        ConfigError: fewer than two branches, a bad or repeated name.
    """
    if len(steps) == 1 and isinstance(steps[0], (list, tuple)):
        steps = tuple(steps[0])
    branches = tuple(check_name("step", s) for s in steps)
    if len(branches) < 2:
        raise ConfigError(f"parallel() needs at least two branch steps, got {list(branches)!r}")
    if len(set(branches)) != len(branches):
        raise ConfigError(f"parallel() lists a branch twice: {list(branches)!r}")
    return Parallel(branches, check_name("group", name) if name is not None else "+".join(branches))


@dataclass(slots=True)
class WorkflowDefinition:
    """A named workflow: its main path of steps, its error-path steps and defaults.

    Attributes:
        name: the workflow's name.
        steps: every step by name (main path first, in order, then error steps).
        main_path: the entries run in order when handlers return plain data: step
            names and the names of :class:`Parallel` groups.
        input: pydantic model the start payload must match.
        sla: seconds after start by which the workflow should be terminal.
        on_error: default error-path step for steps that set none.
        groups: the parallel groups by name.
        version: the definition's version; instances run by the version they started with.
    """

    name: str
    steps: dict[str, StepDefinition]
    main_path: tuple[str, ...]
    input: type[BaseModel] | None = None
    sla: float | None = None
    on_error: str | None = None
    groups: dict[str, Parallel] = field(default_factory=dict)
    version: str = ""

    @property
    def first_step(self) -> str:
        """The first entry of the main path (a step, or a parallel group's name)."""
        return self.main_path[0]

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``; ConfigError naming the known steps otherwise."""
        try:
            return self.steps[name]
        except KeyError:
            raise ConfigError(
                f"workflow {self.name!r} has no step {name!r} (its steps: {', '.join(self.steps)})"
            ) from None

    def has_target(self, name: str) -> bool:
        """True when ``Next(name)`` may route there: a step that is not a branch, or a
        parallel group."""
        return name in self.groups or (name in self.steps and self.group_of(name) is None)

    def group_of(self, step: str) -> Parallel | None:
        """The parallel group ``step`` is a branch of, if any."""
        if not self.groups:
            return None
        for group in self.groups.values():
            if step in group.branches:
                return group
        return None

    def next_after(self, name: str) -> str | None:
        """The main-path entry after ``name`` (a step, a group, or a branch's group);
        None after the last one or an error step."""
        step = self.steps.get(name)
        if step is not None:
            if step.error_step:
                return None
            group = self.group_of(name) if self.groups else None
            if group is not None:
                name = group.name
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
        """The model a payload for step ``name`` must match: the step's, else the
        workflow's for the first entry (each branch of a first parallel group)."""
        step = self.steps[name]
        if step.input is not None:
            return step.input
        first = self.first_step
        if name == first or name in (self.groups[first].branches if first in self.groups else ()):
            return self.input
        return None

    def start_model(self) -> type[BaseModel] | None:
        """The model a start payload must match: the first step's (or, when the first
        entry is a parallel group, the workflow's)."""
        first = self.first_step
        return self.input if first in self.groups else self.input_model(first)

    def shape(self) -> list[Any]:
        """The main path as plain data: step names, and a group as its branch list."""
        return [list(self.groups[e].branches) if e in self.groups else e for e in self.main_path]


def _version_of(main: list[Any], error_steps: tuple[str, ...]) -> str:
    """The default version: a short hash of the definition's shape."""
    canon = repr((main, list(error_steps))).encode()
    return hashlib.sha256(canon).hexdigest()[:12]


@dataclass(slots=True)
class Registry:
    """The workflows and handlers of one Management.

    ``workflows`` holds the current (last defined) version of each workflow, the one new
    instances start on; ``versions`` every version, by name then version.
    """

    workflows: dict[str, WorkflowDefinition] = field(default_factory=dict)
    versions: dict[str, dict[str, WorkflowDefinition]] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)

    def define(
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
        """Create a workflow definition (see :meth:`Management.define_workflow`)."""
        check_name("workflow", name)
        if isinstance(steps, str) or not steps:
            raise ConfigError(
                f"workflow {name!r} needs a non-empty list of step names, got {steps!r}"
            )
        main: list[str] = []
        groups: dict[str, Parallel] = {}
        flat: list[str] = []
        for entry in steps:
            if isinstance(entry, Parallel):
                if entry.name in groups:
                    raise ConfigError(f"workflow {name!r} has two groups named {entry.name!r}")
                groups[entry.name] = entry
                main.append(entry.name)
                flat.extend(entry.branches)
            else:
                main.append(check_name("step", entry))
                flat.append(entry)
        extra = tuple(check_name("step", s) for s in error_steps)
        seen: set[str] = set()
        for s in (*flat, *extra):
            if s in seen:
                raise ConfigError(f"workflow {name!r} lists step {s!r} twice")
            seen.add(s)
        for g in groups:
            if g in seen:
                raise ConfigError(f"workflow {name!r} has a step and a group named {g!r}")
        _check_model(input, f"workflow {name!r} input")
        shape = [list(groups[e].branches) if e in groups else e for e in main]
        if version is not None and (not isinstance(version, str) or not _VERSION.match(version)):
            raise ConfigError(
                f"invalid version {version!r} of workflow {name!r}: use letters, digits, "
                "'.', '_' or '-' (at most 40 characters)"
            )
        known = self.versions.get(name, {})
        if known and version is None:
            raise ConfigError(
                f"workflow {name!r} is already defined; to define a new version of it, pass "
                f"version= (defined: {', '.join(known)})"
            )
        ver = version or _version_of(shape, extra)
        if ver in known:
            raise ConfigError(f"workflow {name!r} version {ver!r} is already defined")
        policy = retry or DEFAULT_RETRY
        defs = {s: StepDefinition(workflow=name, name=s, retry=policy) for s in flat}
        defs.update(
            {s: StepDefinition(workflow=name, name=s, retry=policy, error_step=True) for s in extra}
        )
        # A step another version has already given a handler keeps it (and its options).
        for other in known.values():
            for s, d in defs.items():
                before = other.steps.get(s)
                if before is not None and before.handler is not None:
                    defs[s] = _copy_options(before, d)
        wf = WorkflowDefinition(
            name=name,
            steps=defs,
            main_path=tuple(main),
            input=input,
            sla=seconds(sla, f"workflow {name!r} sla"),
            on_error=on_error,
            groups=groups,
            version=ver,
        )
        if on_error is not None:
            wf.step(on_error)
            if wf.group_of(on_error) is not None:
                raise ConfigError(f"on_error step {on_error!r} cannot be a parallel branch")
        self.versions.setdefault(name, {})[ver] = wf
        self.workflows[name] = wf
        return wf

    def workflow(self, name: str) -> WorkflowDefinition:
        """The workflow called ``name``; ConfigError naming the defined ones otherwise."""
        try:
            return self.workflows[name]
        except KeyError:
            known = ", ".join(self.workflows) or "none"
            raise ConfigError(f"unknown workflow {name!r} (defined: {known})") from None

    def version(self, name: str, version: str | None) -> WorkflowDefinition | None:
        """The definition of ``name`` at ``version`` (the current one when ``version`` is
        None or empty), or None when this process does not define it."""
        if not version:
            return self.workflows.get(name)
        return self.versions.get(name, {}).get(version)

    def definitions(self) -> list[WorkflowDefinition]:
        """Every version of every workflow."""
        return [wf for versions in self.versions.values() for wf in versions.values()]

    def resolve(self, qualname: str) -> StepDefinition:
        """Find ``"<workflow>.<step>"`` (in the newest version that has the step);
        ConfigError for a malformed or unknown name."""
        if not isinstance(qualname, str) or qualname.count(".") != 1:
            raise ConfigError(f"step name must look like 'workflow.step', got {qualname!r}")
        wf_name, step_name = qualname.split(".")
        current = self.workflow(wf_name)
        for wf in reversed(list(self.versions.get(wf_name, {}).values())):
            if step_name in wf.steps:
                return wf.steps[step_name]
        return current.step(step_name)

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
        """Attach a handler and its options to a step (see :meth:`Management.on_step`),
        in every version of the workflow that has the step."""
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
        holders = [wf for wf in self.versions[step.workflow].values() if step.name in wf.steps]
        if on_error is not None:
            for wf in holders:
                wf.step(on_error)
                if wf.group_of(on_error) is not None:
                    raise ConfigError(f"on_error step {on_error!r} cannot be a parallel branch")
            if on_error == step.name:
                raise ConfigError(f"step {qualname!r} cannot be its own on_error step")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry for {qualname!r} must be a RetryPolicy, got {retry!r}")
        _check_model(input, f"step {qualname!r} input")
        timeout_s = seconds(timeout, f"timeout of {qualname!r}")
        sla_s = seconds(sla, f"sla of {qualname!r}")
        for wf in holders:
            d = wf.steps[step.name]
            d.handler = handler
            d.retry = retry or d.retry
            d.timeout = timeout_s
            d.on_error = on_error
            d.input = input
            d.sla = sla_s
        return step

    def models(self) -> list[type[BaseModel]]:
        """Every ``input=`` model of every workflow and step."""
        found: list[type[BaseModel]] = []
        for wf in self.definitions():
            found += [m for m in (wf.input, *(s.input for s in wf.steps.values())) if m]
        return list(dict.fromkeys(found))

    def all_steps(self) -> list[StepDefinition]:
        """Every step of every workflow (of any version, once by name), in definition
        order."""
        seen: dict[str, StepDefinition] = {}
        for wf in self.definitions():
            for s in wf.steps.values():
                seen.setdefault(s.qualname, s)
        return list(seen.values())


def _check_model(model: object, what: str) -> None:
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{what} must be a pydantic model class, got {model!r}")


def _copy_options(source: StepDefinition, into: StepDefinition) -> StepDefinition:
    """``into`` with the handler and options registered on ``source`` (another version's
    definition of the same step)."""
    into.handler = source.handler
    into.retry = source.retry
    into.timeout = source.timeout
    into.on_error = source.on_error
    into.input = source.input
    into.sla = source.sla
    return into
