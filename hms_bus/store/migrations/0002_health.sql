-- hms-bus state store, version 2: the monitor's health report, one row per namespace,
-- replaced every monitor.check_interval and read by `hms-bus health`.
CREATE TABLE hms_health (
    namespace   text        NOT NULL PRIMARY KEY,
    report      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL
);
