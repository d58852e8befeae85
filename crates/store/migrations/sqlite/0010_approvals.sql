-- Approvals (docs/approvals.md). A run that needs approval is inserted
-- 'waiting_approval' after its request is stored here: the run's insert is
-- the commit point, so a request whose run does not exist (a crash between
-- the two writes) is never listed. The request is frozen at submit: the
-- rendered plan and its digest are what approvers approve.
CREATE TABLE approval_requests (
    run_id           TEXT    NOT NULL PRIMARY KEY,
    job              TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    required         INTEGER NOT NULL CHECK (required >= 1),
    approvers        TEXT    NOT NULL,
    reason_required  INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    plan_digest      TEXT    NOT NULL,
    plan             TEXT    NOT NULL,
    reasons          TEXT    NOT NULL,
    policy_hits      TEXT    NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX approval_requests_expiry ON approval_requests (expires_at);
CREATE INDEX approval_requests_created ON approval_requests (created_at, run_id);

-- One decision per approver per run (user names are case-insensitive).
CREATE TABLE approvals (
    run_id       TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    approver     TEXT    NOT NULL,
    decision     TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason       TEXT,
    plan_digest  TEXT    NOT NULL,
    decided_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX approvals_run_approver ON approvals (run_id, lower(approver));
