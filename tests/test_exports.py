"""The public surface of ``hms_bus`` is exactly what ``__all__`` lists, and documented."""

from __future__ import annotations

import inspect

import pytest

import hms_bus

PUBLIC = [
    "Child",
    "Complete",
    "ConfigError",
    "Each",
    "ErrorInfo",
    "Fail",
    "HmsBusError",
    "Management",
    "Next",
    "NotFoundError",
    "Parallel",
    "PayloadValidationError",
    "RetryPolicy",
    "Sensitive",
    "SerializationError",
    "Settings",
    "Started",
    "StepContext",
    "StepDefinition",
    "StepError",
    "StepState",
    "StepStatus",
    "StoreError",
    "TransportError",
    "WaitFor",
    "WaitTimeoutError",
    "WorkflowDefinition",
    "WorkflowPage",
    "WorkflowState",
    "WorkflowStatus",
    "__version__",
    "init",
    "parallel",
]


def test_all_is_pinned_and_sorted() -> None:
    assert hms_bus.__all__ == PUBLIC
    assert hms_bus.__all__ == sorted(hms_bus.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(hms_bus, name)
    if name == "__version__":
        assert isinstance(value, str)
        assert value
        return
    # Its own docstring: not one inherited from a base, nor a dataclass's generated one.
    doc = vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__
    assert doc, f"hms_bus.{name} has no docstring"
    assert doc.strip(), f"hms_bus.{name} has an empty docstring"
    assert not doc.startswith(f"{name}("), f"hms_bus.{name} has only a generated docstring"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from hms_bus import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC
