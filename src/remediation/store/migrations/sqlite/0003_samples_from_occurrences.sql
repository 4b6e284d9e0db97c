-- The sample of an issue's trace ids is read from its newest occurrences (indexed by
-- issue_id, observed_at), so each failure is one row fewer to write.
DROP TABLE issue_samples;
