"""Topic and consumer-group names, with the namespace prefix in front of every one."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]

EVENTS = "hms.events"
COORDINATOR = "hms.coordinator"
DEAD_LETTER = "hms.dead-letter"
HEARTBEATS = "hms.heartbeats"


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of every topic and consumer group for one namespace.

    With ``namespace="staging"`` the events topic is ``staging.hms.events`` and the
    coordinator's group ``staging.hms.coordinator``; with no namespace, plain names.
    """

    namespace: str = ""

    def _p(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def events(self) -> str:
        """Lifecycle events: the workflows' history (``hms.events``)."""
        return self._p(EVENTS)

    @property
    def coordinator(self) -> str:
        """What the coordinator decides on: starts, completed steps, cancellations
        (``hms.coordinator``)."""
        return self._p(COORDINATOR)

    @property
    def dead_letter(self) -> str:
        """What could not be processed (``hms.dead-letter``)."""
        return self._p(DEAD_LETTER)

    @property
    def heartbeats(self) -> str:
        """Process heartbeats and down reports (``hms.heartbeats``)."""
        return self._p(HEARTBEATS)

    def inbox(self, workflow: str, version: str) -> str:
        """Where the coordinators that define version ``version`` of ``workflow`` take its
        transitions from when another coordinator (one that does not define it) got
        them: ``hms.coordinator.<workflow>.<version>``."""
        return self._p(f"{COORDINATOR}.{workflow}.{version}")

    def step(self, workflow: str, step: str) -> str:
        """The command topic of one step: ``<workflow>.<step>``."""
        return self._p(f"{workflow}.{step}")

    def group(self, role: str) -> str:
        """The consumer group of a role, e.g. ``hms.worker``."""
        return self._p(f"hms.{role}")
