"""The reference grant approval workflow: its business rules through the public API."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

import hms_bus
from step_handlers.grant_approval import (
    GrantLedger,
    SimulatedCreditBureau,
    business_days_after,
    create_app,
    routing_number_valid,
)


def application(app_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "applicationId": app_id,
        "amount": "25000.00",
        "region": "midwest",
        "applicant": {"name": "Rivera Family Farms", "taxId": f"tax-{app_id}"},
        "bankAccount": {"routingNumber": "021000021", "accountNumber": "000123456789"},
    }
    body.update(overrides)
    return body


@pytest.fixture
def bureau() -> SimulatedCreditBureau:
    return SimulatedCreditBureau(scores={"tax-LOW": 540, "tax-OK": 700})


@pytest.fixture
def ledger() -> GrantLedger:
    return GrantLedger()


@pytest.fixture
async def mgmt(bureau: SimulatedCreditBureau, ledger: GrantLedger) -> Any:
    m = hms_bus.init(
        "grant-test", scheduler={"poll_interval": 0.02}, monitor={"heartbeat_interval": 0}
    )
    create_app(
        m,
        bureau=bureau,
        ledger=ledger,
        credit_retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.02, jitter=0),
        today=date(2026, 11, 20),  # a Friday
    )
    async with m:
        yield m


async def test_approved(mgmt: hms_bus.Management, ledger: GrantLedger) -> None:
    final = await mgmt.run("grantApproval", application("OK"), workflow_id="OK", timeout=10)
    assert final.status == "completed"
    assert final.result == {
        "decision": "approved",
        "applicationId": "OK",
        "approvalId": "APR-000001",
        "amount": "25000.00",
        "creditScore": 700,
        "inspectionDate": "2026-11-25",  # three business days after Friday
    }
    assert list(ledger.entries.values()) == [
        {"approvalId": "APR-000001", "applicationId": "OK", "amount": "25000.00"}
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"applicant": {"name": "  "}}, "applicant name is missing"),
        ({"bankAccount": None}, "bank account is missing"),
        (
            {"bankAccount": {"routingNumber": "021000022", "accountNumber": "1234"}},
            "routing number '021000022' is not a valid nine-digit ABA number",
        ),
        (
            {"bankAccount": {"routingNumber": "021000021", "accountNumber": "12-34"}},
            "account number must be 4 to 17 digits",
        ),
    ],
)
async def test_invalid_applications_fail_validation_without_retry(
    mgmt: hms_bus.Management, bureau: SimulatedCreditBureau, change: dict[str, Any], reason: str
) -> None:
    final = await mgmt.run("grantApproval", application("BAD", **change), timeout=10)
    assert final.status == "failed"
    assert reason in (final.error or "")
    assert [(s.step, s.status, s.attempts) for s in final.steps] == [("validateApp", "failed", 1)]
    assert bureau.calls == 0


async def test_low_credit_score_takes_the_error_path(mgmt: hms_bus.Management) -> None:
    final = await mgmt.run("grantApproval", application("LOW"), timeout=10)
    assert final.status == "completed"
    assert final.result == {
        "decision": "rejected",
        "applicationId": "LOW",
        "reason": "credit score 540 is below the programme minimum of 620",
        "failedStep": "creditCheck",
    }
    assert [(s.step, s.status.value, s.attempts) for s in final.steps] == [
        ("validateApp", "succeeded", 1),
        ("creditCheck", "failed", 1),  # Fail: no retry
        ("reject", "succeeded", 1),
    ]


async def test_bureau_outage_is_retried(
    mgmt: hms_bus.Management, bureau: SimulatedCreditBureau
) -> None:
    bureau.outages["FLAKY"] = 2
    final = await mgmt.run("grantApproval", application("FLAKY"), timeout=10)
    assert final.status == "completed"
    assert final.result["decision"] == "approved"
    credit = final.step("creditCheck")
    assert credit is not None and credit.attempts == 3
    assert bureau.calls == 3


async def test_outage_longer_than_the_retries_rejects(
    mgmt: hms_bus.Management, bureau: SimulatedCreditBureau
) -> None:
    bureau.outages["DOWN"] = 10
    final = await mgmt.run("grantApproval", application("DOWN"), timeout=10)
    assert final.result["decision"] == "rejected"
    assert "credit bureau did not answer" in final.result["reason"]


def test_ledger_records_once_per_idempotency_key() -> None:
    ledger = GrantLedger()
    first = ledger.record("wf:finalize:4", "GR-1", __import__("decimal").Decimal("10"))
    again = ledger.record("wf:finalize:4", "GR-1", __import__("decimal").Decimal("10"))
    assert first == again == "APR-000001"
    assert len(ledger.entries) == 1


@pytest.mark.parametrize(
    ("routing", "valid"),
    [
        ("011000015", True),
        ("021000021", True),
        ("021000022", False),
        ("12345678", False),
        ("a21000021", False),
    ],
)
def test_routing_number_checksum(routing: str, valid: bool) -> None:
    assert routing_number_valid(routing) is valid


def test_business_days_skip_weekends() -> None:
    assert business_days_after(date(2026, 11, 20), 1) == date(2026, 11, 23)
    assert business_days_after(date(2026, 11, 23), 3) == date(2026, 11, 26)
