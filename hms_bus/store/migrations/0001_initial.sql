-- hms-bus state store, version 1. Every table is keyed by namespace first, so several
-- applications (or test runs) share one schema without seeing each other.

-- One row per workflow instance: the status the projector maintains.
CREATE TABLE hms_workflows (
    namespace       text        NOT NULL,
    workflow_id     text        NOT NULL,
    workflow        text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    payload         jsonb,
    result          jsonb,
    error           text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    sla_breached    boolean     NOT NULL DEFAULT false,
    start_event_id  text        NOT NULL DEFAULT '',
    confirmed       boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, workflow_id)
);
CREATE INDEX hms_workflows_newest ON hms_workflows (namespace, created_at DESC, workflow_id DESC);
CREATE INDEX hms_workflows_by_status
    ON hms_workflows (namespace, status, created_at DESC, workflow_id DESC);
CREATE INDEX hms_workflows_by_name
    ON hms_workflows (namespace, workflow, created_at DESC, workflow_id DESC);

-- One row per step execution (seq numbers the executions of a workflow: 1, 2, ...).
CREATE TABLE hms_steps (
    namespace       text        NOT NULL,
    workflow_id     text        NOT NULL,
    seq             integer     NOT NULL,
    step            text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    attempts        integer     NOT NULL,
    scheduled_at    timestamptz,
    due_at          timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    error           text,
    sla_breached    boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, workflow_id, seq)
);

-- Every event applied, in the order applied: a workflow's history. event_id makes
-- the projection idempotent.
CREATE TABLE hms_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    namespace       text        NOT NULL,
    event_id        text        NOT NULL,
    workflow_id     text        NOT NULL,
    type            text        NOT NULL,
    ts              timestamptz NOT NULL,
    body            jsonb       NOT NULL,
    PRIMARY KEY (namespace, event_id)
);
CREATE INDEX hms_events_by_workflow ON hms_events (namespace, workflow_id, id);

-- The coordinator's ledger: each transition of a workflow is decided once. messages
-- holds what to publish until it is marked published.
CREATE TABLE hms_transitions (
    namespace       text        NOT NULL,
    workflow_id     text        NOT NULL,
    transition_id   text        NOT NULL,
    messages        bytea,
    published       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, workflow_id, transition_id)
);

-- Workflows whose end the coordinator has decided: later transitions are refused.
CREATE TABLE hms_closed (
    namespace       text        NOT NULL,
    workflow_id     text        NOT NULL,
    closed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, workflow_id)
);

-- Durable timers (delays, retry backoff). available_at is due_at until a scheduler
-- leases the timer, then the end of the lease.
CREATE TABLE hms_timers (
    namespace       text        NOT NULL,
    timer_id        text        NOT NULL,
    workflow_id     text        NOT NULL,
    due_at          timestamptz NOT NULL,
    available_at    timestamptz NOT NULL,
    owner           text,
    message         bytea       NOT NULL,
    PRIMARY KEY (namespace, timer_id)
);
CREATE INDEX hms_timers_available ON hms_timers (namespace, available_at);
CREATE INDEX hms_timers_by_workflow ON hms_timers (namespace, workflow_id);
