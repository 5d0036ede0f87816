"""The grant approval workflow of the HMS Management Layer.

``validateApp → checks (creditCheck ∥ eligibilityCheck) → scheduleInspection → finalize``,
with ``reject`` as the error path::

    validateApp ┬ creditCheck ──────┬ scheduleInspection ⏸ inspectionReport ─ finalize ─┐
                └ eligibilityCheck ─┘   (no report in time: reject)                     │
    recordPayment ◀─ grantPayment (a child workflow, for an amount) ◀──────────────────┘

- **validateApp** refuses, without retry (``Fail``), an application whose applicant has
  no name, that requests an amount without saying where to pay it, or whose bank
  account is malformed (a routing number that is not nine digits with a valid ABA
  checksum, or an account number that is not 4–17 digits; an account on file is
  HMS-ACH's to resolve when the grant is paid). The workflow then fails and the command
  goes to the dead-letter topic.
- **checks**, a parallel group: **creditCheck** asks the credit bureau for a score (an
  outage is retried with backoff; a score under :data:`MIN_CREDIT_SCORE` fails it) while
  **eligibilityCheck** applies the programme's rules (the amount within
  :data:`MAX_AMOUNT`, a region the programme serves). Either failing takes the error
  path to **reject**; the next step runs once both have passed.
- **scheduleInspection** books a site inspection a few business days out with the
  region's office, then *waits* for the inspector's report: the ``inspectionReport``
  signal (``mgmt.signal(application_id, "inspectionReport", {...})`` or ``hms-bus
  signal``). No report within ``inspection_timeout`` (14 days) takes it to **reject**.
- **finalize** reads the report: a failed inspection rejects the application; otherwise
  the grant is approved and recorded in the grants ledger (keyed by the step's
  idempotency key, so a redelivered attempt never records it twice). An application
  for an amount is then paid by the ``grantPayment`` workflow as a *child*
  (:mod:`step_handlers.management_layer`), and **recordPayment** ends the workflow with
  the decision and the payment; one without an amount ends at **finalize**.
- **reject** (error path) ends the workflow with the rejection and its reason.

The smallest application is an id and an applicant's name, the hms-mgmt chapter's start
payload ``{"applicationId": …, "applicantData": {"name": …}}``: it runs to a decision
without an amount or a bank account.

:func:`create_app` defines ``grantApproval`` (and, by default, ``grantPayment`` for its
payments) and the ``slaSweep`` schedule: every night at 02:00 (programme office time) a
``slaSweep`` workflow lists the workflows that breached their SLA.

Run the workers of this app with ``hms-bus worker step_handlers.grant_approval:mgmt``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import hms_bus
from schemas.grant import BankAccount, GrantApplication
from schemas.inspection import InspectionReport

from .reference_rules import routing_number_valid

__all__ = [
    "MAX_AMOUNT",
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
MAX_AMOUNT = Decimal("100000")
"""The most one grant of the programme may award."""
INSPECTION_TIMEOUT = timedelta(days=14)
"""How long ``scheduleInspection`` waits for the inspector's report."""
STEPS: list[str | hms_bus.Parallel] = [
    "validateApp",
    hms_bus.parallel("creditCheck", "eligibilityCheck", name="checks"),
    "scheduleInspection",
    "finalize",
]
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

    def approval_of(self, application_id: str) -> dict[str, Any] | None:
        """The approval recorded for ``application_id``, if any."""
        for entry in self.entries.values():
            if entry["applicationId"] == application_id:
                return entry
        return None

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
    inspection_timeout: timedelta | float = INSPECTION_TIMEOUT,
    today: date | None = None,
    payments: bool = True,
) -> hms_bus.Management:
    """Define the grant approval workflow, its handlers and the nightly SLA sweep on ``mgmt``.

    Args:
        mgmt: the Management to register on; a new one (settings from the
            environment) when None.
        bureau: the credit bureau; a :class:`SimulatedCreditBureau` when None.
        ledger: where approvals are recorded; a new :class:`GrantLedger` when None.
        credit_retry: retry policy of the credit check (bureau outages).
        inspection_lead_days: business days between approval and inspection.
        inspection_timeout: how long to wait for the inspector's report.
        today: the date inspections are scheduled from (default: today).
        payments: also define ``grantPayment`` (with HMS-SVC and HMS-ACH from the
            environment, else simulated), which pays approved grants as a child
            workflow; pass False when the caller defines it.
    """
    mgmt = mgmt or hms_bus.init(service_name="GrantWorkflow")
    bureau = bureau or SimulatedCreditBureau()
    ledger = ledger or GrantLedger()
    if payments:
        from .management_layer import create_payment_app

        create_payment_app(mgmt)
    mgmt.define_workflow(
        "grantApproval",
        STEPS,
        error_steps=["reject", "recordPayment"],
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
        # The seed's return form, accepted as is: to the parallel group of checks.
        return {"nextStep": "checks", "data": app.model_dump(mode="json", by_alias=True)}

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

    @mgmt.on_step(
        "grantApproval.eligibilityCheck", input=GrantApplication, timeout=10, on_error="reject"
    )
    async def eligibility_check(ctx: hms_bus.StepContext) -> dict[str, Any]:
        app: GrantApplication = ctx.payload
        if app.amount is not None and app.amount > MAX_AMOUNT:
            raise hms_bus.Fail(
                f"requested amount {app.amount} is over the programme maximum of {MAX_AMOUNT}"
            )
        if app.region not in INSPECTION_OFFICES:
            raise hms_bus.Fail(f"region {app.region!r} is not served by the programme")
        return {**app.model_dump(mode="json", by_alias=True), "eligible": True}

    @mgmt.on_step("grantApproval.scheduleInspection", timeout=30)
    async def schedule_inspection(ctx: hms_bus.StepContext) -> hms_bus.WaitFor:
        # The application, as both checks passed it on, with what each found.
        application = {**ctx.payload["eligibilityCheck"], **ctx.payload["creditCheck"]}
        region = application["region"]
        when = business_days_after(today or date.today(), inspection_lead_days)
        booked = {
            **application,
            "inspection": {"date": when.isoformat(), "office": INSPECTION_OFFICES[region]},
        }
        ctx.log.info("inspection booked with the %s", INSPECTION_OFFICES[region])
        return hms_bus.WaitFor(
            "inspectionReport", data=booked, timeout=inspection_timeout, on_timeout="reject"
        )

    @mgmt.on_step("grantApproval.finalize", timeout=30, on_error="reject")
    async def finalize(ctx: hms_bus.StepContext) -> Any:
        p = ctx.payload
        report = InspectionReport.model_validate(ctx.signal)
        if not report.passed:
            raise hms_bus.Fail(
                f"site inspection by {report.inspector} failed: {report.notes or 'no reason given'}"
            )
        requested = p.get("amount")
        amount = None if requested is None else Decimal(str(requested))
        approval_id = ledger.record(ctx.idempotency_key, p["applicationId"], amount)
        decision: dict[str, Any] = {
            "decision": "approved",
            "applicationId": p["applicationId"],
            "approvalId": approval_id,
            "creditScore": p["creditScore"],
            "inspectionDate": p["inspection"]["date"],
            "inspector": report.inspector,
        }
        if amount is None:
            return hms_bus.Complete(decision)
        decision["amount"] = str(amount)
        payment = {
            "applicationId": p["applicationId"],
            "applicant": p["applicant"],
            "payment": {
                "amount": str(amount),
                "bankAccount": p["bankAccount"],
                "memo": f"Grant {p['applicationId']} ({approval_id})",
            },
        }
        # Paid by a workflow of its own; recordPayment gets its result.
        return hms_bus.Child("grantPayment", payment, next="recordPayment")

    @mgmt.on_step("grantApproval.recordPayment", timeout=30)
    async def record_payment(ctx: hms_bus.StepContext) -> dict[str, Any]:
        paid = ctx.payload
        approval = ledger.approval_of(paid["applicationId"]) or {}
        return {
            "decision": "approved",
            "applicationId": paid["applicationId"],
            "approvalId": approval.get("approvalId"),
            "amount": paid.get("amount"),
            "paymentId": paid.get("paymentId"),
            "paymentStatus": paid.get("paymentStatus"),
        }

    @mgmt.on_step("grantApproval.reject")
    async def reject(ctx: hms_bus.StepContext) -> dict[str, Any]:
        error = ctx.error
        payload = ctx.payload if isinstance(ctx.payload, dict) else {}
        return {
            "decision": "rejected",
            "applicationId": payload.get("applicationId"),
            "reason": error.message if error else "rejected",
            "failedStep": error.step if error else None,
        }

    define_sla_sweep(mgmt)
    return mgmt


def define_sla_sweep(mgmt: hms_bus.Management) -> None:
    """The programme office's nightly sweep: the ``slaSweep`` workflow, which lists the
    workflows that breached their SLA, started every night at 02:00 New York time by the
    ``slaSweep`` schedule."""
    mgmt.define_workflow("slaSweep", ["listBreaches"])
    mgmt.schedule("slaSweep", "slaSweep", cron="0 2 * * *", timezone="America/New_York")

    @mgmt.on_step("slaSweep.listBreaches", timeout=300)
    async def list_breaches(ctx: hms_bus.StepContext) -> dict[str, Any]:
        # Every running workflow, and those that ended since the last sweep.
        day = datetime.now(UTC) - timedelta(days=1)
        breached: list[dict[str, Any]] = []
        for status, since in (("running", None), ("failed", day), ("completed", day)):
            cursor = None
            while True:
                page = await mgmt.list(status=status, since=since, limit=1000, cursor=cursor)
                breached += [
                    {"workflowId": w.workflow_id, "workflow": w.workflow, "status": status}
                    for w in page.items
                    if w.sla_breached
                ]
                cursor = page.next_cursor
                if cursor is None:
                    break
        ctx.log.info("%d workflow(s) breached their SLA", len(breached))
        return {"breached": breached}


mgmt = create_app()
"""The app for the CLI: ``hms-bus run step_handlers.grant_approval:mgmt``."""
