-- Bookkeeping of one generation of a read model, in its own schema (the
-- search_path of every transaction of the generation). The checkpoint row
-- is updated in the same transaction as the read-model change it covers.
CREATE TABLE IF NOT EXISTS factum_checkpoint (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    position       BIGINT,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The position of a store's first event in the numbering `position`
    -- and the dead letters use: 1 (ADR 25). A table without this column
    -- was written in the old numbering, from 0; positions_from_one.sql
    -- converts it when the generation is opened.
    positions_from INTEGER NOT NULL DEFAULT 1
);
INSERT INTO factum_checkpoint (id, position) VALUES (1, NULL) ON CONFLICT (id) DO NOTHING;

-- Events the projection could not apply and skipped (failure policy
-- DeadLetter), recorded in the transaction that skipped them.
CREATE TABLE IF NOT EXISTS factum_dead_letters (
    position   BIGINT PRIMARY KEY,
    stream     TEXT NOT NULL,
    revision   BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    error      TEXT NOT NULL,
    data       BYTEA NOT NULL,
    failed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
