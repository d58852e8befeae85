-- Users, login families with their rotating refresh tokens, and API tokens.
-- Tokens are stored as SHA-256 hashes only; passwords as Argon2id PHC strings.
CREATE TABLE users (
    username             TEXT    NOT NULL PRIMARY KEY,
    role                 TEXT    NOT NULL,
    disabled             INTEGER NOT NULL DEFAULT 0,
    password_hash        TEXT    NOT NULL,
    created_at           INTEGER NOT NULL,
    password_changed_at  INTEGER NOT NULL
);

-- One row per login: the `sid` of its access tokens. Revoked by logout,
-- by reuse of a spent refresh token, by a password change or by disabling.
CREATE TABLE login_families (
    family      TEXT    NOT NULL PRIMARY KEY,
    username    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX login_families_username ON login_families (username);

CREATE TABLE refresh_tokens (
    token_hash  TEXT    NOT NULL PRIMARY KEY,
    family      TEXT    NOT NULL REFERENCES login_families (family),
    username    TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE api_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    username      TEXT    NOT NULL,
    token_hash    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    last_used_at  INTEGER
);
CREATE INDEX api_tokens_username ON api_tokens (username);
