//! The order read models, in SQLite: orders by status, revenue by product,
//! customer order history.

use factum::projection::sqlite::SqliteProjection;
use factum::projection::{ApplyError, Envelope};
use rusqlite::{params, Transaction};

use super::domain::OrderEvent;

fn decode(e: &Envelope) -> Result<Option<(&str, OrderEvent)>, ApplyError> {
    match e.stream().as_str().strip_prefix("order-") {
        Some(id) => Ok(Some((id, e.decode::<OrderEvent>()?))),
        None => Ok(None),
    }
}

/// `orders_by_status(order_id, customer, status, total)`.
#[derive(Clone, Default)]
pub struct OrdersByStatus;

impl SqliteProjection for OrdersByStatus {
    fn name(&self) -> &str {
        "orders_by_status"
    }
    fn schema(&self) -> &str {
        include_str!("sql/orders_by_status.sql")
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some((id, event)) = decode(e)? else {
            return Ok(());
        };
        let status = match &event {
            OrderEvent::Created { customer } => {
                tx.prepare_cached(
                    "INSERT INTO orders_by_status (order_id, customer, status) VALUES (?1, ?2, 'draft')",
                )?
                .execute(params![id, customer])?;
                return Ok(());
            }
            OrderEvent::ItemAdded {
                quantity,
                unit_price,
                ..
            } => {
                tx.prepare_cached(
                    "UPDATE orders_by_status SET total = total + ?2 WHERE order_id = ?1",
                )?
                .execute(params![id, *quantity as i64 * *unit_price as i64])?;
                return Ok(());
            }
            OrderEvent::Submitted { .. } => "submitted",
            OrderEvent::Paid { .. } => "paid",
            OrderEvent::Shipped => "shipped",
            OrderEvent::Delivered => "delivered",
            OrderEvent::Cancelled { .. } => "cancelled",
            OrderEvent::Returned { .. } => "returned",
        };
        tx.prepare_cached("UPDATE orders_by_status SET status = ?2 WHERE order_id = ?1")?
            .execute(params![id, status])?;
        Ok(())
    }
}

/// `revenue_by_product(product, units, revenue)`: paid orders, net of
/// refunds on cancel and return.
#[derive(Clone, Default)]
pub struct RevenueByProduct;

impl SqliteProjection for RevenueByProduct {
    fn name(&self) -> &str {
        "revenue_by_product"
    }
    fn schema(&self) -> &str {
        include_str!("sql/revenue_by_product.sql")
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some((id, event)) = decode(e)? else {
            return Ok(());
        };
        let sign = match event {
            OrderEvent::ItemAdded {
                product,
                quantity,
                unit_price,
            } => {
                tx.prepare_cached(
                    "INSERT INTO order_lines (order_id, product, amount, quantity) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, product, quantity as i64 * unit_price as i64, quantity])?;
                return Ok(());
            }
            OrderEvent::Paid { .. } => 1,
            OrderEvent::Cancelled { refund } | OrderEvent::Returned { refund } if refund > 0 => -1,
            _ => return Ok(()),
        };
        tx.prepare_cached(
            "INSERT INTO revenue_by_product (product, units, revenue)
             SELECT product, ?2 * sum(quantity), ?2 * sum(amount) FROM order_lines WHERE order_id = ?1 GROUP BY product
             ON CONFLICT (product) DO UPDATE SET units = units + excluded.units, revenue = revenue + excluded.revenue",
        )?
        .execute(params![id, sign])?;
        Ok(())
    }
}

/// `customer_order_history(position, customer, order_id, event, at)`.
#[derive(Clone, Default)]
pub struct CustomerOrderHistory;

impl SqliteProjection for CustomerOrderHistory {
    fn name(&self) -> &str {
        "customer_order_history"
    }
    fn schema(&self) -> &str {
        include_str!("sql/customer_orders.sql")
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some((id, event)) = decode(e)? else {
            return Ok(());
        };
        if let OrderEvent::Created { customer } = &event {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO order_customers (order_id, customer) VALUES (?1, ?2)",
            )?
            .execute(params![id, customer])?;
        }
        tx.prepare_cached(
            "INSERT INTO customer_order_history (position, customer, order_id, event, at)
             SELECT ?1, customer, ?2, ?3, ?4 FROM order_customers WHERE order_id = ?2",
        )?
        .execute(params![
            e.position().0 as i64,
            id,
            e.event_type(),
            e.created().to_rfc3339()
        ])?;
        Ok(())
    }
}
