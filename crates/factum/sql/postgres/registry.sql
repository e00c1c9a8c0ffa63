-- The registry of read models: which generation (schema) readers see.
CREATE TABLE IF NOT EXISTS factum_read_models (
    name            TEXT PRIMARY KEY,
    live_generation BIGINT NOT NULL
);
