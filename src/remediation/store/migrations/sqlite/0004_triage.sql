-- Schema version 4 (SQLite dialect): human triage, the learned model and the LLM judge.
-- Keep the logical schema identical to ../postgres/0004_triage.sql.

-- Why a failure waits for a person (fallback, low_confidence, audit; NULL: it does not), who
-- resolved it, and what a person or the judge needs to look at it: the root cause's detail
-- (JSON, kept for queued failures and the first failure of an issue or cycle) and its feature
-- tokens (JSON array, kept with the detail; labels train on them).
ALTER TABLE occurrences ADD COLUMN rule TEXT;
ALTER TABLE occurrences ADD COLUMN queue_reason TEXT;
ALTER TABLE occurrences ADD COLUMN resolved_at INTEGER;
ALTER TABLE occurrences ADD COLUMN resolved_by TEXT;
ALTER TABLE occurrences ADD COLUMN detail TEXT;
ALTER TABLE occurrences ADD COLUMN features TEXT;
CREATE INDEX occurrences_queue_idx ON occurrences (issue_id, id)
    WHERE queue_reason IS NOT NULL AND resolved_at IS NULL;
CREATE INDEX occurrences_observed_idx ON occurrences (observed_at);

-- A re-route (a class changed by a person or the judge) bumps `route`; its dispatches get the
-- idempotency key issue:cycle.route:sink, and the earlier ones are marked superseded.
ALTER TABLE issues ADD COLUMN route INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN superseded_at INTEGER;

CREATE TABLE labels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    failure_id  INTEGER NOT NULL REFERENCES occurrences (id) ON DELETE CASCADE,
    issue_id    INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    fingerprint TEXT    NOT NULL,
    from_class  TEXT    NOT NULL,
    to_class    TEXT    NOT NULL,
    note        TEXT    NOT NULL,
    features    TEXT    NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX labels_issue_idx ON labels (issue_id, id);

-- The learned model's latest snapshot (JSON) and the last label it has learned.
CREATE TABLE models (
    name       TEXT    PRIMARY KEY,
    last_label INTEGER NOT NULL,
    snapshot   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Every answer (or failure to answer) of the LLM judge.
CREATE TABLE judgements (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    failure_id  INTEGER NOT NULL REFERENCES occurrences (id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    class       TEXT,
    confidence  REAL,
    rationale   TEXT,
    raw         TEXT,
    model       TEXT,
    latency_ms  INTEGER,
    tokens      INTEGER,
    applied     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX judgements_failure_idx ON judgements (failure_id, id);
