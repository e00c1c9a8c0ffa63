-- Version 4: crypto-shredding's subject keys (ADR 36), outside the event
-- tables. One row per data subject: its key id and its key sealed under
-- the master key (XChaCha20-Poly1305, the subject as associated data), so
-- the database alone never holds a usable key. `forget` deletes the row.
CREATE TABLE {schema}.subject_keys (
    subject text PRIMARY KEY,
    key_id  bytea NOT NULL,
    sealed  bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
