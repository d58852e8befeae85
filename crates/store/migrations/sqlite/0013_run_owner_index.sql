-- The owner check of every guarded write (a step result, a batch of log
-- chunks) reads a run's id, worker, attempt and status. In the `runs` table
-- those columns are stored after the run's job spec, which for a job of
-- thousands of steps spills into a chain of overflow pages that SQLite
-- walks to reach them: on every step. This covering index answers the
-- check without reading the row (the statements name it: `INDEXED BY`).
CREATE INDEX runs_owner ON runs (id, worker, attempt, status);
