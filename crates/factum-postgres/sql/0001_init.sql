-- Factum's PostgreSQL schema, version 1. `{schema}` is replaced by the
-- configured schema name (a validated identifier) before this runs.

CREATE SCHEMA IF NOT EXISTS {schema};

-- The head of the global log. Every append transaction locks this one row
-- first and keeps it until commit, so positions are assigned in commit
-- order with no gaps (ADR 6). Stream ids are assigned under the same lock.
CREATE TABLE {schema}.head (
    id             smallint PRIMARY KEY CHECK (id = 1),
    next_position  bigint NOT NULL,
    next_stream_id bigint NOT NULL,
    last_created   bigint NOT NULL
);
INSERT INTO {schema}.head VALUES (1, 0, 0, 0);

-- One row per stream: user streams, `$$meta` streams and the link streams
-- `$ce-<category>` / `$et-<type>`.
CREATE TABLE {schema}.streams (
    name          text PRIMARY KEY,
    id            bigint NOT NULL UNIQUE,
    last_revision bigint,               -- NULL: no event yet
    last_position bigint NOT NULL,
    last_event_id uuid NOT NULL,
    base          bigint NOT NULL,      -- first revision after the last soft delete
    deleted       boolean NOT NULL,
    tombstoned    boolean NOT NULL,
    metadata      bytea                 -- the stream's metadata JSON
);

-- The log. `position` is the global position (dense, commit order).
CREATE TABLE {schema}.events (
    position     bigint PRIMARY KEY,
    stream_id    bigint NOT NULL,
    stream_name  text NOT NULL,
    revision     bigint NOT NULL,
    id           uuid NOT NULL,
    event_type   text NOT NULL,
    content_type smallint NOT NULL,     -- 0 JSON, 1 binary
    flags        smallint NOT NULL,     -- 1 tombstone, 2 soft-deleting metadata
    created      bigint NOT NULL,       -- microseconds since the Unix epoch
    data         bytea NOT NULL,
    metadata     bytea NOT NULL
);
CREATE UNIQUE INDEX events_stream_revision ON {schema}.events (stream_id, revision);

-- Entries of the link streams `$ce-<category>` and `$et-<type>` (kept ASCII, like all our SQL: a database in another encoding than UTF8 must be able to run it).
CREATE TABLE {schema}.links (
    stream_id bigint NOT NULL,
    revision  bigint NOT NULL,
    position  bigint NOT NULL,
    PRIMARY KEY (stream_id, revision)
);
