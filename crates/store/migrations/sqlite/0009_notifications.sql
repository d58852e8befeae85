-- Notifications (issue 16): channels (named, admin-managed; credentials are
-- secret names, never values), the durable outbox of deliveries (one row per
-- event × channel, written in the same transaction as the state change that
-- caused the event, claimed by deliverers under a lease like runs) and every
-- delivery attempt. Timestamps are microseconds since the Unix epoch.
CREATE TABLE notify_channels (
    name        TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL,
    spec        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    updated_at  INTEGER  NOT NULL,
    updated_by  TEXT    NOT NULL
);

CREATE TABLE notify_deliveries (
    id           TEXT    NOT NULL PRIMARY KEY,
    -- Stable across retries and re-deliveries: receivers de-duplicate on it.
    event_id     TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    run_id       TEXT,
    job          TEXT,
    channel      TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    -- pending | delivering | delivered | failed
    status       TEXT    NOT NULL,
    attempts     INTEGER  NOT NULL DEFAULT 0,
    next_at      INTEGER  NOT NULL,
    give_up_at   INTEGER  NOT NULL,
    worker       TEXT,
    lease_until  INTEGER,
    created_at   INTEGER  NOT NULL,
    delivered_at INTEGER,
    last_error   TEXT,
    UNIQUE (event_id, channel)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (status, next_at);
CREATE INDEX notify_deliveries_run ON notify_deliveries (run_id);
CREATE INDEX notify_deliveries_channel ON notify_deliveries (channel, created_at);

CREATE TABLE notify_attempts (
    delivery_id TEXT    NOT NULL REFERENCES notify_deliveries (id) ON DELETE CASCADE,
    n           INTEGER  NOT NULL,
    at          INTEGER  NOT NULL,
    latency_ms  INTEGER  NOT NULL,
    -- delivered | retry | failed
    outcome     TEXT    NOT NULL,
    code        INTEGER,
    reply       TEXT,
    error       TEXT,
    worker      TEXT    NOT NULL,
    PRIMARY KEY (delivery_id, n)
);
