CREATE TABLE IF NOT EXISTS account_balances (
    account TEXT PRIMARY KEY,
    balance INTEGER NOT NULL
);
