-- OpsConductor schema for PostgreSQL, version 1: the same tables and column
-- meanings as the SQLite schema (migrations/sqlite/0001_init.sql).
--
-- Conventions:
-- * timestamps are BIGINT microseconds since the Unix epoch (UTC), as in SQLite;
-- * model values (specs, parameters, target lists) are JSON in TEXT columns:
--   stored exactly as encoded (JSONB would reorder keys, change number
--   spellings and refuse "\u0000" in strings), compared as JSON by the code;
-- * run ids are TEXT, lower-case hyphenated UUIDs (v7, so they sort by time);
-- * names and ids use the "C" collation: byte order, the same as SQLite's
--   and Rust's, whatever the database's default locale; it also lets
--   `LIKE 'prefix%'` use the primary key index;
-- * counters and indexes (versions, attempts, steps, seq) are BIGINT, so every
--   u32 and every log sequence number fits.

-- Targets: the whole `Target` as JSON, keyed by name.
CREATE TABLE targets (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    spec        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- Jobs: one immutable row per version; the latest version is the current one.
CREATE TABLE jobs (
    name        TEXT COLLATE "C" NOT NULL,
    version     BIGINT  NOT NULL CHECK (version >= 1),
    status      TEXT    NOT NULL,
    spec        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

-- Runs, which are also the queue.
CREATE TABLE runs (
    id                TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    job               TEXT COLLATE "C" NOT NULL,
    job_version       BIGINT,
    spec              TEXT    NOT NULL,
    params            TEXT    NOT NULL,
    targets           TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    requested_by      TEXT    NOT NULL,
    attempt           BIGINT  NOT NULL DEFAULT 0,
    worker            TEXT,
    lease_until       BIGINT,
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    error             TEXT,
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
);

-- The queue, oldest first, and lease expiry: partial indexes stay as small
-- as the queued / running sets, however long the history grows.
CREATE INDEX runs_queue ON runs (created_at, id) WHERE status = 'queued';
CREATE INDEX runs_leases ON runs (lease_until, id) WHERE status = 'running';
-- Listing: newest first, overall, per job and per state.
CREATE INDEX runs_created ON runs (created_at, id);
CREATE INDEX runs_job_created ON runs (job, created_at, id);
CREATE INDEX runs_status_created ON runs (status, created_at, id);

-- The outcome of one step on one target.
CREATE TABLE step_results (
    run_id       TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step         BIGINT  NOT NULL,
    target       TEXT COLLATE "C" NOT NULL,
    status       TEXT    NOT NULL,
    exit_code    INTEGER,
    signal       INTEGER,
    error        TEXT,
    attempt      BIGINT  NOT NULL,
    started_at   BIGINT  NOT NULL,
    finished_at  BIGINT,
    PRIMARY KEY (run_id, step, target)
);

-- The ordered output of a run.
CREATE TABLE logs (
    run_id  TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq     BIGINT  NOT NULL,
    step    BIGINT,
    target  TEXT,
    stream  TEXT    NOT NULL,
    data    BYTEA   NOT NULL,
    time    BIGINT  NOT NULL,
    PRIMARY KEY (run_id, seq)
);
