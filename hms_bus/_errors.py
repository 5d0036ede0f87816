"""The exceptions hms-bus raises.

Everything derives from :class:`HmsBusError`, so ``except hms_bus.HmsBusError`` catches
all of it::

    HmsBusError
    ├── ConfigError            bad definitions, unknown workflows/steps, bad URLs or settings
    ├── NotFoundError          a workflow id the store does not know (also a LookupError)
    ├── WaitTimeoutError       wait()/run() gave up before a terminal state (also a TimeoutError)
    ├── PayloadValidationError a payload that does not match its declared model (also a ConfigError)
    ├── SerializationError     a value that cannot be encoded, or bytes that cannot be decoded
    ├── TransportError         the bus failed to publish or consume
    ├── StoreError             the state store failed
    └── StepError              raised inside handlers
        └── Fail               fail the step now, without retry

Whether an operation may be retried is data on the error (``retriable``), and
``__cause__`` keeps the original error of the underlying library.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Fail",
    "HmsBusError",
    "NotFoundError",
    "PayloadValidationError",
    "SerializationError",
    "StepError",
    "StoreError",
    "TransportError",
    "WaitTimeoutError",
]


class HmsBusError(Exception):
    """Root of every error hms-bus raises.

    Attributes:
        retriable: True when repeating the same operation may succeed (a broker or
            database that is briefly unreachable); False for errors that will recur.
        workflow_id: the workflow the failed call was about, when it has one: a
            retriable failure of :meth:`~hms_bus.Management.start` carries the id it
            started under (also one it generated), to repeat the call with.
    """

    retriable: bool = False
    workflow_id: str | None = None

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retriable is not None:
            self.retriable = retriable


class ConfigError(HmsBusError):
    """A definition, URL, setting or name is wrong; the message names the value."""


class PayloadValidationError(ConfigError):
    """A payload does not match the pydantic model declared with ``input=``.

    Attributes:
        errors: pydantic's list of validation errors, one per offending field.
    """

    def __init__(self, message: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class NotFoundError(HmsBusError, LookupError):
    """The store has no workflow with the given id."""


class WaitTimeoutError(HmsBusError, TimeoutError):
    """A workflow did not reach a terminal state within the time ``wait``/``run`` was given."""


class SerializationError(HmsBusError):
    """A value could not be encoded as JSON, or received bytes could not be decoded."""


class TransportError(HmsBusError):
    """The message bus failed; ``retriable`` says whether trying again may help."""


class StoreError(HmsBusError):
    """The state store failed; ``retriable`` says whether trying again may help."""


class StepError(HmsBusError):
    """Base of the errors a step handler raises on purpose."""


class Fail(StepError):
    """Raise inside a handler to fail the step at once, without retry.

    The workflow then takes the step's error path (``on_error=``) if it has one, and
    otherwise ends ``failed`` with the step's command sent to the dead-letter topic.

    Example:
        >>> raise hms_bus.Fail("applicant name is missing")  # doctest: +SKIP
    """

    retriable = False
