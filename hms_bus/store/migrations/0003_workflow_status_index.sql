-- hms-bus state store, version 3: workflows of one name in one status, newest first.
-- What `list(workflow=…, status=…)` asks (an operator's "running grant approvals"),
-- without stepping over the other workflows of that status.
CREATE INDEX hms_workflows_by_name_status
    ON hms_workflows (namespace, workflow, status, created_at DESC, workflow_id DESC);
