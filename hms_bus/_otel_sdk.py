"""What the OpenTelemetry API and SDK do not publish: the one place hms-bus reads their
internals.

Two questions have no public answer: whether a meter provider is the API's stand-in for an
unset global one, and whether a ``ParentBased`` sampler drops every child of an unsampled
parent. Each function below was read against the versions in
:data:`SDK_INTERNALS_CHECKED`, answers as if it knew nothing (hms-bus then takes the
general path) when what it reads has gone, and has a test in ``tests/test_telemetry.py``
that fails, naming the function, when the installed API or SDK is outside that range or no
longer looks as it was read.
"""

from __future__ import annotations

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

__all__ = [
    "SDK_INTERNALS_CHECKED",
    "is_noop",
    "sdk_drops_unsampled_children",
    "sdk_is_unset_global_meter_provider",
]


def is_noop(provider: object) -> bool:
    """True for a provider that records nothing: a no-op one, or the API's stand-in
    for a global provider not set yet."""
    if isinstance(provider, otel_trace.TracerProvider):
        return isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider)
    return isinstance(
        provider, otel_metrics.NoOpMeterProvider
    ) or sdk_is_unset_global_meter_provider(provider)


SDK_INTERNALS_CHECKED: tuple[str, str] = ("1.43", "1.45")
"""The first and last ``opentelemetry-api``/``-sdk`` minor versions that the
``sdk_*`` functions of this module were checked against."""


def sdk_is_unset_global_meter_provider(provider: object) -> bool:
    """True for the API's stand-in global meter provider (none has been set yet).

    The API publishes that stand-in for traces (``ProxyTracerProvider``) but keeps the
    one for metrics private (``opentelemetry.metrics._internal._ProxyMeterProvider``).
    Should it go, only an SDK ``MeterProvider`` counts as one that records.
    """
    from opentelemetry.metrics import _internal

    proxy = getattr(_internal, "_ProxyMeterProvider", None)
    if isinstance(proxy, type):
        return isinstance(provider, proxy)
    from opentelemetry.sdk.metrics import MeterProvider

    return isinstance(provider, otel_metrics.MeterProvider) and not isinstance(
        provider, MeterProvider
    )


def sdk_drops_unsampled_children(sampler: object) -> bool:
    """True when ``sampler`` never records a span whose parent (remote or local) was not
    sampled, so that hms-bus may skip asking for such a span at all.

    That is a ``ParentBased`` sampler (the SDK's default, and what ``OTEL_TRACES_SAMPLER``
    names but ``always_on``, ``always_off`` and ``traceidratio`` give) whose delegates
    for unsampled parents are ``ALWAYS_OFF``. ``ParentBased`` keeps its delegates in
    private attributes (``_remote_parent_not_sampled``, ``_local_parent_not_sampled``).
    Should they go, the answer is False: the SDK decides each span, as usual.
    """
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, StaticSampler

    if not isinstance(sampler, ParentBased):
        return False
    for name in ("_remote_parent_not_sampled", "_local_parent_not_sampled"):
        delegate = getattr(sampler, name, None)
        always_off = delegate is ALWAYS_OFF or (
            type(delegate) is StaticSampler and delegate.get_description() == "AlwaysOffSampler"
        )
        if not always_off:
            return False
    return True
