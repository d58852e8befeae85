-- Secrets (ciphertexts only), their change history, the master key versions
-- known to this database, and the audit log (a hash chain).
CREATE TABLE secrets (
    name         TEXT PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    version      BIGINT NOT NULL,
    key_version  BIGINT NOT NULL,
    ciphertext   BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    updated_at   BIGINT NOT NULL,
    updated_by   TEXT NOT NULL
);
CREATE INDEX secrets_key_version ON secrets (key_version);

CREATE TABLE secret_history (
    seq      BIGSERIAL PRIMARY KEY,
    name     TEXT NOT NULL,
    version  BIGINT NOT NULL,
    action   TEXT NOT NULL,
    by_user  TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX secret_history_name ON secret_history (name, seq);

CREATE TABLE master_keys (
    version      BIGINT PRIMARY KEY,
    salt         BYTEA,
    check_value  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT
);

CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    time      BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_events_object ON audit_events (object, seq);
