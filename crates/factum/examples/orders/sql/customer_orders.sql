-- Every order event of a customer, in order: their history.
CREATE TABLE IF NOT EXISTS customer_order_history (
    position   INTEGER PRIMARY KEY,
    customer   TEXT NOT NULL,
    order_id   TEXT NOT NULL,
    event      TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS customer_order_history_customer ON customer_order_history (customer);
-- Who placed each order (events after the first do not name the customer).
CREATE TABLE IF NOT EXISTS order_customers (
    order_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL
);
