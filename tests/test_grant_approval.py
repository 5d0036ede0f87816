"""The reference grant approval workflow: its business rules through the public API."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import pytest
from conftest import eventually

import hms_bus
from step_handlers.grant_approval import (
    GrantLedger,
    SimulatedCreditBureau,
    business_days_after,
    create_app,
    routing_number_valid,
)
from step_handlers.management_layer import create_payment_app

TAX_IDS = {"LOW": "12-0000002"}


def application(app_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "applicationId": app_id,
        "amount": "25000.00",
        "region": "midwest",
        "applicant": {"name": "Rivera Family Farms", "taxId": TAX_IDS.get(app_id, "12-0000001")},
        "bankAccount": {"routingNumber": "021000021", "accountNumber": "000123456789"},
    }
    body.update(overrides)
    return body


@pytest.fixture
def bureau() -> SimulatedCreditBureau:
    return SimulatedCreditBureau(scores={"12-0000002": 540, "12-0000001": 700})


@pytest.fixture
def ledger() -> GrantLedger:
    return GrantLedger()


@pytest.fixture
async def mgmt(bureau: SimulatedCreditBureau, ledger: GrantLedger) -> Any:
    m = hms_bus.init(
        "grant-test", scheduler={"poll_interval": 0.02}, monitor={"heartbeat_interval": 0}
    )
    create_payment_app(m, status_check_delay=0.05)
    create_app(
        m,
        bureau=bureau,
        ledger=ledger,
        credit_retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.02, jitter=0),
        inspection_timeout=5,
        today=date(2026, 11, 20),  # a Friday
        payments=False,
    )
    async with m:
        yield m


PASSED = {"passed": True, "inspector": "J. Ortiz"}


async def inspected(
    mgmt: hms_bus.Management, app_id: str, report: dict[str, Any] | None = PASSED, **changes: Any
) -> hms_bus.WorkflowStatus:
    """Run an application to its end, sending ``report`` once it waits for the inspection."""
    await mgmt.start("grantApproval", application(app_id, **changes), workflow_id=app_id)
    if report is not None:

        async def waiting() -> bool:
            st = await mgmt.status(app_id)
            if st is not None and st.terminal:
                return True
            step = st.step("scheduleInspection") if st is not None else None
            return step is not None and step.waiting_for == "inspectionReport"

        await eventually(waiting, within=10, what="the wait for the report")
        await mgmt.signal(app_id, "inspectionReport", report)
    return await mgmt.wait(app_id, timeout=15)


async def test_approved_and_paid_by_a_child_workflow(
    mgmt: hms_bus.Management, ledger: GrantLedger
) -> None:
    final = await inspected(mgmt, "OK")
    assert final.status == "completed", final.error
    result = dict(final.result)
    assert result.pop("paymentId").startswith("PAY-")
    assert result == {
        "decision": "approved",
        "applicationId": "OK",
        "approvalId": "APR-000001",
        "amount": "25000.00",
        "paymentStatus": "settled",
    }
    steps = [(s.step, s.status.value, s.group) for s in final.steps]
    assert steps == [
        ("validateApp", "succeeded", None),
        ("creditCheck", "succeeded", "checks"),
        ("eligibilityCheck", "succeeded", "checks"),
        ("scheduleInspection", "succeeded", None),
        ("finalize", "succeeded", None),
        ("recordPayment", "succeeded", None),
    ]
    child = await mgmt.status(final.step("finalize").child_id or "")
    assert child is not None and child.workflow == "grantPayment" and child.parent_id == "OK"
    assert list(ledger.entries.values()) == [
        {"approvalId": "APR-000001", "applicationId": "OK", "amount": "25000.00"}
    ]


async def test_approved_without_an_amount_ends_at_finalize(mgmt: hms_bus.Management) -> None:
    final = await inspected(mgmt, "OK", amount=None, bankAccount=None)
    assert final.status == "completed"
    assert final.result == {
        "decision": "approved",
        "applicationId": "OK",
        "approvalId": "APR-000001",
        "creditScore": 700,
        "inspectionDate": "2026-11-25",  # three business days after Friday
        "inspector": "J. Ortiz",
    }
    assert final.step("finalize").child_id is None


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
    assert [s.step for s in final.steps] == [
        "validateApp",
        "creditCheck",
        "eligibilityCheck",
        "reject",
    ]
    credit = final.step("creditCheck")
    assert credit is not None and (credit.status, credit.attempts) == ("failed", 1)  # no retry


async def test_an_amount_over_the_maximum_is_rejected_by_the_eligibility_check(
    mgmt: hms_bus.Management,
) -> None:
    final = await mgmt.run("grantApproval", application("BIG", amount="250000"), timeout=10)
    assert final.result["decision"] == "rejected"
    assert final.result["failedStep"] == "eligibilityCheck"
    assert "over the programme maximum of 100000" in final.result["reason"]


async def test_a_failed_inspection_rejects(mgmt: hms_bus.Management) -> None:
    report = {"passed": False, "inspector": "M. Chen", "notes": "no premises at the address"}
    final = await inspected(mgmt, "OK", report)
    assert final.result == {
        "decision": "rejected",
        "applicationId": "OK",
        "reason": "site inspection by M. Chen failed: no premises at the address",
        "failedStep": "finalize",
    }


async def test_no_report_in_time_rejects(bureau: SimulatedCreditBureau) -> None:
    m = hms_bus.init("grant-test", scheduler={"poll_interval": 0.02})
    create_app(m, bureau=bureau, inspection_timeout=0.3, payments=False)
    async with m:
        final = await m.run("grantApproval", application("OK"), timeout=10)
    assert final.result["decision"] == "rejected"
    assert final.result["reason"] == "timed out waiting for the signal 'inspectionReport'"
    assert final.result["failedStep"] == "scheduleInspection"


async def test_bureau_outage_is_retried(
    mgmt: hms_bus.Management, bureau: SimulatedCreditBureau
) -> None:
    bureau.outages["FLAKY"] = 2
    final = await inspected(mgmt, "FLAKY")
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


async def test_the_nightly_sla_sweep_lists_breached_workflows() -> None:
    m = hms_bus.init("grant-test", monitor={"check_interval": 0.05, "heartbeat_interval": 0})
    create_app(m, payments=False)
    m.define_workflow("slow", ["nap"], sla=0.1)

    @m.on_step("slow.nap")
    async def nap(ctx: hms_bus.StepContext) -> Any:
        await asyncio.sleep(0.4)

    async with m:
        await m.run("slow", {}, workflow_id="late", timeout=10)

        async def breached() -> bool:
            late = await m.status("late")
            return late is not None and late.sla_breached

        await eventually(breached, within=10, what="the breach recorded")
        swept = await m.run("slaSweep", None, timeout=10)
    assert m.schedules["slaSweep"].spec == "0 2 * * *"
    assert swept.result == {
        "breached": [{"workflowId": "late", "workflow": "slow", "status": "completed"}]
    }


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
