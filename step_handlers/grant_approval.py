"""The grant approval workflow of the HMS Management Layer.

``validateApp → creditCheck → scheduleInspection → finalize``, with ``reject`` as the
error path of the credit check:

- **validateApp** refuses, without retry (``Fail``), an application whose applicant has
  no name, that requests an amount without saying where to pay it, or whose bank
  account is malformed (a routing number that is not nine digits with a valid ABA
  checksum, or an account number that is not 4–17 digits; an account on file is
  HMS-ACH's to resolve when the grant is paid). The workflow then fails and the command
  goes to the dead-letter topic.
- **creditCheck** asks the credit bureau for a score. A bureau outage is an ordinary
  exception, retried with backoff; a score under :data:`MIN_CREDIT_SCORE` raises
  ``Fail`` and takes the error path to **reject**.
- **scheduleInspection** books a site inspection a few business days out, with the
  region's inspection office.
- **finalize** approves the grant and records it (with its amount, if one was
  requested) in the grants ledger, keyed by the step's idempotency key so a redelivered
  attempt never records it twice.
- **reject** (error path) ends the workflow with the rejection and its reason.

The smallest application is an id and an applicant's name, the hms-mgmt chapter's start
payload ``{"applicationId": …, "applicantData": {"name": …}}``: it runs the four steps
to a decision without an amount or a bank account, which the payment (``grantPayment``
in :mod:`step_handlers.management_layer`) carries.

Run the workers of this app with ``hms-bus worker step_handlers.grant_approval:mgmt``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Protocol

import hms_bus
from schemas.grant import BankAccount, GrantApplication

__all__ = [
    "MIN_CREDIT_SCORE",
    "BureauUnavailable",
    "CreditBureau",
    "GrantLedger",
    "SimulatedCreditBureau",
    "create_app",
    "mgmt",
    "routing_number_valid",
]

MIN_CREDIT_SCORE = 620
STEPS = ["validateApp", "creditCheck", "scheduleInspection", "finalize"]
INSPECTION_OFFICES = {
    "northeast": "Boston field office",
    "southeast": "Atlanta field office",
    "midwest": "Chicago field office",
    "west": "Denver field office",
}


class BureauUnavailable(Exception):
    """The credit bureau did not answer; worth retrying."""


class CreditBureau(Protocol):
    """Where credit scores come from."""

    async def score(self, application: GrantApplication, *, idempotency_key: str) -> int:
        """The applicant's credit score (300–850)."""
        ...


@dataclass
class SimulatedCreditBureau:
    """An in-process credit bureau for the demo and tests.

    Args:
        scores: fixed scores by tax id; others get a stable score from a hash of it.
        outages: application id → how many calls fail with :class:`BureauUnavailable`
            before the bureau answers.
        latency: seconds each call takes.
    """

    scores: dict[str, int] = field(default_factory=dict)
    outages: dict[str, int] = field(default_factory=dict)
    latency: float = 0.0
    calls: int = 0

    async def score(self, application: GrantApplication, *, idempotency_key: str) -> int:
        """Answer with a score, or fail while an outage lasts."""
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        remaining = self.outages.get(application.application_id, 0)
        if remaining > 0:
            self.outages[application.application_id] = remaining - 1
            raise BureauUnavailable("credit bureau did not answer within 2s")
        tax_id = application.applicant.tax_id or application.application_id
        if tax_id in self.scores:
            return self.scores[tax_id]
        digest = hashlib.sha256(tax_id.encode()).digest()
        return 640 + int.from_bytes(digest[:2], "big") % 180


@dataclass
class GrantLedger:
    """Approved grants, recorded once per idempotency key."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(
        self, idempotency_key: str, application_id: str, amount: Decimal | None = None
    ) -> str:
        """Record an approval (again: a no-op) and return its approval id.

        ``amount`` is None for an application that requested none (payment is decided
        on its own); the entry then has no ``amount``.
        """
        entry = self.entries.get(idempotency_key)
        if entry is None:
            approval_id = f"APR-{len(self.entries) + 1:06d}"
            entry = {"approvalId": approval_id, "applicationId": application_id}
            if amount is not None:
                entry["amount"] = str(amount)
            self.entries[idempotency_key] = entry
        return str(entry["approvalId"])


def routing_number_valid(routing: str) -> bool:
    """True for nine digits whose ABA checksum holds (3-7-1 weights, sum ≡ 0 mod 10)."""
    if not re.fullmatch(r"\d{9}", routing):
        return False
    d = [int(c) for c in routing]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])) % 10 == 0


def _check_bank_account(account: BankAccount) -> None:
    """Fail the step (no retry) when ``account`` is malformed."""
    if not routing_number_valid(account.routing_number):
        raise hms_bus.Fail(
            f"bank account is malformed: routing number {account.routing_number!r} "
            "is not a valid nine-digit ABA number"
        )
    if not re.fullmatch(r"\d{4,17}", account.account_number):
        raise hms_bus.Fail("bank account is malformed: account number must be 4 to 17 digits")


def business_days_after(start: date, days: int) -> date:
    """The date ``days`` business days (Mon–Fri) after ``start``."""
    current = start
    while days > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            days -= 1
    return current


def create_app(
    mgmt: hms_bus.Management | None = None,
    *,
    bureau: CreditBureau | None = None,
    ledger: GrantLedger | None = None,
    credit_retry: hms_bus.RetryPolicy | None = None,
    inspection_lead_days: int = 3,
    today: date | None = None,
) -> hms_bus.Management:
    """Define the grant approval workflow and its handlers on ``mgmt``.

    Args:
        mgmt: the Management to register on; a new one (settings from the
            environment) when None.
        bureau: the credit bureau; a :class:`SimulatedCreditBureau` when None.
        ledger: where approvals are recorded; a new :class:`GrantLedger` when None.
        credit_retry: retry policy of the credit check (bureau outages).
        inspection_lead_days: business days between approval and inspection.
        today: the date inspections are scheduled from (default: today).
    """
    mgmt = mgmt or hms_bus.init(service_name="GrantWorkflow")
    bureau = bureau or SimulatedCreditBureau()
    ledger = ledger or GrantLedger()
    mgmt.define_workflow(
        "grantApproval",
        STEPS,
        error_steps=["reject"],
        input=GrantApplication,
        sla=timedelta(minutes=10),
    )

    @mgmt.on_step("grantApproval.validateApp", timeout=30)
    async def validate_app(ctx: hms_bus.StepContext) -> dict[str, Any]:
        app: GrantApplication = ctx.payload
        if not (app.applicant.name or "").strip():
            raise hms_bus.Fail("applicant name is missing")
        account = app.bank_account
        if account is None and app.amount is not None:
            raise hms_bus.Fail(
                "bank account is missing: an application for an amount needs the account "
                "to pay it to (bankAccount, or an account on file)"
            )
        if isinstance(account, BankAccount):
            _check_bank_account(account)
        # The seed's return form, accepted as is.
        return {"nextStep": "creditCheck", "data": app.model_dump(mode="json", by_alias=True)}

    @mgmt.on_step(
        "grantApproval.creditCheck",
        input=GrantApplication,
        retry=credit_retry
        or hms_bus.RetryPolicy(max_attempts=4, initial_delay=0.5, max_delay=10.0),
        timeout=10,
        on_error="reject",
    )
    async def credit_check(ctx: hms_bus.StepContext) -> dict[str, Any]:
        app: GrantApplication = ctx.payload
        score = await bureau.score(app, idempotency_key=ctx.idempotency_key)
        if score < MIN_CREDIT_SCORE:
            raise hms_bus.Fail(
                f"credit score {score} is below the programme minimum of {MIN_CREDIT_SCORE}"
            )
        return {**app.model_dump(mode="json", by_alias=True), "creditScore": score}

    @mgmt.on_step("grantApproval.scheduleInspection", timeout=30)
    async def schedule_inspection(ctx: hms_bus.StepContext) -> dict[str, Any]:
        region = str(ctx.payload.get("region", "northeast"))
        when = business_days_after(today or date.today(), inspection_lead_days)
        office = INSPECTION_OFFICES.get(region, "Washington headquarters")
        return {**ctx.payload, "inspection": {"date": when.isoformat(), "office": office}}

    @mgmt.on_step("grantApproval.finalize", timeout=30)
    async def finalize(ctx: hms_bus.StepContext) -> dict[str, Any]:
        p = ctx.payload
        requested = p.get("amount")
        amount = None if requested is None else Decimal(str(requested))
        approval_id = ledger.record(ctx.idempotency_key, p["applicationId"], amount)
        decision: dict[str, Any] = {
            "decision": "approved",
            "applicationId": p["applicationId"],
            "approvalId": approval_id,
        }
        if amount is not None:
            decision["amount"] = str(amount)
        return {
            **decision,
            "creditScore": p["creditScore"],
            "inspectionDate": p["inspection"]["date"],
        }

    @mgmt.on_step("grantApproval.reject")
    async def reject(ctx: hms_bus.StepContext) -> dict[str, Any]:
        error = ctx.error
        return {
            "decision": "rejected",
            "applicationId": ctx.payload.get("applicationId"),
            "reason": error.message if error else "rejected",
            "failedStep": error.step if error else None,
        }

    return mgmt


mgmt = create_app()
"""The app for the CLI: ``hms-bus run step_handlers.grant_approval:mgmt``."""
