-- Snapshots of aggregates (PostgresSnapshotStore), in the store's schema
-- (the connection's search_path). One row per (stream, revision, schema
-- version); the newest `keep` rows per stream are kept.
-- Times are microseconds since the Unix epoch, as factum_core::Timestamp,
-- so a temporal bound compares exactly with the events' commit times.
CREATE TABLE IF NOT EXISTS factum_snapshots (
    stream         TEXT    NOT NULL,
    revision       BIGINT  NOT NULL,
    schema_version INTEGER NOT NULL,
    last_event_at  BIGINT  NOT NULL,
    state          BYTEA   NOT NULL,
    taken_at       BIGINT  NOT NULL,
    PRIMARY KEY (stream, revision, schema_version)
);
