-- hms-bus state store, version 4: how often workers started a step command they took
-- over. A worker that is given a partition counts the starts of the commands its
-- previous owner may have been running when it was lost; a command that keeps killing
-- its worker is quarantined after `worker.max_deliveries` starts (a crash loop). Only
-- commands of a take-over have rows, and a partition's rows below its committed offset
-- are deleted when it is taken over again.
CREATE TABLE hms_worker_starts (
    namespace text NOT NULL,
    topic text NOT NULL,
    part integer NOT NULL,
    off bigint NOT NULL,
    starts integer NOT NULL,
    PRIMARY KEY (namespace, topic, part, off)
);
