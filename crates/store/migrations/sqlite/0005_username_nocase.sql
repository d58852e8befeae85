-- Usernames are case-insensitive: `Alice` and `alice` are one account (for
-- uniqueness, login and login limits). Existing case-duplicates: the oldest
-- account (then the smallest name) keeps its name; every other one is
-- disabled, renamed to `<name>.dup-<rowid>` (an admin can rename it back by
-- recreating it) and loses every login and API token.
UPDATE login_families
SET revoked_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
WHERE revoked_at IS NULL AND username IN (
    SELECT u.username FROM users u WHERE EXISTS (
        SELECT 1 FROM users k
        WHERE lower(k.username) = lower(u.username)
          AND (k.created_at < u.created_at
               OR (k.created_at = u.created_at AND k.username < u.username))));

UPDATE api_tokens
SET revoked_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
WHERE revoked_at IS NULL AND username IN (
    SELECT u.username FROM users u WHERE EXISTS (
        SELECT 1 FROM users k
        WHERE lower(k.username) = lower(u.username)
          AND (k.created_at < u.created_at
               OR (k.created_at = u.created_at AND k.username < u.username))));

UPDATE users
SET disabled = 1, username = username || '.dup-' || rowid
WHERE EXISTS (
    SELECT 1 FROM users k
    WHERE lower(k.username) = lower(users.username)
      AND (k.created_at < users.created_at
           OR (k.created_at = users.created_at AND k.username < users.username)));

CREATE UNIQUE INDEX users_username_lower ON users (lower(username));
