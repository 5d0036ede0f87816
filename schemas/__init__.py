"""Pydantic models of the reference application's payloads."""

from .grant import Applicant, BankAccount, GrantApplication

__all__ = ["Applicant", "BankAccount", "GrantApplication"]
