-- Schema version 1 (PostgreSQL dialect): issues, occurrences, lifecycle transitions and the dispatch outbox.
-- Times are unix milliseconds. Keep the logical schema identical to ../sqlite/0001_init.sql.

CREATE TABLE issues (
    id              BIGSERIAL PRIMARY KEY,
    fingerprint     TEXT    NOT NULL UNIQUE,
    class           TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    confidence      DOUBLE PRECISION    NOT NULL,
    agent           TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    remediation     TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'open',
    cycle           BIGINT  NOT NULL DEFAULT 1,
    occurrences     BIGINT  NOT NULL DEFAULT 1,
    first_seen      BIGINT  NOT NULL,
    last_seen       BIGINT  NOT NULL,
    classified_at   BIGINT,
    dispatched_at   BIGINT,
    shipped_at      BIGINT,
    shipped_version TEXT,
    verified_at     BIGINT
);
CREATE INDEX issues_state_idx ON issues (state);
CREATE INDEX issues_class_idx ON issues (class);
CREATE INDEX issues_agent_idx ON issues (agent);

CREATE TABLE issue_samples (
    id          BIGSERIAL PRIMARY KEY,
    issue_id    BIGINT  NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    trace_id    TEXT    NOT NULL,
    observed_at BIGINT  NOT NULL
);
CREATE INDEX issue_samples_issue_idx ON issue_samples (issue_id, id);

CREATE TABLE issue_seen (
    issue_id BIGINT  NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    kind     TEXT    NOT NULL CHECK (kind IN ('agent', 'service', 'version')),
    value    TEXT    NOT NULL,
    PRIMARY KEY (issue_id, kind, value)
);

CREATE TABLE occurrences (
    id              BIGSERIAL PRIMARY KEY,
    issue_id        BIGINT  NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    trace_id        TEXT    NOT NULL,
    root_span_id    TEXT    NOT NULL,
    class           TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    confidence      DOUBLE PRECISION    NOT NULL,
    agent           TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    service_version TEXT,
    observed_at     BIGINT  NOT NULL,
    signal          JSONB   NOT NULL
);
CREATE INDEX occurrences_issue_idx ON occurrences (issue_id, observed_at);

CREATE TABLE transitions (
    id         BIGSERIAL PRIMARY KEY,
    issue_id   BIGINT  NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    cycle      BIGINT  NOT NULL,
    at         BIGINT  NOT NULL,
    reason     TEXT    NOT NULL
);
CREATE INDEX transitions_issue_idx ON transitions (issue_id, id);

CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    issue_id        BIGINT  NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    cycle           BIGINT  NOT NULL,
    sink            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    payload         JSONB   NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
