CREATE TABLE IF NOT EXISTS daily_transactions (
    day               TEXT PRIMARY KEY,   -- YYYY-MM-DD (UTC)
    deposits          INTEGER NOT NULL DEFAULT 0,
    deposited         INTEGER NOT NULL DEFAULT 0,
    withdrawals       INTEGER NOT NULL DEFAULT 0,
    withdrawn         INTEGER NOT NULL DEFAULT 0
);
