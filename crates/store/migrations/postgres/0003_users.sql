-- Users, login families with their rotating refresh tokens, and API tokens
-- (the same tables as migrations/sqlite/0003_users.sql). Tokens are stored as
-- SHA-256 hashes only; passwords as Argon2id PHC strings.
CREATE TABLE users (
    username             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    role                 TEXT    NOT NULL,
    disabled             BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash        TEXT    NOT NULL,
    created_at           BIGINT  NOT NULL,
    password_changed_at  BIGINT  NOT NULL
);

-- One row per login: the `sid` of its access tokens. Revoked by logout,
-- by reuse of a spent refresh token, by a password change or by disabling.
CREATE TABLE login_families (
    family      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    username    TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX login_families_username ON login_families (username);

CREATE TABLE refresh_tokens (
    token_hash  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    family      TEXT COLLATE "C" NOT NULL REFERENCES login_families (family),
    username    TEXT COLLATE "C" NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE api_tokens (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    role          TEXT   NOT NULL,
    username      TEXT COLLATE "C" NOT NULL,
    token_hash    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_tokens_username ON api_tokens (username);
