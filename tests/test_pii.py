"""Sensitive fields: sealed on the bus and in the store, intact in handlers, masked in output."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import MakeMgmt, read_topic
from cryptography.fernet import Fernet
from pydantic import BaseModel, Field

import hms_bus
from hms_bus import cli
from hms_bus._context import StepLogger
from hms_bus._pii import Sealer, mask_text, sensitive_names

ACCOUNT = "7788990011223"
TAX = "91-8273645"
ROOT = Path(__file__).resolve().parent.parent


class Account(BaseModel):
    routing: str
    number: Annotated[str, hms_bus.Sensitive()] = Field(alias="accountNumber")


class Person(BaseModel):
    name: str
    tax_id: Annotated[str, hms_bus.Sensitive()]
    accounts: list[Account] = []


def test_sensitive_names_come_from_marked_fields_of_nested_models() -> None:
    assert sensitive_names([Person]) == {"tax_id", "number", "accountNumber"}


def test_seal_open_and_mask_round_trip() -> None:
    sealer = Sealer({"tax_id", "accountNumber"})
    data = {"name": "Ada", "tax_id": TAX, "accounts": [{"routing": "1", "accountNumber": ACCOUNT}]}
    sealed = sealer.seal(data)
    text = json.dumps(sealed)
    assert TAX not in text and ACCOUNT not in text
    assert sealed["name"] == "Ada"
    assert sealed["accounts"][0]["accountNumber"]["mask"] == "*********1223"
    assert sealer.seal(sealed) == sealed, "sealing twice changes nothing"
    opened: list[str] = []
    assert sealer.open(sealed, opened) == data
    assert sorted(opened) == sorted([TAX, ACCOUNT])
    masked = sealer.mask(sealed)
    assert masked == {
        "name": "Ada",
        "tax_id": "******3645",
        "accounts": [{"routing": "1", "accountNumber": "*********1223"}],
    }
    assert sealer.mask(data) == masked, "clear values under sensitive names are masked too"


def test_a_token_sealed_with_another_key_is_refused_with_a_clear_error() -> None:
    sealed = Sealer({"tax_id"}, [Fernet.generate_key().decode()]).seal({"tax_id": TAX})
    other = Sealer({"tax_id"}, [Fernet.generate_key().decode()])
    with pytest.raises(hms_bus.HmsBusError, match="HMS_PII__KEYS") as exc:
        other.open(sealed)
    assert exc.value.retriable is False


def test_keys_rotate_the_first_seals_and_every_key_opens() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed_old = Sealer({"tax_id"}, [old]).seal({"tax_id": TAX})
    rotated = Sealer({"tax_id"}, [new, old])
    assert rotated.open(sealed_old) == {"tax_id": TAX}
    assert Sealer({"tax_id"}, [new]).open(rotated.seal({"tax_id": TAX})) == {"tax_id": TAX}
    with pytest.raises(hms_bus.ConfigError, match=r"pii\.keys"):
        Sealer({"tax_id"}, ["not-a-key"])


def test_step_logger_masks_sensitive_values_in_messages_and_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = StepLogger(logging.getLogger("hms_bus.step.t"), {"workflow_id": "w"}, secrets=[TAX])
    with caplog.at_level(logging.INFO, logger="hms_bus.step.t"):
        log.info("checking %s for %s", TAX, "Ada")
        log.warning(f"tax id {TAX} refused")
    assert TAX not in caplog.text
    assert "******3645 for Ada" in caplog.text
    assert mask_text(f"a {ACCOUNT} b", [ACCOUNT]) == "a *********1223 b"


async def test_handlers_get_clear_values_and_nothing_else_does(
    make_mgmt: MakeMgmt, caplog: pytest.LogCaptureFixture
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["check", "pay"], input=Person)
    seen: dict[str, Any] = {}

    @mgmt.on_step("wf.check")
    async def check(ctx: hms_bus.StepContext) -> Any:
        person: Person = ctx.payload
        seen["check"] = person.tax_id
        ctx.log.info("checked %s", person.tax_id)
        return person.model_dump(by_alias=True)

    @mgmt.on_step("wf.pay")
    async def pay(ctx: hms_bus.StepContext) -> Any:
        seen["pay"] = ctx.payload["accounts"][0]["accountNumber"]
        raise hms_bus.Fail(f"account {seen['pay']} is closed (tax id {ctx.payload['tax_id']})")

    person = {
        "name": "Ada",
        "tax_id": TAX,
        "accounts": [{"routing": "1", "accountNumber": ACCOUNT}],
    }
    with caplog.at_level(logging.DEBUG):
        async with mgmt:
            final = await mgmt.run("wf", person, timeout=20)
            history = await mgmt.history(final.workflow_id)
            events = await read_topic(mgmt, mgmt.topics.events)
            letters = await read_topic(mgmt, mgmt.topics.dead_letter)
            steps = await read_topic(mgmt, mgmt.topics.step("wf", "pay"))
            listed = await mgmt.list()

    assert seen == {"check": TAX, "pay": ACCOUNT}, "handlers get the values intact"
    assert final.status == "failed"
    assert final.error is not None and "*********1223" in final.error
    assert final.payload["tax_id"] == "******3645"
    outputs = {
        "status": final.model_dump_json(),
        "history": json.dumps([e.model_dump(mode="json") for e in history]),
        "list": listed.model_dump_json(),
        "logs": caplog.text,
        "bus": b"".join(r.value for r in events + steps).decode(),
        "dead letters": b"".join(r.value for r in letters).decode(),
    }
    for where, text in outputs.items():
        assert TAX not in text and ACCOUNT not in text, where
    assert letters, "the failure was dead-lettered"


@pytest.mark.postgres
def test_cli_status_and_history_show_masks(
    pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    async def run() -> str:
        mgmt = hms_bus.init("pii", store=pg_schema, monitor={"heartbeat_interval": 0})
        mgmt.define_workflow("wf", ["a"], input=Person)

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext) -> Any:
            return {"echo": ctx.payload.tax_id, "tax_id": ctx.payload.tax_id}

        async with mgmt:
            final = await mgmt.run("wf", {"name": "Ada", "tax_id": TAX}, timeout=20)
        return final.workflow_id

    wid = asyncio.run(run())
    for command in (["status", wid], ["status", wid, "--json"], ["history", wid, "--json"]):
        assert cli.main([*command, "--store", pg_schema]) == 0
        out = capsys.readouterr().out
        assert TAX not in out, command
        assert "******3645" in out
