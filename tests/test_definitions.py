"""Defining workflows and configuring a Management: mistakes in names, handlers, URLs and
settings are ConfigErrors found before anything runs; every error shares one root."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import MakeMgmt

import hms_bus


def test_unknown_and_malformed_names_are_config_errors() -> None:
    mgmt = hms_bus.init("t")
    mgmt.define_workflow("wf", ["a", "b"])

    async def handler(ctx: hms_bus.StepContext) -> Any:
        return None

    with pytest.raises(hms_bus.ConfigError, match=r"'zzz'.*a, b"):
        mgmt.on_step("wf.zzz")(handler)
    with pytest.raises(hms_bus.ConfigError, match="'other'"):
        mgmt.on_step("other.a")(handler)
    with pytest.raises(hms_bus.ConfigError, match="'nodot'"):
        mgmt.on_step("nodot")(handler)
    with pytest.raises(hms_bus.ConfigError, match=r"'wf\.a\.b'"):
        mgmt.on_step("wf.a.b")(handler)
    for bad in ["has.dot", "", "1abc", "sp ace", "x" * 101]:
        with pytest.raises(hms_bus.ConfigError, match="invalid workflow name"):
            mgmt.define_workflow(bad, ["a"])
        with pytest.raises(hms_bus.ConfigError, match="invalid step name"):
            mgmt.define_workflow("ok", ["a", bad])
    with pytest.raises(hms_bus.ConfigError, match="already defined"):
        mgmt.define_workflow("wf", ["a"])
    with pytest.raises(hms_bus.ConfigError, match="twice"):
        mgmt.define_workflow("dup", ["a", "a"])
    with pytest.raises(hms_bus.ConfigError, match="non-empty"):
        mgmt.define_workflow("empty", [])
    with pytest.raises(hms_bus.ConfigError, match="'missing'"):
        mgmt.define_workflow("errs", ["a"], on_error="missing")
    mgmt.on_step("wf.a")(handler)
    with pytest.raises(hms_bus.ConfigError, match="already has a handler"):
        mgmt.on_step("wf.a")(handler)
    with pytest.raises(hms_bus.ConfigError, match="own on_error"):
        mgmt.on_step("wf.b", on_error="b")(handler)


def test_a_handler_that_is_not_async_is_a_config_error() -> None:
    mgmt = hms_bus.init("t")
    mgmt.define_workflow("wf", ["a"])

    def sync_handler(ctx: hms_bus.StepContext) -> Any:
        return None

    with pytest.raises(hms_bus.ConfigError, match="async def"):
        mgmt.on_step("wf.a")(sync_handler)
    assert mgmt.workflows["wf"].steps["a"].handler is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"bus": "rabbitmq://localhost"}, "memory://, kafka://"),
        ({"store": "mysql://localhost/db"}, "memory://, postgresql://"),
        ({"bus": "localhost:9092"}, "memory://, kafka://"),
    ],
)
def test_unknown_url_scheme_is_a_config_error_naming_the_schemes(
    kwargs: dict[str, str], named: str
) -> None:
    with pytest.raises(hms_bus.ConfigError) as caught:
        hms_bus.init("t", **kwargs)
    assert named in str(caught.value)
    assert next(iter(kwargs.values())) in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"colour": "blue"}, "colour"),
        ({"worker": {"concurency": 3}}, "concurency"),
        ({"roles": ("worker", "chef")}, "chef"),
        ({"worker": {"concurrency": 0}}, "concurrency"),
    ],
)
def test_unknown_or_bad_setting_is_a_config_error(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(hms_bus.ConfigError, match=named):
        hms_bus.init("t", **settings)


def test_errors_share_one_root() -> None:
    for error in (
        hms_bus.ConfigError,
        hms_bus.PayloadValidationError,
        hms_bus.NotFoundError,
        hms_bus.WaitTimeoutError,
        hms_bus.SerializationError,
        hms_bus.TransportError,
        hms_bus.StoreError,
        hms_bus.StepError,
        hms_bus.Fail,
    ):
        assert issubclass(error, hms_bus.HmsBusError)
    assert issubclass(hms_bus.WaitTimeoutError, TimeoutError)
    assert issubclass(hms_bus.NotFoundError, LookupError)
    assert issubclass(hms_bus.Fail, hms_bus.StepError)


async def test_client_api_needs_async_with(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])
    with pytest.raises(hms_bus.HmsBusError, match="async with"):
        await mgmt.start("wf", {})
