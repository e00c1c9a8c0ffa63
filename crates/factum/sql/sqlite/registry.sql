-- The registry of read models in a directory: which generation readers see.
CREATE TABLE IF NOT EXISTS factum_read_models (
    name            TEXT PRIMARY KEY,
    live_generation INTEGER NOT NULL
);
