"""The whole HMS reference application on one Management: grant approval and grant payment.

Deployments run every role of both workflows from this app
(``hms-bus coordinator step_handlers.hms:mgmt``, ``hms-bus worker step_handlers.hms:mgmt
--steps grantPayment.validateApplicant,…``), so one coordinator, projector, scheduler and
monitor serve both, and each worker group serves the steps it is given.
"""

from __future__ import annotations

import hms_bus

from .grant_approval import create_app

__all__ = ["create_hms_app", "mgmt"]


def create_hms_app(mgmt: hms_bus.Management | None = None) -> hms_bus.Management:
    """``grantApproval`` (with its ``slaSweep`` schedule) and ``grantPayment``, which pays
    approved grants as a child workflow, on ``mgmt`` (a new one when None), with HMS-SVC
    and HMS-ACH from ``HMS_SVC_URL`` / ``HMS_ACH_URL`` (else simulated)."""
    mgmt = mgmt or hms_bus.init(service_name="HMS")
    create_app(mgmt)
    return mgmt


mgmt = create_hms_app()
"""The app for the CLI: ``hms-bus run step_handlers.hms:mgmt``."""
