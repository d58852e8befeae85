-- The id of the request that submitted a run (the server's X-Request-Id),
-- so a run's logs and the API request that made it can be matched.
ALTER TABLE runs ADD COLUMN request_id TEXT;
