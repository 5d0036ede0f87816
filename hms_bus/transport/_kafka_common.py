"""What the Kafka transport's producer and consumer share."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import TransportError

__all__ = ["RECORD_OVERHEAD", "error", "headers_of"]

RECORD_OVERHEAD = 512  # bytes of batch and record framing allowed on top of the limit


def error(what: str, exc: BaseException, retriable: bool = True) -> TransportError:
    """A :class:`TransportError` for an aiokafka error, naming it."""
    return TransportError(f"{what}: {type(exc).__name__}: {exc}", retriable=retriable)


def headers_of(headers: Sequence[tuple[str, bytes | None]]) -> tuple[tuple[str, bytes], ...]:
    """aiokafka's record headers as ours (a missing value is empty)."""
    return tuple((k, v if v is not None else b"") for k, v in headers)
