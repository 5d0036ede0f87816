"""hms-bus: event-driven workflows on a message bus, the Management Layer of HMS.

Define a workflow once, register one async handler per step, start instances::

    import hms_bus

    mgmt = hms_bus.init(service_name="GrantWorkflow")      # memory:// unless configured
    mgmt.define_workflow("grantApproval", ["validateApp", "creditCheck", "finalize"])

    @mgmt.on_step("grantApproval.validateApp", retry=hms_bus.RetryPolicy(max_attempts=5))
    async def validate_app(ctx: hms_bus.StepContext):
        return {"nextStep": "creditCheck", "data": ctx.payload}

    async with mgmt:
        final = await mgmt.run("grantApproval", {"applicationId": "GR-2023-55"}, timeout=60)

Each step travels as an event on the bus (``memory://`` or Kafka); workers run the
handlers, the coordinator routes completed steps, the projector records status in the
store (``memory://`` or Postgres), the scheduler fires durable timers and the monitor
watches heartbeats and SLAs.
"""

from __future__ import annotations

from ._client import Started
from ._context import StepContext
from ._definitions import Parallel, StepDefinition, WorkflowDefinition, parallel
from ._errors import (
    ConfigError,
    Fail,
    HmsBusError,
    NotFoundError,
    PayloadValidationError,
    SerializationError,
    StepError,
    StoreError,
    TransportError,
    WaitTimeoutError,
)
from ._events import ErrorInfo
from ._management import Management, init
from ._pii import Sensitive
from ._results import Child, Complete, Each, Next, WaitFor
from ._retry import RetryPolicy
from ._settings import Settings
from ._status import StepState, StepStatus, WorkflowPage, WorkflowState, WorkflowStatus

__version__ = "0.1.0"

__all__ = [
    "Child",
    "Complete",
    "ConfigError",
    "Each",
    "ErrorInfo",
    "Fail",
    "HmsBusError",
    "Management",
    "Next",
    "NotFoundError",
    "Parallel",
    "PayloadValidationError",
    "RetryPolicy",
    "Sensitive",
    "SerializationError",
    "Settings",
    "Started",
    "StepContext",
    "StepDefinition",
    "StepError",
    "StepState",
    "StepStatus",
    "StoreError",
    "TransportError",
    "WaitFor",
    "WaitTimeoutError",
    "WorkflowDefinition",
    "WorkflowPage",
    "WorkflowState",
    "WorkflowStatus",
    "__version__",
    "init",
    "parallel",
]
