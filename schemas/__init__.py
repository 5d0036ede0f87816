"""Pydantic models of the reference application's payloads.

Their JSON Schema is exported to ``schemas/json/`` by
``hms-bus schemas export schemas --out schemas/json`` (checked in CI).
"""

from .grant import Applicant, BankAccount, GrantApplication
from .inspection import Inspection
from .payment import PaymentInstruction, PaymentRequest, PaymentResult, PaymentStatus

__all__ = [
    "Applicant",
    "BankAccount",
    "GrantApplication",
    "Inspection",
    "PaymentInstruction",
    "PaymentRequest",
    "PaymentResult",
    "PaymentStatus",
]
