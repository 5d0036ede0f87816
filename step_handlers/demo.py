"""``hms-bus demo``: a handful of grant applications on the embedded default.

Runs every role in this process on ``memory://`` (nothing to install or start), prints
each workflow's steps as they progress, and ends with a status table. The credit and
eligibility checks run in parallel; each approved application waits for its site
inspector's report (a signal the demo sends a second after the inspection is booked)
and is then paid by ``grantPayment``, a child workflow; one application's inspector
never reports, so its wait times out and it is rejected. Besides the approvals there
are rejections through the error path (a low credit score, an amount over the
programme's maximum), one credit check retried after the bureau's outage, and two
applications refused by validation. Then the nightly SLA sweep runs once, and two
grants are paid through ``ManagementLayer.process_workflow`` (one valid, one refused by
HMS-SVC), with the valid payment's follow-up status check run as its own step a second
later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import UTC, date, datetime
from typing import Any, TextIO

import hms_bus

from .grant_approval import SimulatedCreditBureau, create_app
from .management_layer import ManagementLayer, create_payment_app

__all__ = ["APPLICATIONS", "run_demo"]

_ACCOUNT = {"routingNumber": "011000015", "accountNumber": "4401923377"}

APPLICATIONS: list[dict[str, Any]] = [
    {
        "applicationId": "GR-2026-0001",
        "amount": "25000.00",
        "region": "northeast",
        "applicant": {"name": "Acme Bakery LLC", "taxId": "12-3456789"},
        "bankAccount": _ACCOUNT,
    },
    {
        "applicationId": "GR-2026-0002",
        "amount": "48000.00",
        "region": "midwest",
        "applicant": {"name": "Rivera Family Farms", "taxId": "98-7654321"},
        "bankAccount": {"routingNumber": "021000021", "accountNumber": "000123456789"},
    },
    {
        "applicationId": "GR-2026-0003",
        "amount": "15000.00",
        "region": "southeast",
        "applicant": {"name": "Blue Harbor Fisheries", "taxId": "45-1112223"},
        "bankAccount": _ACCOUNT,
    },
    {
        "applicationId": "GR-2026-0004",
        "amount": "90000.00",
        "region": "west",
        "applicant": {"name": "Quick Cash Ventures", "taxId": "77-0000001"},
        "bankAccount": _ACCOUNT,
    },
    {
        "applicationId": "GR-2026-0005",
        "amount": "12000.00",
        "region": "northeast",
        "applicant": {"name": "", "taxId": "33-4445556"},
        "bankAccount": _ACCOUNT,
    },
    {
        "applicationId": "GR-2026-0006",
        "amount": "30000.00",
        "region": "west",
        "applicant": {"name": "Summit Outfitters", "taxId": "66-2223334"},
        "bankAccount": {"routingNumber": "12345678", "accountNumber": "55512"},
    },
    {
        "applicationId": "GR-2026-0007",
        "amount": "250000.00",
        "region": "midwest",
        "applicant": {"name": "Prairie Wind Cooperative", "taxId": "51-9876543"},
        "bankAccount": _ACCOUNT,
    },
    {
        "applicationId": "GR-2026-0008",
        "amount": "8000.00",
        "region": "southeast",
        "applicant": {"name": "Lakeside Clinic", "taxId": "23-5556667"},
        "bankAccount": _ACCOUNT,
    },
]
NO_REPORT = {"GR-2026-0008"}
"""Applications whose inspector never reports: their wait for the report times out."""
REPORT_AFTER = 1.0  # seconds from the booking to the inspector's report
STATUS_CHECK_DELAY = 1.0  # one hour in production; a second here
INSPECTION_TIMEOUT = 2.5  # fourteen days in production; seconds here


class _Printer:
    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.t0 = time.monotonic()
        enc = (getattr(out, "encoding", None) or "ascii").lower()
        fancy = "utf" in enc
        self.ok, self.bad, self.retry, self.run, self.wait, self.child = (
            ("✓", "✗", "↻", "▶", "⏸", "↳") if fancy else ("ok", "x", "retry", ">", "||", "->")
        )

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def line(self, wid: str, step: str, text: str) -> None:
        stamp = f"{time.monotonic() - self.t0:6.2f}s"
        self.out.write(f"  {self.paint(stamp, '2')}  {wid:<13} {step:<19} {text}\n")
        self.out.flush()


def _describe(status: hms_bus.WorkflowStatus) -> str:
    r = status.result if isinstance(status.result, dict) else {}
    if status.status == "completed" and r.get("decision") == "approved":
        if r.get("paymentId"):
            amount = f"${float(r['amount']):,.2f}"
            paid = f"({r['paymentId']}, {r['paymentStatus']})"
            return f"approved {r['approvalId']}: {amount} paid {paid}"
        return f"approved {r['approvalId']}: no amount requested"
    if status.status == "completed" and r.get("decision") == "rejected":
        return f"rejected: {r.get('reason')}"
    if status.status == "failed":
        return f"refused: {status.error}"
    return str(status.status)


async def _watch(
    mgmt: hms_bus.Management, ids: list[str], p: _Printer
) -> dict[str, hms_bus.WorkflowStatus]:
    seen: dict[tuple[str, int], tuple[str, int, str, str]] = {}
    final: dict[str, hms_bus.WorkflowStatus] = {}
    while len(final) < len(ids):
        for wid in ids:
            if wid in final:
                continue
            st = await mgmt.status(wid)
            if st is None:
                continue
            for s in st.steps:
                key = (wid, s.seq)
                state = (s.status.value, s.attempts, s.waiting_for or "", s.child_id or "")
                if seen.get(key) == state:
                    continue
                before = seen.get(key)
                seen[key] = state
                if s.waiting_for:
                    p.line(wid, s.step, p.paint(f"{p.wait} waiting for {s.waiting_for}", "35"))
                    continue
                if s.child_id and (before is None or not before[3]):
                    p.line(wid, s.step, p.paint(f"{p.child} child workflow {s.child_id}", "35"))
                    continue
                if before is not None and before[0] == state[0] and before[2]:
                    p.line(wid, s.step, p.paint(f"{p.ok} woken", "32"))
                    continue
                if s.status == "running":
                    extra = f" (attempt {s.attempts})" if s.attempts > 1 else ""
                    p.line(wid, s.step, p.paint(f"{p.run} running{extra}", "36"))
                elif s.status == "succeeded":
                    ms = (
                        (s.finished_at - s.started_at).total_seconds() * 1e3
                        if s.finished_at and s.started_at
                        else 0
                    )
                    p.line(wid, s.step, p.paint(f"{p.ok} succeeded", "32") + f" in {ms:.1f} ms")
                elif s.status == "failed":
                    p.line(wid, s.step, p.paint(f"{p.bad} failed: {s.error}", "31"))
                elif s.status == "pending" and s.attempts > 1:
                    p.line(
                        wid,
                        s.step,
                        p.paint(
                            f"{p.retry} attempt {s.attempts - 1} failed ({s.error}); retrying", "33"
                        ),
                    )
            if st.terminal:
                final[wid] = st
                colour = "32" if st.status == "completed" else "31"
                p.line(
                    wid, "", p.paint(f"workflow {st.status}", colour + ";1") + f": {_describe(st)}"
                )
        await asyncio.sleep(0.02)
    return final


def _table(final: dict[str, hms_bus.WorkflowStatus], p: _Printer) -> None:
    rows = [("APPLICATION", "STATUS", "STEPS", "OUTCOME")]
    for wid, st in sorted(final.items()):
        marks = []
        for s in st.steps:
            mark = {"succeeded": p.ok, "failed": p.bad}.get(s.status.value, "…")
            tries = f"x{s.attempts}" if s.attempts > 1 else ""
            marks.append(f"{s.step}{mark}{tries}")
        rows.append((wid, st.status.value, " ".join(marks), _describe(st)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    p.out.write("\n")
    for n, r in enumerate(rows):
        text = (
            "  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        )
        p.out.write((p.paint(text, "1") if n == 0 else text) + "\n")


async def _inspector(mgmt: hms_bus.Management, ids: list[str], p: _Printer) -> None:
    """The site inspectors: each reports a second after the inspection is booked (the
    workflow waits for it), but for the applications of :data:`NO_REPORT`."""
    reported: set[str] = set()
    while True:
        for wid in ids:
            if wid in reported or wid in NO_REPORT:
                continue
            st = await mgmt.status(wid)
            step = st.step("scheduleInspection") if st is not None else None
            if step is None or not step.waiting_for or step.finished_at is None:
                continue
            waited = (datetime.now(UTC) - step.finished_at).total_seconds()
            if waited < REPORT_AFTER:
                continue
            reported.add(wid)
            report = {"passed": True, "inspector": "J. Ortiz", "notes": "site as described"}
            await mgmt.signal(wid, "inspectionReport", report, signal_id=f"report-{wid}")
            p.line(wid, "(inspector)", f"sends inspectionReport: {json.dumps(report)}")
        await asyncio.sleep(0.05)


async def run_demo(
    out: TextIO | None = None, *, color: bool | None = None
) -> dict[str, hms_bus.WorkflowStatus]:
    """Run the demo and return each application's final status."""
    out = out or sys.stdout
    color = out.isatty() if color is None else color
    p = _Printer(out, color)
    for name in ("hms_bus", "hms_bus.step", "hms_bus.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the live view shows failures
    bureau = SimulatedCreditBureau(
        scores={"77-0000001": 540},  # Quick Cash Ventures: below the minimum
        outages={"GR-2026-0003": 2},  # the bureau is down for Blue Harbor's first two calls
        latency=0.15,  # a believable round trip, so progress is visible
    )
    mgmt = hms_bus.init(
        service_name="GrantWorkflow-demo",
        bus="memory://",
        store="memory://",
        roles="all",
        scheduler={"poll_interval": 0.05},
        monitor={"heartbeat_interval": 0},
    )
    create_payment_app(mgmt, status_check_delay=STATUS_CHECK_DELAY)
    create_app(
        mgmt,
        bureau=bureau,
        credit_retry=hms_bus.RetryPolicy(
            max_attempts=4, initial_delay=0.3, max_delay=2.0, jitter=0.2
        ),
        inspection_timeout=INSPECTION_TIMEOUT,
        today=date.today(),
        payments=False,
    )
    out.write(
        p.paint("hms-bus demo", "1") + f" - {len(APPLICATIONS)} grant applications through "
        "validateApp -> [creditCheck | eligibilityCheck] -> scheduleInspection\n"
        "  (waits for the inspector's report) -> finalize -> grantPayment (a child workflow)\n"
        "  embedded default: memory:// bus and store, every role in this process\n\n"
    )
    async with mgmt:
        ids = []
        for app in APPLICATIONS:
            started = await mgmt.start("grantApproval", app, workflow_id=app["applicationId"])
            ids.append(started.workflow_id)
        inspector = asyncio.create_task(_inspector(mgmt, ids, p))
        try:
            final = await asyncio.wait_for(_watch(mgmt, ids, p), timeout=60)
        finally:
            inspector.cancel()
        _table(final, p)
        decisions = [(s.result or {}).get("decision") for s in final.values()]
        out.write(
            f"\n  {sum(1 for s in final.values() if s.status == 'completed')} completed "
            f"({decisions.count('approved')} approved, {decisions.count('rejected')} "
            f"rejected), {sum(1 for s in final.values() if s.status == 'failed')} failed "
            f"validation; {time.monotonic() - p.t0:.2f}s\n"
        )
        await _sweep(mgmt, p)
    await asyncio.to_thread(_payments, p)
    return final


async def _sweep(mgmt: hms_bus.Management, p: _Printer) -> None:
    """The programme office's nightly SLA sweep: its schedule, and one run now."""
    schedule = mgmt.schedules["slaSweep"]
    tick = schedule.next_after(datetime.now(UTC))
    p.out.write(
        "\n"
        + p.paint("schedule slaSweep", "1")
        + f" - {schedule.spec} ({schedule.timezone}); next tick {tick:%Y-%m-%d %H:%M} UTC, "
        "run once now:\n"
    )
    swept = await mgmt.run("slaSweep", None, workflow_id="slaSweep-demo", timeout=30)
    breached = (swept.result or {}).get("breached", [])
    p.line(swept.workflow_id, "listBreaches", f"{len(breached)} workflow(s) past their SLA")


PAYMENTS: list[dict[str, Any]] = [
    {
        "applicationId": "GR-2026-0001",
        "applicant": {"name": "Acme Bakery LLC", "taxId": "12-3456789"},
        "payment": {"amount": "25000.00", "bankAccount": _ACCOUNT, "memo": "Grant GR-2026-0001"},
    },
    {
        "applicationId": "GR-2026-0005",
        "applicant": {"name": "", "taxId": "33-4445556"},
        "payment": {"amount": "12000.00", "bankAccount": _ACCOUNT},
    },
]


def _payments(p: _Printer) -> None:
    """Pay two grants with the synchronous ``ManagementLayer.process_workflow``, as a
    script would, then wait for the valid one's follow-up status check."""
    p.out.write(
        "\n"
        + p.paint("ManagementLayer.process_workflow", "1")
        + " - grantPayment: validateApplicant (HMS-SVC) -> initiateTransfer (HMS-ACH) -> "
        f"checkPaymentStatus {STATUS_CHECK_DELAY:g}s later\n"
        "  HMS-SVC and HMS-ACH simulated in-process (set HMS_SVC_URL / HMS_ACH_URL for HTTP)\n\n"
    )
    mgmt = hms_bus.init(
        service_name="ManagementLayer-demo",
        bus="memory://",
        store="memory://",
        scheduler={"poll_interval": 0.05},
        monitor={"heartbeat_interval": 0},
    )
    with ManagementLayer(mgmt, status_check_delay=STATUS_CHECK_DELAY) as ml:
        answers = []
        for request in PAYMENTS:
            answer = ml.process_workflow(request)
            answers.append(answer)
            p.line(request["applicationId"], "process_workflow", json.dumps(answer))
        for answer in answers:
            if answer["status"] == "completed":
                wid = answer["details"]["workflow_id"]
                final = ml.wait(wid, timeout=30)
                result = final.result if isinstance(final.result, dict) else {}
                p.line(
                    result.get("applicationId", wid),
                    "checkPaymentStatus",
                    p.paint(f"{p.ok} {answer['payment_id']} {result.get('paymentStatus')}", "32")
                    + f" (workflow {final.status.value})",
                )
