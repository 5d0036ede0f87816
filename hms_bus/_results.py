"""What a step handler may return, and how each form is read.

Handlers return one of:

- :class:`Next` — go to a named step (optionally after a durable ``delay``).
- the seed's dict ``{"nextStep": "creditCheck", "data": {...}}`` (``next_step`` also works,
  as does ``"delay"`` in seconds). It is read so only when its keys are a subset of
  ``nextStep``/``next_step``/``data``/``delay``: a result of its own that happens to carry
  a ``nextStep`` key among others is data like any other dict.
- :class:`Complete` — finish the workflow now with a result.
- :class:`Each` — run a step once per item, concurrently, then go on with the results.
- :class:`WaitFor` — park the workflow until a signal arrives (or a timeout).
- :class:`Child` — run another workflow as a child; its result feeds the next step.
- any other dict, pydantic model or JSON value — the data for the next step in
  definition order.
- ``None`` — pass the step's payload on unchanged to the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from ._errors import ConfigError, SerializationError
from ._events import Directive

__all__ = [
    "Child",
    "Complete",
    "Directive",
    "Each",
    "Next",
    "WaitFor",
    "normalize_result",
    "to_jsonable",
]


@dataclass(frozen=True, slots=True)
class Next:
    """Route the workflow to ``step`` with ``data`` as its payload.

    Args:
        step: the name of a step of the same workflow.
        data: the next step's payload; None passes the current payload on.
        delay: run the step only after this long (a durable timer that survives
            restarts); a ``timedelta`` or seconds.
    """

    step: str
    data: Any = None
    delay: timedelta | float | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    """Finish the workflow now as ``completed`` with ``result``, skipping any later steps."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Each:
    """Run ``step`` once per item of ``items``, concurrently (a dynamic fan-out).

    Each item is the payload of one execution of ``step``; once every one has
    succeeded, ``then`` (a step or group; by default the next entry after the step that
    returned this) gets the list of their results, in item order. One that fails after
    its retries fails the fan-out, and the error path of ``step`` (or the workflow's)
    applies. At most ``coordinator.max_fanout`` items (default 1,000).

    Args:
        step: a step of the same workflow (not a parallel branch); it must return plain
            data.
        items: the payloads, a list (or any iterable) of JSON values or models.
        then: where the results go.
    """

    step: str
    items: Any
    then: str | None = None


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Park the workflow until the signal ``signal`` arrives (``mgmt.signal``).

    The workflow stays ``running`` and this step shows as waiting for the signal. When
    it arrives, ``next`` (by default the next entry in order) runs with ``data`` as its
    payload (by default this step's payload) and the signal's data in ``ctx.signal``.
    A signal sent before the workflow waits for it is kept until it does.

    Args:
        signal: the signal's name.
        next: where to go when it arrives.
        data: the next step's payload.
        timeout: give up waiting after this long (a durable timer; timedelta or seconds).
        on_timeout: the step to run on timeout, with ``ctx.error`` naming the signal; the
            workflow fails on timeout when this is not given.
    """

    signal: str
    next: str | None = None
    data: Any = None
    timeout: timedelta | float | None = None
    on_timeout: str | None = None


@dataclass(frozen=True, slots=True)
class Child:
    """Start the workflow ``workflow`` with ``payload`` as a child, and wait for it.

    The child is a workflow of its own (listed, queryable) whose id derives from this
    step execution, so a retry or redelivery never starts two. Once it completes,
    ``next`` (by default the next entry in order) runs with its result as payload; if it
    fails or is cancelled this step fails, without retry, and the error path applies.
    Cancelling this workflow cancels the child.
    """

    workflow: str
    payload: Any = None
    next: str | None = None


def to_jsonable(value: Any) -> Any:
    """Turn pydantic models (recursively) into JSON-ready values; leave the rest alone.

    Models are dumped by alias (their wire names), which their validation always accepts,
    so a payload validated at ``start`` validates again in the worker.
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def _seconds(delay: timedelta | float | int | None) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ConfigError(f"delay must be a timedelta or seconds, got {delay!r}")
    if seconds < 0:
        raise ConfigError(f"delay must not be negative, got {seconds}s")
    return seconds


_SEED_KEYS = frozenset({"nextStep", "next_step", "data", "delay"})


def _is_seed_form(value: dict[Any, Any]) -> bool:
    """The seed's ``{"nextStep": …, "data": …}``: a routing key, and no key but these."""
    return ("nextStep" in value or "next_step" in value) and value.keys() <= _SEED_KEYS


def normalize_result(value: Any, payload: Any) -> Directive:
    """Read a handler's return value into a :class:`Directive`.

    Args:
        value: what the handler returned.
        payload: the step's own payload (JSON form), passed on when ``value`` is None.

    Raises:
        ConfigError: for a malformed ``Next``/``nextStep`` (bad step name or delay).
        SerializationError: for data that is not a JSON value or pydantic model.
    """
    if value is None:
        return Directive(kind="default", data=payload)
    if isinstance(value, Next):
        if not isinstance(value.step, str) or not value.step:
            raise ConfigError(f"Next() needs a step name, got {value.step!r}")
        data = payload if value.data is None else to_jsonable(value.data)
        return Directive(kind="next", step=value.step, data=data, delay=_seconds(value.delay))
    if isinstance(value, Complete):
        return Directive(kind="complete", data=to_jsonable(value.result))
    if isinstance(value, Each):
        return _each(value)
    if isinstance(value, WaitFor):
        return _wait_for(value, payload)
    if isinstance(value, Child):
        if not isinstance(value.workflow, str) or not value.workflow:
            raise ConfigError(f"Child() needs a workflow name, got {value.workflow!r}")
        _step_name("Child(next=)", value.next)
        return Directive(
            kind="child", target=value.workflow, data=to_jsonable(value.payload), step=value.next
        )
    if isinstance(value, dict) and _is_seed_form(value):
        step = value.get("nextStep", value.get("next_step"))
        if step is None:  # {"nextStep": None, "data": ...} ends the workflow
            return Directive(kind="complete", data=to_jsonable(value.get("data")))
        if not isinstance(step, str) or not step:
            raise ConfigError(f"nextStep must be a step name, got {step!r}")
        data = value.get("data")
        return Directive(
            kind="next",
            step=step,
            data=payload if data is None else to_jsonable(data),
            delay=_seconds(value.get("delay")),
        )
    if isinstance(value, (BaseModel, dict, list, tuple, str, int, float, bool)):
        return Directive(kind="default", data=to_jsonable(value))
    raise SerializationError(
        f"a step handler returned {type(value).__name__}, which is not a JSON value, a "
        "pydantic model, Next, Complete, Each, WaitFor, Child or None"
    )


def _step_name(what: str, name: object) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"{what} must be a step name, got {name!r}")


def _each(value: Each) -> Directive:
    if not isinstance(value.step, str) or not value.step:
        raise ConfigError(f"Each() needs a step name, got {value.step!r}")
    _step_name("Each(then=)", value.then)
    items = value.items
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise ConfigError(
            f"Each() needs a list of items, got {type(items).__name__}: one payload per item"
        )
    listed = [to_jsonable(item) for item in items]
    return Directive(kind="each", target=value.step, items=listed, step=value.then)


def _wait_for(value: WaitFor, payload: Any) -> Directive:
    if not isinstance(value.signal, str) or not value.signal or len(value.signal) > 100:
        raise ConfigError(
            f"WaitFor() needs a signal name (1 to 100 characters), got {value.signal!r}"
        )
    _step_name("WaitFor(next=)", value.next)
    _step_name("WaitFor(on_timeout=)", value.on_timeout)
    timeout = _seconds(value.timeout)
    if timeout == 0:
        raise ConfigError("WaitFor(timeout=) must be positive")
    return Directive(
        kind="wait",
        signal=value.signal,
        step=value.next,
        data=payload if value.data is None else to_jsonable(value.data),
        timeout=timeout,
        on_timeout=value.on_timeout,
    )
