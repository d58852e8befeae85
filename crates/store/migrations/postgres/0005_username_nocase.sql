-- Usernames are case-insensitive: `Alice` and `alice` are one account (for
-- uniqueness, login and login limits). Existing case-duplicates: the oldest
-- account (then the smallest name) keeps its name; every other one is
-- disabled, renamed to `<name>.dup-<8 hex of md5(name)>` and loses every
-- login and API token.
CREATE TEMPORARY TABLE username_dups ON COMMIT DROP AS
SELECT u.username FROM users u WHERE EXISTS (
    SELECT 1 FROM users k
    WHERE lower(k.username) = lower(u.username)
      AND (k.created_at < u.created_at
           OR (k.created_at = u.created_at AND k.username < u.username)));

UPDATE login_families
SET revoked_at = (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
WHERE revoked_at IS NULL AND username IN (SELECT username FROM username_dups);

UPDATE api_tokens
SET revoked_at = (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
WHERE revoked_at IS NULL AND username IN (SELECT username FROM username_dups);

UPDATE users
SET disabled = TRUE, username = username || '.dup-' || substr(md5(username), 1, 8)
WHERE username IN (SELECT username FROM username_dups);

CREATE UNIQUE INDEX users_username_lower ON users (lower(username));
