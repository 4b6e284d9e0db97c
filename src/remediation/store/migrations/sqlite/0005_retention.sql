-- Schema version 5 (SQLite dialect): what the retention sweep reads.
-- Keep the logical schema identical to ../postgres/0005_retention.sql.

-- A failure a label points at is kept (the label is training data); deleting an occurrence
-- checks its labels, so they are indexed by failure.
CREATE INDEX labels_failure_idx ON labels (failure_id);
-- The newest failure of an issue that kept its detail and feature tokens is kept (a person, the
-- judge and a relabel read them); there are few such rows, so the index is small.
CREATE INDEX occurrences_features_idx ON occurrences (issue_id, id) WHERE features IS NOT NULL;
