-- Stores a snapshot; a second one at the same revision and schema version
-- replaces the first.
INSERT INTO factum_snapshots (stream, revision, schema_version, last_event_at, state, taken_at)
VALUES ($1, $2, $3, $4, $5, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
ON CONFLICT (stream, revision, schema_version) DO UPDATE
SET last_event_at = excluded.last_event_at, state = excluded.state, taken_at = excluded.taken_at
