-- Migration 0013 adds SQLite's `runs_owner` covering index, for the owner
-- check of guarded writes, whose columns SQLite stores after a run's job
-- spec. PostgreSQL stores large values such as the spec out of line
-- (TOAST), so reading a run's owner columns never touches it: nothing to
-- do here. The file keeps both backends' migration numbers in step.
SELECT 1;
