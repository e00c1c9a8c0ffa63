CREATE TABLE IF NOT EXISTS account_summary (
    account      TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    balance      INTEGER NOT NULL DEFAULT 0,
    transactions INTEGER NOT NULL DEFAULT 0,
    status       TEXT NOT NULL
);
