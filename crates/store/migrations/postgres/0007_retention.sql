-- Retention: finding finished runs by age for pruning, and the audit chain's
-- checkpoint (the newest pruned event's seq and hash, from which `audit
-- verify` starts) plus how far the log was exported (audit pruning never
-- goes past it unless the operator says so).
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE audit_retention (
    id                INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    checkpoint_seq    BIGINT,
    checkpoint_hash   TEXT,
    checkpoint_at     BIGINT,
    exported_through  BIGINT NOT NULL DEFAULT 0
);
INSERT INTO audit_retention (id) VALUES (1);
