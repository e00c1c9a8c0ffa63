-- Order lines, to know what a payment or a refund covers.
CREATE TABLE IF NOT EXISTS order_lines (
    order_id   TEXT NOT NULL,
    product    TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    quantity   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS order_lines_order ON order_lines (order_id);
-- Revenue of paid orders, net of refunds.
CREATE TABLE IF NOT EXISTS revenue_by_product (
    product  TEXT PRIMARY KEY,
    units    INTEGER NOT NULL DEFAULT 0,
    revenue  INTEGER NOT NULL DEFAULT 0
);
