-- Step retries (issue 14): which try of a step a result and an output
-- chunk belong to, and the earlier tries of a retried step (JSON, oldest
-- first; at most retry.attempts - 1 entries). A result row still holds one
-- step on one target: its latest try.
ALTER TABLE step_results ADD COLUMN try_no BIGINT NOT NULL DEFAULT 1;
ALTER TABLE step_results ADD COLUMN tries TEXT;
ALTER TABLE logs ADD COLUMN try_no BIGINT NOT NULL DEFAULT 1;
