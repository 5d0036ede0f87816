"""A site inspection booked by the grant approval workflow (``scheduleInspection``), and
the inspector's report that the workflow waits for (the ``inspectionReport`` signal)."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from .grant import _Model

__all__ = ["Inspection", "InspectionReport"]


class Inspection(_Model):
    """When and where a funded site is inspected."""

    application_id: str
    date: date
    office: str = Field(description="The regional inspection office.")
    region: str


class InspectionReport(_Model):
    """The inspector's report: the data of the ``inspectionReport`` signal
    (``hms-bus signal step_handlers.hms:mgmt GR-2026-0001 inspectionReport '{…}'``)."""

    passed: bool = Field(description="Whether the site meets the programme's conditions.")
    inspector: str = Field(min_length=1, description="Who inspected the site.")
    notes: str | None = None
