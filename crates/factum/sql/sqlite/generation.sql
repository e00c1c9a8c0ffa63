-- Bookkeeping of one generation of a read model, beside its own tables.
-- The checkpoint row is updated in the same transaction as the read-model
-- change it covers.
CREATE TABLE IF NOT EXISTS factum_checkpoint (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    position       INTEGER,            -- last global position processed; NULL: none
    updated_at     INTEGER NOT NULL,   -- microseconds since the epoch
    -- The position of a store's first event in the numbering `position`
    -- and the dead letters use: 1 (ADR 25). A table without this column
    -- was written in the old numbering, from 0; positions_from_one.sql
    -- converts it when the generation is opened.
    positions_from INTEGER NOT NULL DEFAULT 1
);
INSERT OR IGNORE INTO factum_checkpoint (id, position, updated_at) VALUES (1, NULL, 0);

-- Events the projection could not apply and skipped (failure policy
-- DeadLetter), recorded in the transaction that skipped them.
CREATE TABLE IF NOT EXISTS factum_dead_letters (
    position   INTEGER PRIMARY KEY,
    stream     TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    error      TEXT NOT NULL,
    data       BLOB NOT NULL,
    failed_at  INTEGER NOT NULL
);
