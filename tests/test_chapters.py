"""The two chapters' examples, as a new user copies them, on the embedded default and on
Kafka + Postgres: the Management Layer's ``process_workflow(request)`` and hms-mgmt's
``mgmt.start("grantApproval", {"applicationId": …, "applicantData": …})``.

Each runs as written, imports included, in a fresh interpreter (as a user's script
does: the apps the examples import are built when their module is imported), with the
backend in the environment (``HMS_BUS_URL``, ``HMS_STORE_URL``, ``HMS_NAMESPACE``) and
nothing else around it but what reports the outcome. The rest of the file checks the
rules behind them: one request model with two forms, accounts on file, the approval
without an amount.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, FAST, Backend
from pydantic import ValidationError
from reference_server import reference_server

import hms_bus
from hms_bus._pii import sensitive_names
from schemas.grant import AccountOnFile, BankAccount, GrantApplication
from schemas.payment import PaymentRequest
from step_handlers.grant_approval import GrantLedger, create_app
from step_handlers.management_layer import ManagementLayer, create_payment_app
from step_handlers.reference_rules import ACCOUNTS_ON_FILE, TransferBook
from step_handlers.services import (
    HttpApplicantValidator,
    HttpPaymentGateway,
    SimulatedApplicantValidator,
    SimulatedPaymentGateway,
)

ROOT = Path(__file__).resolve().parents[1]

EMBEDDED_AND_KAFKA_POSTGRES = [BACKENDS[0], BACKENDS[3]]
"""memory:// for both, and Kafka (the session's broker) with this test's Postgres schema."""

PROCESS_WORKFLOW_SNIPPET = """\
from step_handlers.management_layer import ManagementLayer
ml = ManagementLayer()
request = {
    "application_id": "GR-2023-55",
    "applicant": {"name": "Jane Doe", "bank_account": "12345"},
    "amount": 2500,
}
ml.process_workflow(request)
"""
"""The Management Layer chapter's example, line for line."""

START_CALL = (
    'await mgmt.start("grantApproval", {"applicationId": app_id, "applicantData": app_data})'
)
"""hms-mgmt's start call, as the chapter writes it."""

CHAPTER_REQUEST: dict[str, Any] = {
    "application_id": "GR-2023-55",
    "applicant": {"name": "Jane Doe", "bank_account": "12345"},
    "amount": 2500,
}


def chapter_request(
    application_id: str, *, bank_account: Any = "12345", **applicant: Any
) -> dict[str, Any]:
    """The chapter's request shape, for another application, account (None: none) or
    applicant."""
    person: dict[str, Any] = {"name": "Jane Doe", **applicant}
    if bank_account is not None:
        person["bank_account"] = bank_account
    return {"application_id": application_id, "applicant": person, "amount": 2500}


RICH_REQUEST: dict[str, Any] = {
    "applicationId": "GR-2023-55",
    "applicant": {"name": "Jane Doe"},
    "payment": {"amount": "2500", "bankAccount": {"accountOnFile": "12345"}},
}


def run_script(script: str, backend: Backend) -> Any:
    """Run ``script`` in a fresh interpreter on ``backend``; the JSON it prints last.

    The embedded default gets no ``HMS_*`` variable at all; any other backend gets its
    URLs and namespace, and the suite's fast settings, as ``HMS_*`` variables. HMS-SVC
    and HMS-ACH are the in-process simulations (no ``HMS_SVC_URL`` / ``HMS_ACH_URL``).
    """
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if not (backend.memory and backend.memory_store):
        env |= {
            "HMS_BUS_URL": backend.bus,
            "HMS_STORE_URL": backend.store,
            "HMS_NAMESPACE": backend.namespace,
        }
        for section, values in FAST.items():
            for key, value in values.items():
                env[f"HMS_{section.upper()}__{key.upper()}"] = str(value)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the Management Layer chapter: process_workflow ---------------------------------


@pytest.mark.parametrize("backend", EMBEDDED_AND_KAFKA_POSTGRES, indirect=True)
def test_the_process_workflow_snippet_completes_with_a_payment_id(backend: Backend) -> None:
    *lines, call = PROCESS_WORKFLOW_SNIPPET.splitlines()
    script = "\n".join(
        [
            "import json",
            *lines,
            f"answer = {call}",  # what the chapter shows as the call's value
            "ml.close()",
            "settings = ml.mgmt.settings",
            "print(json.dumps([answer, settings.bus_url, settings.store_url]))",
        ]
    )
    answer, bus, store = run_script(script, backend)

    assert (bus, store) == (backend.bus, backend.store)
    assert answer["status"] == "completed", answer
    assert answer["payment_id"].startswith("PAY-")
    details = answer["details"]
    assert details["application_id"] == "GR-2023-55"
    assert Decimal(details["amount"]) == 2500
    assert details["payee"] == {"accountOnFile": "12345"}
    assert details["payment_status"] == "pending"
    assert details["status_check_due"] is not None, "the one-hour check is on a timer"


async def test_the_workflow_carries_the_rich_form_only() -> None:
    ml = ManagementLayer(
        hms_bus.init("chapters", monitor={"heartbeat_interval": 0}),
        validator=SimulatedApplicantValidator(),
        gateway=SimulatedPaymentGateway(),
    )
    async with ml:
        answer = await ml.aprocess_workflow(CHAPTER_REQUEST)
        status = await ml.mgmt.status(answer["details"]["workflow_id"])
    assert status is not None
    assert status.payload == {
        "applicationId": "GR-2023-55",
        "applicant": {"name": "Jane Doe", "taxId": None, "email": None},
        "payment": {
            "amount": "2500",
            "currency": "USD",
            "bankAccount": {"accountOnFile": "12345"},
            "memo": None,
        },
    }


async def test_a_full_account_in_the_flat_form_is_sealed_like_the_rich_one() -> None:
    account = {"routingNumber": "011000015", "accountNumber": "4401923377"}
    ml = ManagementLayer(
        hms_bus.init("chapters", monitor={"heartbeat_interval": 0}),
        validator=SimulatedApplicantValidator(),
        gateway=SimulatedPaymentGateway(),
    )
    async with ml:
        answer = await ml.aprocess_workflow(
            chapter_request("GR-5", bank_account=account, taxId="12-3456789")
        )
        history = await ml.mgmt.history(answer["details"]["workflow_id"])
    assert answer["status"] == "completed", answer
    assert answer["details"]["payee"] == {
        "routingNumber": "011000015",
        "accountNumber": "******3377",
    }
    recorded = json.dumps([e.model_dump(mode="json") for e in history])
    assert "4401923377" not in recorded and "12-3456789" not in recorded


async def test_the_chapters_failure_answers_stay_as_they_are() -> None:
    ml = ManagementLayer(
        hms_bus.init("chapters", monitor={"heartbeat_interval": 0}),
        validator=SimulatedApplicantValidator(),
        gateway=SimulatedPaymentGateway(),
    )
    async with ml:
        unknown = await ml.aprocess_workflow(chapter_request("GR-1", bank_account="99999"))
        nameless = await ml.aprocess_workflow(chapter_request("GR-2", name=""))
        no_account = await ml.aprocess_workflow(chapter_request("GR-3", bank_account=None))
        bad_tax_id = await ml.aprocess_workflow(chapter_request("GR-4", tax_id="123"))
    assert unknown == {
        "status": "error",
        "message": "payment_failed",
        "reason": "step 'initiateTransfer': payment_failed: unknown account on file",
        "workflow_id": "payment-GR-1",
    }
    assert nameless["message"] == "validation_failed"
    assert "applicant name is missing" in nameless["reason"]
    assert no_account["message"] == "validation_failed"
    assert "applicant.bank_account is required" in no_account["reason"]
    assert bad_tax_id["message"] == "validation_failed", "a tax id given is still checked"
    assert "tax id is not in the form NN-NNNNNNN" in bad_tax_id["reason"]


async def test_the_chapter_request_over_http_pays_the_same_account_on_file() -> None:
    async with (
        reference_server(settle_after=0.0) as (url, services),
        HttpApplicantValidator(url, timeout=2, backoff=0.01) as validator,
        HttpPaymentGateway(url, timeout=2, backoff=0.01) as gateway,
    ):
        mgmt = hms_bus.init(
            "chapters-http", scheduler={"poll_interval": 0.02}, monitor={"heartbeat_interval": 0}
        )
        async with ManagementLayer(
            mgmt, validator=validator, gateway=gateway, status_check_delay=0.1
        ) as ml:
            answer = await ml.aprocess_workflow(CHAPTER_REQUEST)
            final = await ml.mgmt.wait(answer["details"]["workflow_id"], timeout=10)
            returned = await ml.aprocess_workflow(chapter_request("GR-7", bank_account="67890"))
            returned_final = await ml.mgmt.wait(returned["details"]["workflow_id"], timeout=10)
            unknown = await ml.aprocess_workflow(chapter_request("GR-8", bank_account="00000"))
    assert answer["status"] == "completed"
    transfer = services.transfers[answer["payment_id"]]
    assert transfer.account == ACCOUNTS_ON_FILE["12345"], "HMS-ACH resolved the reference"
    assert final.result["paymentStatus"] == "settled"
    assert returned_final.result["paymentStatus"] == "returned"
    assert returned_final.result["transfer"]["reason"] == "R03 no account"
    assert unknown["message"] == "payment_failed"
    assert "unknown account on file" in unknown["reason"]


# --- one model, two forms -------------------------------------------------------------


def test_the_flat_form_is_the_rich_form_after_validation() -> None:
    flat = PaymentRequest.model_validate(CHAPTER_REQUEST)
    assert flat == PaymentRequest.model_validate(RICH_REQUEST)
    assert flat.payment.bank_account == AccountOnFile(account_on_file="12345")
    again = PaymentRequest.model_validate(flat.model_dump(mode="json", by_alias=True))
    assert again == flat, "what travels on the bus validates again unchanged"


def test_the_flat_form_takes_a_full_account_currency_and_memo() -> None:
    account = {"routingNumber": "011000015", "accountNumber": "4401923377"}
    flat = PaymentRequest.model_validate(
        {
            "applicationId": "GR-1",
            "amount": "10.50",
            "memo": "Grant GR-1",
            "applicant": {"name": "Jane Doe", "bankAccount": account},
        }
    )
    assert flat.payment.amount == Decimal("10.50")
    assert flat.payment.memo == "Grant GR-1"
    assert flat.payment.bank_account == BankAccount(
        routing_number="011000015", account_number="4401923377"
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({**CHAPTER_REQUEST, "payment": RICH_REQUEST["payment"]}, "the amount is given twice"),
        (
            {**CHAPTER_REQUEST, "applicant": {"name": "Jane Doe"}},
            "applicant.bank_account is required",
        ),
        ({**CHAPTER_REQUEST, "amount": -1}, "payment.amount"),
        ({**CHAPTER_REQUEST, "applicant": {"bank_account": ""}}, "accountOnFile"),
    ],
)
def test_a_bad_flat_form_is_refused(body: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        PaymentRequest.model_validate(body)


def test_a_plain_string_bank_account_is_an_account_on_file() -> None:
    rich = {**RICH_REQUEST, "payment": {"amount": "1", "bankAccount": "12345"}}
    assert PaymentRequest.model_validate(rich).payment.bank_account == AccountOnFile(
        account_on_file="12345"
    )


def test_sensitive_fields_stay_the_account_number_and_the_tax_id() -> None:
    names = sensitive_names([PaymentRequest, GrantApplication])
    assert {"accountNumber", "taxId"} <= names
    assert not {"accountOnFile", "account_on_file", "bankAccount", "bank_account"} & names


def test_hms_ach_resolves_accounts_on_file_from_its_table() -> None:
    book = TransferBook(
        accounts_on_file={
            "A-1": BankAccount(routing_number="011000015", account_number="123450000")
        }
    )
    body = {"applicationId": "GR-1", "amount": "5", "bankAccount": {"accountOnFile": "A-1"}}
    _, closed = book.initiate(body, "k1")
    _, unknown = book.initiate({**body, "bankAccount": "12345"}, "k2")
    assert (closed.status, closed.reason) == ("rejected", "account closed")
    assert (unknown.status, unknown.reason) == ("rejected", "unknown account on file")


# --- the hms-mgmt chapter: start("grantApproval", {applicationId, applicantData}) ------


@pytest.mark.parametrize("backend", EMBEDDED_AND_KAFKA_POSTGRES, indirect=True)
def test_the_start_snippet_runs_the_four_steps_to_an_approval(backend: Backend) -> None:
    script = f"""\
import asyncio
import json

from step_handlers.grant_approval import mgmt


async def main():
    app_id = "GR-2023-55"
    app_data = {{"name": "Jane Doe"}}
    async with mgmt:
        started = {START_CALL}
        # The site inspector reports once the inspection is booked.
        await mgmt.wait(started.workflow_id, timeout=30, until_step="scheduleInspection")
        report = {{"passed": True, "inspector": "J. Ortiz"}}
        await mgmt.signal(started.workflow_id, "inspectionReport", report)
        final = await mgmt.wait(started.workflow_id, timeout=30)
    settings = mgmt.settings
    print(json.dumps([final.model_dump(mode="json"), settings.bus_url, settings.store_url]))


asyncio.run(main())
"""
    final, bus, store = run_script(script, backend)

    assert (bus, store) == (backend.bus, backend.store)
    assert final["status"] == "completed", final["error"]
    result = final["result"]
    assert result["decision"] == "approved"
    assert result["applicationId"] == "GR-2023-55"
    assert result["approvalId"].startswith("APR-")
    assert "amount" not in result, "no amount was requested"
    assert [(s["step"], s["status"]) for s in final["steps"]] == [
        ("validateApp", "succeeded"),
        ("creditCheck", "succeeded"),
        ("eligibilityCheck", "succeeded"),
        ("scheduleInspection", "succeeded"),
        ("finalize", "succeeded"),
    ]
    assert final["payload"]["applicant"]["name"] == "Jane Doe"


def test_applicant_data_is_the_applicant() -> None:
    chapter = GrantApplication.model_validate(
        {"applicationId": "GR-1", "applicantData": {"name": "Jane Doe"}}
    )
    assert chapter == GrantApplication.model_validate(
        {"applicationId": "GR-1", "applicant": {"name": "Jane Doe"}}
    )
    assert chapter.amount is None
    both = GrantApplication.model_validate(
        {"applicationId": "GR-1", "applicant": {"name": "A"}, "applicantData": {"name": "B"}}
    )
    assert both.applicant.name == "A"
    assert "applicant" in chapter.model_dump(by_alias=True), "it travels as applicant"


async def test_an_amountless_approval_is_recorded_without_an_amount() -> None:
    ledger = GrantLedger()
    mgmt = hms_bus.init(
        "chapters-approval", scheduler={"poll_interval": 0.02}, monitor={"heartbeat_interval": 0}
    )
    create_payment_app(mgmt, status_check_delay=0.05)
    create_app(mgmt, ledger=ledger, payments=False)
    report = {"passed": True, "inspector": "J. Ortiz"}

    async def inspected(application: dict[str, Any]) -> hms_bus.WorkflowStatus:
        started = await mgmt.start("grantApproval", application)
        await mgmt.wait(started.workflow_id, timeout=10, until_step="scheduleInspection")
        await mgmt.signal(started.workflow_id, "inspectionReport", report)
        return await started.wait(timeout=10)

    async with mgmt:
        plain = await inspected({"applicationId": "GR-1", "applicantData": {"name": "Jane Doe"}})
        on_file = await inspected(
            {
                "applicationId": "GR-2",
                "amount": "100.00",
                "applicant": {"name": "Jane Doe", "taxId": "12-3456789"},
                "bankAccount": "12345",
            }
        )
    assert plain.result["decision"] == "approved"
    assert on_file.result["decision"] == "approved", on_file.result
    assert on_file.result["amount"] == "100.00"
    assert [e for e in ledger.entries.values() if e["applicationId"] == "GR-1"] == [
        {"approvalId": plain.result["approvalId"], "applicationId": "GR-1"}
    ]
