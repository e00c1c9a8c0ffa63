CREATE TABLE IF NOT EXISTS orders_by_status (
    order_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    status   TEXT NOT NULL,
    total    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orders_by_status_status ON orders_by_status (status);
