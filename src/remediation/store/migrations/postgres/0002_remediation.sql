-- Schema version 2 (PostgreSQL dialect): versions seen per service (version-aware regression) and
-- the start of each issue's current cycle (loop latency per cycle).
-- Keep the logical schema identical to ../sqlite/0002_remediation.sql.

CREATE TABLE service_versions (
    service    TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    first_seen BIGINT  NOT NULL,
    PRIMARY KEY (service, version)
);

-- Versions the stored failures already ran on.
INSERT INTO service_versions (service, version, first_seen)
    SELECT service, service_version, MIN(observed_at) FROM occurrences
    WHERE service_version IS NOT NULL AND service_version <> ''
    GROUP BY service, service_version;

ALTER TABLE issues ADD COLUMN cycle_started_at BIGINT NOT NULL DEFAULT 0;

-- first_seen for cycle 1; for later cycles, when the issue last moved to regressed.
UPDATE issues SET cycle_started_at = COALESCE(
    (SELECT MAX(t.at) FROM transitions t
     WHERE t.issue_id = issues.id AND t.to_state = 'regressed' AND t.cycle = issues.cycle),
    first_seen);

-- list_dispatches reads an issue's outbox rows.
CREATE INDEX outbox_issue_idx ON outbox (issue_id, id);
