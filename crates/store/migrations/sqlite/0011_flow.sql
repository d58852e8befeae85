-- Step outputs and jobs that call jobs (issue 14, part B).
-- What a step published (a JSON object, masked and bounded by the engine)
-- and the child runs a `job:` step started (a JSON list of run ids).
ALTER TABLE step_results ADD COLUMN outputs TEXT;
ALTER TABLE step_results ADD COLUMN children TEXT;
-- A child run's link to the parent step that started it. At most one child
-- per parent step × target: a rescued parent finds the child its dead
-- worker started instead of starting a second one. (NULLs are distinct in
-- a unique index, so ordinary runs never collide.)
ALTER TABLE runs ADD COLUMN parent_run TEXT;
ALTER TABLE runs ADD COLUMN parent_step INTEGER;
ALTER TABLE runs ADD COLUMN parent_target TEXT;
CREATE UNIQUE INDEX runs_parent_step ON runs (parent_run, parent_step, parent_target);
