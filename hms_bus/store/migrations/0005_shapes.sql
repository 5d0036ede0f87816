-- hms-bus state store, version 5: what parallel groups, signals, child workflows,
-- schedules and pinned versions need, and what retention prunes by.

-- Facts the coordinator's transitions keep per workflow and read back (a fork's
-- branch results, a parked wait, a kept signal, a running child, a child's parent).
-- Written in the same transaction as the transition that makes them; value NULL: gone.
CREATE TABLE hms_facts (
    namespace   text  NOT NULL,
    workflow_id text  NOT NULL,
    key         text  NOT NULL,
    value       bytea,
    PRIMARY KEY (namespace, workflow_id, key)
);

-- The definition version an instance runs by, and the parent of a child workflow.
ALTER TABLE hms_workflows ADD COLUMN version text, ADD COLUMN parent_id text;

-- A step execution's parallel group (or fan-out), the signal it waits for, its child.
ALTER TABLE hms_steps ADD COLUMN grp text, ADD COLUMN waiting_for text,
    ADD COLUMN child_id text;

-- Schedules: the last tick each has started, so that ticks missed while every
-- scheduler was down can be caught up (or skipped) and none starts twice.
CREATE TABLE hms_schedules (
    namespace  text        NOT NULL,
    name       text        NOT NULL,
    last_tick  timestamptz NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Retention (hms-bus prune, the retention setting): finished workflows, oldest first.
CREATE INDEX hms_workflows_finished ON hms_workflows (namespace, finished_at)
    WHERE finished_at IS NOT NULL;
