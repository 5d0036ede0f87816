"""``ManagementLayer.process_workflow`` end to end: embedded, and over HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from conftest import read_topic
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reference_server import reference_server

import hms_bus
from step_handlers.management_layer import ManagementLayer
from step_handlers.services import (
    HttpApplicantValidator,
    HttpPaymentGateway,
    SimulatedApplicantValidator,
    SimulatedPaymentGateway,
)

ROUTING = "011000015"
QUICK = {"scheduler": {"poll_interval": 0.02}, "monitor": {"heartbeat_interval": 0}}
NO_WAIT = hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)


def request(
    application_id: str = "GR-2026-0100",
    *,
    name: str = "Acme Bakery LLC",
    tax_id: str = "12-3456789",
    account: str = "4401923377",
    routing: str = ROUTING,
) -> dict[str, Any]:
    return {
        "applicationId": application_id,
        "applicant": {"name": name, "taxId": tax_id},
        "payment": {
            "amount": "2500.00",
            "bankAccount": {"routingNumber": routing, "accountNumber": account},
            "memo": f"Grant {application_id}",
        },
    }


def layer(**kw: Any) -> ManagementLayer:
    mgmt = kw.pop("mgmt", None) or hms_bus.init("payments-test", **QUICK)
    kw.setdefault("status_check_delay", 0.2)
    kw.setdefault("retry", NO_WAIT)
    kw.setdefault("timeout", 30)
    return ManagementLayer(mgmt, **kw)


async def test_a_valid_payment_completes_and_its_status_check_runs_later() -> None:
    gateway = SimulatedPaymentGateway()
    async with layer(validator=SimulatedApplicantValidator(), gateway=gateway) as ml:
        answer = await ml.aprocess_workflow(request())
        assert answer["status"] == "completed"
        assert answer["payment_id"].startswith("PAY-")
        details = answer["details"]
        assert details["payment_status"] == "pending"
        assert details["payee"] == {"routingNumber": ROUTING, "accountNumber": "******3377"}
        assert details["status_check_due"] is not None
        final = await ml.mgmt.wait(details["workflow_id"], timeout=10)

    assert final.status == "completed"
    assert [s.step for s in final.steps] == [
        "validateApplicant",
        "initiateTransfer",
        "checkPaymentStatus",
    ]
    check = final.step("checkPaymentStatus")
    transfer = final.step("initiateTransfer")
    assert check is not None and transfer is not None
    assert check.started_at and transfer.finished_at
    assert (check.started_at - transfer.finished_at).total_seconds() >= 0.2, "a delayed step"
    assert final.result["paymentStatus"] == "settled"
    assert final.result["paymentId"] == answer["payment_id"]
    assert len(gateway.book.transfers) == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "  "}, "validation_failed"),
        ({"tax_id": "00-1234567"}, "validation_failed"),
        ({"account": "5566770000"}, "payment_failed"),  # HMS-ACH: account closed
        ({"routing": "123456789"}, "payment_failed"),  # HMS-ACH: bad ABA checksum
    ],
)
async def test_refusals_answer_validation_failed_or_payment_failed(
    kw: dict[str, Any], message: str
) -> None:
    async with layer(
        validator=SimulatedApplicantValidator(), gateway=SimulatedPaymentGateway()
    ) as ml:
        answer = await ml.aprocess_workflow(request(**kw))
    assert answer["status"] == "error"
    assert answer["message"] == message
    assert message in answer["reason"]


async def test_a_malformed_request_is_refused_at_start() -> None:
    async with layer(
        validator=SimulatedApplicantValidator(), gateway=SimulatedPaymentGateway()
    ) as ml:
        bad = request()
        del bad["payment"]["bankAccount"]
        answer = await ml.aprocess_workflow(bad)
        listed = await ml.mgmt.list()
    assert answer["status"] == "error"
    assert answer["message"] == "validation_failed"
    assert "payment.bankAccount" in answer["reason"]
    assert listed.items == [], "nothing was started"


async def test_paying_an_application_twice_sends_one_transfer() -> None:
    gateway = SimulatedPaymentGateway()
    async with layer(validator=SimulatedApplicantValidator(), gateway=gateway) as ml:
        first = await ml.aprocess_workflow(request("GR-2026-0200"))
        again = await ml.aprocess_workflow(request("GR-2026-0200"))
        # A refused attempt may be corrected and sent again: a new workflow runs.
        refused = await ml.aprocess_workflow(request("GR-2026-0201", name=""))
        fixed = await ml.aprocess_workflow(request("GR-2026-0201"))
    assert again["payment_id"] == first["payment_id"]
    assert refused["message"] == "validation_failed"
    assert fixed["status"] == "completed"
    assert fixed["details"]["workflow_id"] == "payment-GR-2026-0201-2"
    assert len(gateway.book.transfers) == 2


def test_process_workflow_is_a_plain_call_for_scripts() -> None:
    with layer(validator=SimulatedApplicantValidator(), gateway=SimulatedPaymentGateway()) as ml:
        ok = ml.process_workflow(request("GR-2026-0300"))
        bad = ml.process_workflow(request("GR-2026-0301", name=""))
        final = ml.wait(ok["details"]["workflow_id"], timeout=10)
    assert ok["status"] == "completed"
    assert bad == {
        "status": "error",
        "message": "validation_failed",
        "reason": "step 'validateApplicant': validation_failed: applicant name is missing",
        "workflow_id": "payment-GR-2026-0301",
    }
    assert final.result["paymentStatus"] == "settled"


async def test_the_sync_call_refuses_to_block_an_event_loop() -> None:
    ml = layer(validator=SimulatedApplicantValidator(), gateway=SimulatedPaymentGateway())
    with pytest.raises(RuntimeError, match="aprocess_workflow"):
        ml.process_workflow(request())


@pytest.fixture
async def services() -> AsyncIterator[tuple[str, Any]]:
    async with reference_server(settle_after=0.0) as served:
        yield served


@contextlib.asynccontextmanager
async def http_layer(
    url: str, *, timeout: float = 2.0, **kw: Any
) -> AsyncIterator[ManagementLayer]:
    """A running ManagementLayer whose HMS-SVC and HMS-ACH are the HTTP clients to ``url``."""
    async with (
        HttpApplicantValidator(url, timeout=timeout, backoff=0.01) as validator,
        HttpPaymentGateway(url, timeout=timeout, backoff=0.01) as gateway,
        layer(validator=validator, gateway=gateway, **kw) as ml,
    ):
        yield ml


async def test_over_http_completed_validation_failed_and_payment_failed(
    services: tuple[str, Any],
) -> None:
    url, svc = services
    async with http_layer(url) as ml:
        ok = await ml.aprocess_workflow(request("GR-2026-0400"))
        invalid = await ml.aprocess_workflow(request("GR-2026-0401", tax_id="123"))
        closed = await ml.aprocess_workflow(request("GR-2026-0402", account="1234560000"))
        final = await ml.mgmt.wait(ok["details"]["workflow_id"], timeout=10)
    assert not ml.mgmt.connected
    assert ok["status"] == "completed"
    assert ok["payment_id"] in svc.transfers
    assert final.result["paymentStatus"] == "settled"
    assert invalid["message"] == "validation_failed"
    assert "tax id is not in the form NN-NNNNNNN" in invalid["reason"]
    assert closed["message"] == "payment_failed"
    assert "account closed" in closed["reason"]
    assert svc.calls["/svc/v1/applicants/validate"] == 3
    assert svc.calls["/ach/v1/transfers"] == 2


async def test_over_http_a_transient_503_is_retried_to_success(
    services: tuple[str, Any],
) -> None:
    url, svc = services
    svc.fail("/ach/v1/transfers", status=503, times=2)
    async with http_layer(url) as ml:
        answer = await ml.aprocess_workflow(request("GR-2026-0500"))
    assert answer["status"] == "completed"
    assert svc.calls["/ach/v1/transfers"] == 3
    assert len(svc.transfers) == 1


async def test_over_http_a_timeout_is_transient_and_pays_once(
    services: tuple[str, Any],
) -> None:
    url, svc = services
    svc.fail("/ach/v1/transfers", delay=1.0, times=1)  # answers after the client gave up
    async with http_layer(url, timeout=0.3) as ml:
        answer = await ml.aprocess_workflow(request("GR-2026-0600"))
    assert answer["status"] == "completed"
    assert svc.calls["/ach/v1/transfers"] == 2
    assert list(svc.transfers) == [answer["payment_id"]], "the retry reused the idempotency key"


async def test_an_outage_that_outlasts_every_retry_fails_the_payment(
    services: tuple[str, Any],
) -> None:
    url, svc = services
    svc.fail("/svc/v1/applicants/validate", status=503, times=None)
    async with http_layer(url) as ml:
        answer = await ml.aprocess_workflow(request("GR-2026-0700"))
        final = await ml.mgmt.status(answer["workflow_id"])
    assert answer["message"] == "validation_failed"
    assert "HMS-SVC" in answer["reason"]
    assert final is not None
    assert final.step("validateApplicant").attempts == 3  # the step's retries, each with
    assert svc.calls["/svc/v1/applicants/validate"] == 9  # the client's 3 attempts


SENTINEL_TAX = "47-9135791"
SENTINEL_ACCOUNT = "80604020135"


@pytest.mark.postgres
async def test_sentinel_pii_never_reaches_store_logs_spans_or_dead_letters(
    pg_schema: str, services: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = services
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    mgmt = hms_bus.init(
        "payments-pii",
        store=pg_schema,
        tracer_provider=tracer_provider,
        **QUICK,
    )
    with caplog.at_level(logging.DEBUG):
        async with http_layer(url, mgmt=mgmt) as ml:
            ok = await ml.aprocess_workflow(
                request("GR-2026-0800", tax_id=SENTINEL_TAX, account=SENTINEL_ACCOUNT)
            )
            refused = await ml.aprocess_workflow(
                request("GR-2026-0801", name="", tax_id=SENTINEL_TAX, account=SENTINEL_ACCOUNT)
            )
            closed = await ml.aprocess_workflow(
                request("GR-2026-0802", tax_id=SENTINEL_TAX, account=SENTINEL_ACCOUNT[:-4] + "0000")
            )
            await ml.mgmt.wait(ok["details"]["workflow_id"], timeout=10)
            letters = await read_topic(ml.mgmt, ml.mgmt.topics.dead_letter)
            events = await read_topic(ml.mgmt, ml.mgmt.topics.events)
            answers = json.dumps([ok, refused, closed])

    assert ok["status"] == "completed"
    assert refused["message"] == "validation_failed"
    assert closed["message"] == "payment_failed"
    assert len(letters) == 2, "both failures were dead-lettered"
    url_, schema = pg_schema.split("?schema=")
    conn = await asyncpg.connect(url_)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        ]
        dump = []
        for table in tables:
            rows = await conn.fetch(f'SELECT row_to_json(t)::text AS j FROM "{schema}"."{table}" t')
            dump += [r["j"] for r in rows]
    finally:
        await conn.close()
    assert any("payment-GR-2026-0800" in row for row in dump), "the store has the workflows"
    spans = json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "status": s.status.description,
                "events": [dict(e.attributes or {}) for e in s.events],
            }
            for s in exporter.get_finished_spans()
        ]
    )
    assert exporter.get_finished_spans()
    places = {
        "store": "\n".join(dump),
        "logs": caplog.text,
        "spans": spans,
        "dead letters": b"\n".join(r.value for r in letters).decode(),
        "bus": b"\n".join(r.value for r in events).decode(),
        "answers": answers,
    }
    for where, text in places.items():
        for secret in (SENTINEL_TAX, SENTINEL_ACCOUNT, SENTINEL_ACCOUNT[:-4] + "0000"):
            assert secret not in text, f"{secret} in the {where}"
    assert "*******0135" in places["answers"]
    await asyncio.sleep(0)
