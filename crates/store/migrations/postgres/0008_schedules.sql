-- Schedules (issue 15): a cron expression in a time zone for a job, and one
-- record per handled fire time.
--
-- Exactly once is a database guarantee: a scheduler commits a fire time by
-- compare-and-set on the schedule's cursor (`next_fire`, `generation`) and
-- inserts the fire record — unique per (schedule, fire_time) — and the run
-- it queues in the same transaction.
CREATE TABLE schedules (
    name         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    spec         TEXT    NOT NULL,
    enabled      BOOLEAN NOT NULL,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    next_fire    BIGINT,
    generation   BIGINT  NOT NULL DEFAULT 1,
    owner        TEXT    NOT NULL,
    owner_role   TEXT,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire) WHERE next_fire IS NOT NULL;

CREATE TABLE schedule_fires (
    schedule     TEXT COLLATE "C" NOT NULL,
    fire_time    BIGINT  NOT NULL,
    outcome      TEXT    NOT NULL,
    run_id       TEXT,
    detail       TEXT,
    decided_at   BIGINT  NOT NULL,
    decided_by   TEXT    NOT NULL,
    PRIMARY KEY (schedule, fire_time)
);
CREATE INDEX schedule_fires_pending ON schedule_fires (outcome) WHERE outcome = 'pending';

-- A run records the schedule that queued it and the nominal fire time
-- (NULL fire time: `schedules run-now`).
ALTER TABLE runs ADD COLUMN schedule TEXT COLLATE "C";
ALTER TABLE runs ADD COLUMN fire_time BIGINT;
CREATE INDEX runs_schedule ON runs (schedule, created_at, id) WHERE schedule IS NOT NULL;
