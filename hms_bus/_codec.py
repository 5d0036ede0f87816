"""The wire codec: envelopes to orjson bytes and back, and records as JSON Lines.

Every message is encoded by :func:`encode` (or :func:`encode_line`) and decoded by the
``decode_*`` function of its topic, which refuses an envelope version newer than this
one (:data:`~hms_bus._envelope.ENVELOPE_VERSION`) and raises
:class:`~hms_bus.SerializationError` for what is not JSON or not a valid message.

Records on ``hms.coordinator`` and ``hms.events`` hold one or more events of one
workflow as JSON Lines: each event encoded by :func:`encode_line`, ending in a newline.
A record without a final newline is a single event from a writer of the earlier event
flow, in which every record held exactly one event (:func:`split_lines`).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ._envelope import ENVELOPE_VERSION
from ._errors import SerializationError
from ._events import StepCommand, WorkflowEvent
from ._process_messages import Heartbeat, ProcessDown

__all__ = [
    "decode_command",
    "decode_event",
    "decode_heartbeat",
    "encode",
    "encode_line",
    "is_legacy",
    "original_for_dead_letter",
    "pack_lines",
    "split_lines",
]

_EVENT: TypeAdapter[Any] = TypeAdapter(WorkflowEvent)
_HEARTBEAT: TypeAdapter[Any] = TypeAdapter(
    Annotated[Heartbeat | ProcessDown, Field(discriminator="type")]
)


def _dump(message: BaseModel) -> dict[str, Any]:
    # ``model_dump()`` itself, by the model's serializer, without the keyword arguments
    # ``model_dump`` passes on (all at their defaults); every event is encoded once.
    dumped: dict[str, Any] = message.__pydantic_serializer__.to_python(message)
    return dumped


def encode(message: BaseModel) -> bytes:
    """Encode an envelope as JSON bytes (orjson)."""
    try:
        return orjson.dumps(_dump(message), option=orjson.OPT_UTC_Z)
    except TypeError as exc:
        raise SerializationError(f"cannot encode {type(message).__name__}: {exc}") from exc


def encode_line(message: BaseModel) -> bytes:
    """Encode an envelope as one JSON line (with its final newline), for the records of
    ``hms.coordinator`` and ``hms.events``; orjson never writes a newline inside."""
    try:
        return orjson.dumps(_dump(message), option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)
    except TypeError as exc:
        raise SerializationError(f"cannot encode {type(message).__name__}: {exc}") from exc


def split_lines(value: bytes) -> list[bytes]:
    """The events of one record, each as the bytes of its JSON document.

    A record that ends in a newline is JSON Lines; one that does not is a single event
    (written by the earlier event flow, or not by hms-bus at all).
    """
    if value.endswith(b"\n"):
        return [line for line in value.split(b"\n") if line]
    return [value]


def is_legacy(value: bytes) -> bool:
    """True for a record of the earlier event flow: one event, no final newline."""
    return not value.endswith(b"\n")


def pack_lines(lines: list[bytes], limit: int) -> list[bytes]:
    """Join JSON lines (each without its newline) into as few records as fit ``limit``
    bytes each, keeping their order. A line over the limit on its own goes alone (the
    bus refuses it, which the caller reports)."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        n = len(line) + 1
        if chunk and size + n > limit:
            out.append(b"\n".join(chunk) + b"\n")
            chunk, size = [], 0
        chunk.append(line)
        size += n
    if chunk:
        out.append(b"\n".join(chunk) + b"\n")
    return out


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"message is not JSON: {exc}") from exc


def _check_version(obj: Any) -> None:
    if isinstance(obj, dict):
        v = obj.get("v")
        if isinstance(v, int) and v > ENVELOPE_VERSION:
            raise SerializationError(
                f"envelope version {v} is newer than this hms-bus understands ({ENVELOPE_VERSION})"
            )


def _validate(adapter: TypeAdapter[Any], obj: Any, what: str) -> Any:
    _check_version(obj)
    try:
        # The adapter's validator itself: the same validation, without the keyword
        # arguments ``TypeAdapter.validate_python`` passes on (a third of the time it
        # takes for a small event, and every role decodes every event it reads).
        return adapter.validator.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise SerializationError(
            f"not a valid {what}: {loc}: {first['msg']} ({exc.error_count()} error(s))"
        ) from exc


def decode_event(data: bytes, only: Container[str] | None = None) -> Any:
    """Decode one event (one line of a record of ``hms.events`` or ``hms.coordinator``)
    into its workflow event model.

    With ``only``, an event whose ``type`` is not in it is returned as None without
    being validated: roles that act on a few types skip the cost of the rest, and
    ``only=EVENT_TYPES`` skips the types of a newer version.
    """
    obj = _loads(data)
    if only is not None and isinstance(obj, dict) and obj.get("type") not in only:
        return None
    return _validate(_EVENT, obj, "workflow event")


def decode_command(data: bytes) -> StepCommand:
    """Decode bytes from a step topic into a :class:`StepCommand`."""
    obj = _loads(data)
    _check_version(obj)
    try:
        # The model's validator itself, as in :func:`_validate`.
        command: StepCommand = StepCommand.__pydantic_validator__.validate_python(obj)
        return command
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise SerializationError(f"not a valid step command: {loc}: {first['msg']}") from exc


def decode_heartbeat(data: bytes) -> Heartbeat | ProcessDown:
    """Decode bytes from ``hms.heartbeats``."""
    result: Heartbeat | ProcessDown = _validate(_HEARTBEAT, _loads(data), "heartbeat")
    return result


def original_for_dead_letter(data: bytes) -> Any:
    """The message as JSON if it parses, else as text (invalid UTF-8 replaced)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", errors="replace")
