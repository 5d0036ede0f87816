"""What a step handler may return, and how each form is read.

Handlers return one of:

- :class:`Next` — go to a named step (optionally after a durable ``delay``).
- the seed's dict ``{"nextStep": "creditCheck", "data": {...}}`` (``next_step`` also works,
  as does ``"delay"`` in seconds). It is read so only when its keys are a subset of
  ``nextStep``/``next_step``/``data``/``delay``: a result of its own that happens to carry
  a ``nextStep`` key among others is data like any other dict.
- :class:`Complete` — finish the workflow now with a result.
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

__all__ = ["Complete", "Directive", "Next", "normalize_result", "to_jsonable"]


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
        "pydantic model, Next, Complete or None"
    )
