-- OpsConductor schema, version 1.
--
-- Conventions (kept portable to PostgreSQL):
-- * timestamps are INTEGER microseconds since the Unix epoch (UTC);
-- * model values (specs, parameters, target lists) are JSON in TEXT columns;
-- * run ids are TEXT, lower-case hyphenated UUIDs (v7, so they sort by time);
-- * booleans are INTEGER 0/1.

-- Targets: the whole `Target` as JSON, keyed by name.
CREATE TABLE targets (
    name        TEXT    NOT NULL PRIMARY KEY,
    spec        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Jobs: one immutable row per version; the latest version is the current one.
CREATE TABLE jobs (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    status      TEXT    NOT NULL,
    spec        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

-- Runs, which are also the queue.
CREATE TABLE runs (
    id                TEXT    NOT NULL PRIMARY KEY,
    job               TEXT    NOT NULL,
    job_version       INTEGER,
    spec              TEXT    NOT NULL,
    params            TEXT    NOT NULL,
    targets           TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    requested_by      TEXT    NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    worker            TEXT,
    lease_until       INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    error             TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER
);

-- The queue (status = 'queued', oldest first) and lease expiry (status = 'running').
CREATE INDEX runs_status_created ON runs (status, created_at, id);
CREATE INDEX runs_status_lease ON runs (status, lease_until);
-- Listing: newest first, overall and per job.
CREATE INDEX runs_created ON runs (created_at, id);
CREATE INDEX runs_job_created ON runs (job, created_at, id);

-- The outcome of one step on one target.
CREATE TABLE step_results (
    run_id       TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    target       TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    exit_code    INTEGER,
    signal       INTEGER,
    error        TEXT,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (run_id, step, target)
);

-- The ordered output of a run.
CREATE TABLE logs (
    run_id  TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    step    INTEGER,
    target  TEXT,
    stream  TEXT    NOT NULL,
    data    BLOB    NOT NULL,
    time    INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);
