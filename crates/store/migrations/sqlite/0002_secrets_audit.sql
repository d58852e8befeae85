-- Secrets (ciphertexts only), their change history, the master key versions
-- known to this database, and the audit log.
CREATE TABLE secrets (
    name         TEXT PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    version      INTEGER NOT NULL,
    key_version  INTEGER NOT NULL,
    ciphertext   BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    updated_at   INTEGER NOT NULL,
    updated_by   TEXT NOT NULL
);
CREATE INDEX secrets_key_version ON secrets (key_version);

CREATE TABLE secret_history (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    action   TEXT NOT NULL,
    by_user  TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX secret_history_name ON secret_history (name, seq);

CREATE TABLE master_keys (
    version      INTEGER PRIMARY KEY,
    salt         BLOB,
    check_value  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER
);

CREATE TABLE audit_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    time    INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    object  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash    TEXT NOT NULL
);
CREATE INDEX audit_events_object ON audit_events (object, seq);
