"""W3C trace context in message headers: the header reader, and a fast path for a lone
``traceparent``.

:class:`~hms_bus._telemetry.Telemetry` reads and writes trace context through the global
propagator (so ``OTEL_PROPAGATORS`` is honoured). While that propagator behaves exactly as
the W3C Trace Context one (asked once per propagator, through its public API, by
:func:`w3c_only`), a record whose only trace header is ``traceparent`` is read by
:func:`fast_extract` instead, which skips the propagator machinery on every record. Headers
that are missing or do not parse start a new trace; they never fail a step.
"""

from __future__ import annotations

import logging
import re

from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator

__all__ = ["GETTER", "ROOT", "SLOW", "Headers", "fast_extract", "w3c_only"]

log = logging.getLogger("hms_bus.telemetry")

Headers = tuple[tuple[str, bytes], ...]


class HeaderGetter(Getter[Headers]):
    """Reads W3C trace context from Kafka-style header tuples, tolerating garbage."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [
            v.decode("utf-8", errors="replace")
            for k, v in carrier
            if k.lower() == key and isinstance(v, bytes | bytearray)
        ]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


GETTER = HeaderGetter()


ROOT = Context()
SLOW = object()
_checked: tuple[object, bool] = (None, False)


def w3c_only() -> bool:
    """True while the global propagator reads and writes trace context as the default W3C
    propagators (tracecontext, and baggage) do, so that ``Telemetry.extract`` and
    ``inject`` may read and write ``traceparent`` directly. Asked once per propagator."""
    global _checked
    textmap = propagate.get_global_textmap()
    if _checked[0] is not textmap:
        _checked = (textmap, behaves_as_w3c(textmap))
    return _checked[1]


_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})


def behaves_as_w3c(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` uses only the W3C headers, and writes and reads a lone
    ``traceparent`` exactly as the W3C Trace Context propagator does.

    Asked through the propagator's public API (its ``fields``, and a probe of
    ``inject`` and ``extract`` with a sampled and an unsampled context), so it holds
    for the default propagators, ``OTEL_PROPAGATORS=tracecontext[,baggage]``, and any
    composite of the same; anything else (B3, Jaeger, a custom one) takes the slow path.
    """
    try:
        if not set(textmap.fields) <= _W3C_FIELDS:
            return False
        for flags in (otel_trace.TraceFlags.DEFAULT, otel_trace.TraceFlags.SAMPLED):
            sc = otel_trace.SpanContext(
                0x0AF7651916CD43DD8448EB211C80319C,
                0xB7AD6B7169203331,
                is_remote=True,
                trace_flags=otel_trace.TraceFlags(flags),
            )
            value = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
            carrier: dict[str, str] = {}
            span = otel_trace.NonRecordingSpan(sc)
            textmap.inject(carrier, context=otel_trace.set_span_in_context(span, ROOT))
            if carrier != {"traceparent": value}:
                return False
            read = textmap.extract({"traceparent": value}, context=ROOT)
            got = otel_trace.get_current_span(read).get_span_context()
            if (got.trace_id, got.span_id, got.trace_flags, got.is_remote, got.trace_state) != (
                sc.trace_id,
                sc.span_id,
                sc.trace_flags,
                True,
                sc.trace_state,
            ):
                return False
    except Exception as exc:  # a propagator that cannot answer is not one to shortcut
        log.debug("propagator %r takes the full path: %s", textmap, exc)
        return False
    return True


# version-format (W3C Trace Context): "00" is exactly this; later versions may append
# "-…"; "ff" is invalid.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def fast_extract(headers: Headers) -> object:
    """A context from a lone ``traceparent`` header; None when it is invalid (a new
    trace, as the W3C propagator decides); ``SLOW`` when other trace headers
    (``tracestate``, ``baggage``) need the full propagator."""
    value: bytes | None = None
    for k, v in headers:
        key = k.lower()
        if key == "traceparent":
            if value is not None:
                return None  # two traceparents: invalid
            value = v
        elif key in ("tracestate", "baggage"):
            return SLOW
    if not isinstance(value, bytes | bytearray):
        return None
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    flags = otel_trace.TraceFlags(int(flags_hex, 16))
    sc = otel_trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(sc), ROOT)
