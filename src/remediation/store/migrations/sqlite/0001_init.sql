-- Schema version 1 (SQLite dialect): issues, occurrences, lifecycle transitions and the dispatch outbox.
-- Times are unix milliseconds. Keep the logical schema identical to ../postgres/0001_init.sql.

CREATE TABLE issues (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint     TEXT    NOT NULL UNIQUE,
    class           TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    confidence      REAL    NOT NULL,
    agent           TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    remediation     TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'open',
    cycle           INTEGER NOT NULL DEFAULT 1,
    occurrences     INTEGER NOT NULL DEFAULT 1,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    classified_at   INTEGER,
    dispatched_at   INTEGER,
    shipped_at      INTEGER,
    shipped_version TEXT,
    verified_at     INTEGER
);
CREATE INDEX issues_state_idx ON issues (state);
CREATE INDEX issues_class_idx ON issues (class);
CREATE INDEX issues_agent_idx ON issues (agent);

CREATE TABLE issue_samples (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id    INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    trace_id    TEXT    NOT NULL,
    observed_at INTEGER NOT NULL
);
CREATE INDEX issue_samples_issue_idx ON issue_samples (issue_id, id);

CREATE TABLE issue_seen (
    issue_id INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    kind     TEXT    NOT NULL CHECK (kind IN ('agent', 'service', 'version')),
    value    TEXT    NOT NULL,
    PRIMARY KEY (issue_id, kind, value)
);

CREATE TABLE occurrences (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id        INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    trace_id        TEXT    NOT NULL,
    root_span_id    TEXT    NOT NULL,
    class           TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    confidence      REAL    NOT NULL,
    agent           TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    service_version TEXT,
    observed_at     INTEGER NOT NULL,
    signal          TEXT    NOT NULL
);
CREATE INDEX occurrences_issue_idx ON occurrences (issue_id, observed_at);

CREATE TABLE transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id   INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    cycle      INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    reason     TEXT    NOT NULL
);
CREATE INDEX transitions_issue_idx ON transitions (issue_id, id);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id        INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    cycle           INTEGER NOT NULL,
    sink            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
