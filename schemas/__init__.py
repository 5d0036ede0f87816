"""Pydantic models of the reference application's payloads.

Their JSON Schema is exported to ``schemas/json/`` by
``hms-bus schemas export schemas --out schemas/json`` (checked in CI).
"""

from .grant import AccountOnFile, Applicant, BankAccount, GrantApplication, PayeeAccount
from .inspection import Inspection, InspectionReport
from .payment import PaymentInstruction, PaymentRequest, PaymentResult, PaymentStatus

__all__ = [
    "AccountOnFile",
    "Applicant",
    "BankAccount",
    "GrantApplication",
    "Inspection",
    "InspectionReport",
    "PayeeAccount",
    "PaymentInstruction",
    "PaymentRequest",
    "PaymentResult",
    "PaymentStatus",
]
