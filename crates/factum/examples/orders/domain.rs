//! The order lifecycle: create, add item, submit, pay, ship, deliver,
//! cancel, return, with the transitions enforced:
//!
//! ```text
//! Draft --submit--> Submitted --pay--> Paid --ship--> Shipped --deliver--> Delivered --return--> Returned
//!   |                  |                 |
//!   +------cancel------+------cancel-----+   (a paid order is refunded on cancel)
//! ```

use factum::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// What happened to an order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    #[serde(rename = "OrderCreated")]
    Created { customer: String },
    #[serde(rename = "ItemAdded")]
    ItemAdded {
        product: String,
        quantity: u32,
        unit_price: u64,
    },
    #[serde(rename = "OrderSubmitted")]
    Submitted { total: u64 },
    #[serde(rename = "OrderPaid")]
    Paid { amount: u64 },
    #[serde(rename = "OrderShipped")]
    Shipped,
    #[serde(rename = "OrderDelivered")]
    Delivered,
    #[serde(rename = "OrderCancelled")]
    Cancelled { refund: u64 },
    #[serde(rename = "OrderReturned")]
    Returned { refund: u64 },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Created { .. } => "OrderCreated",
            OrderEvent::ItemAdded { .. } => "ItemAdded",
            OrderEvent::Submitted { .. } => "OrderSubmitted",
            OrderEvent::Paid { .. } => "OrderPaid",
            OrderEvent::Shipped => "OrderShipped",
            OrderEvent::Delivered => "OrderDelivered",
            OrderEvent::Cancelled { .. } => "OrderCancelled",
            OrderEvent::Returned { .. } => "OrderReturned",
        }
    }
}

/// What a caller can ask of an order.
#[derive(Debug, Clone)]
pub enum OrderCommand {
    Create {
        customer: String,
    },
    AddItem {
        product: String,
        quantity: u32,
        unit_price: u64,
    },
    Submit,
    Pay {
        amount: u64,
    },
    Ship,
    Deliver,
    Cancel,
    Return,
}

/// Where an order is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OrderStatus {
    #[default]
    New,
    Draft,
    Submitted,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    Returned,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("cannot {action} an order that is {status:?}")]
    InvalidTransition {
        action: &'static str,
        status: OrderStatus,
    },
    #[error("an order needs at least one item to be submitted")]
    Empty,
    #[error("quantity must be positive")]
    ZeroQuantity,
    #[error("payment of {paid} does not match the total {total}")]
    WrongAmount { paid: u64, total: u64 },
}

/// An order's state.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Order {
    pub status: OrderStatus,
    pub customer: String,
    pub items: Vec<(String, u32, u64)>,
    pub paid: u64,
}

impl Order {
    pub fn total(&self) -> u64 {
        self.items.iter().map(|(_, q, p)| *q as u64 * p).sum()
    }
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Created { customer } => {
                self.customer = customer.clone();
                self.status = OrderStatus::Draft;
            }
            OrderEvent::ItemAdded {
                product,
                quantity,
                unit_price,
            } => self.items.push((product.clone(), *quantity, *unit_price)),
            OrderEvent::Submitted { .. } => self.status = OrderStatus::Submitted,
            OrderEvent::Paid { amount } => {
                self.paid = *amount;
                self.status = OrderStatus::Paid;
            }
            OrderEvent::Shipped => self.status = OrderStatus::Shipped,
            OrderEvent::Delivered => self.status = OrderStatus::Delivered,
            OrderEvent::Cancelled { .. } => self.status = OrderStatus::Cancelled,
            OrderEvent::Returned { .. } => self.status = OrderStatus::Returned,
        }
    }

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus as S;
        let refuse = |action| {
            Err(OrderError::InvalidTransition {
                action,
                status: self.status,
            })
        };
        match (command, self.status) {
            (OrderCommand::Create { customer }, S::New) => Ok(vec![OrderEvent::Created {
                customer: customer.clone(),
            }]),
            (OrderCommand::Create { .. }, _) => refuse("create"),
            (OrderCommand::AddItem { quantity: 0, .. }, S::Draft) => Err(OrderError::ZeroQuantity),
            (
                OrderCommand::AddItem {
                    product,
                    quantity,
                    unit_price,
                },
                S::Draft,
            ) => Ok(vec![OrderEvent::ItemAdded {
                product: product.clone(),
                quantity: *quantity,
                unit_price: *unit_price,
            }]),
            (OrderCommand::AddItem { .. }, _) => refuse("add an item to"),
            (OrderCommand::Submit, S::Draft) if self.items.is_empty() => Err(OrderError::Empty),
            (OrderCommand::Submit, S::Draft) => Ok(vec![OrderEvent::Submitted {
                total: self.total(),
            }]),
            (OrderCommand::Submit, _) => refuse("submit"),
            (OrderCommand::Pay { amount }, S::Submitted) if *amount != self.total() => {
                Err(OrderError::WrongAmount {
                    paid: *amount,
                    total: self.total(),
                })
            }
            (OrderCommand::Pay { amount }, S::Submitted) => {
                Ok(vec![OrderEvent::Paid { amount: *amount }])
            }
            (OrderCommand::Pay { .. }, _) => refuse("pay"),
            (OrderCommand::Ship, S::Paid) => Ok(vec![OrderEvent::Shipped]),
            (OrderCommand::Ship, _) => refuse("ship"),
            (OrderCommand::Deliver, S::Shipped) => Ok(vec![OrderEvent::Delivered]),
            (OrderCommand::Deliver, _) => refuse("deliver"),
            (OrderCommand::Cancel, S::Draft | S::Submitted | S::Paid) => {
                Ok(vec![OrderEvent::Cancelled { refund: self.paid }])
            }
            (OrderCommand::Cancel, _) => refuse("cancel"),
            (OrderCommand::Return, S::Delivered) => {
                Ok(vec![OrderEvent::Returned { refund: self.paid }])
            }
            (OrderCommand::Return, _) => refuse("return"),
        }
    }
}
