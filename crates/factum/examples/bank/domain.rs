//! The bank account domain: open, deposit, withdraw, close.
//!
//! Rules: no overdraft; no activity on a closed account; close only at a
//! zero balance. Event schema history (handled by [`upcasters`]):
//! `AccountOpened` v1 had `name`, v2 calls it `owner`; `MoneyDeposited` v1
//! had no `currency`, v2 defaults it to `EUR`.

use factum::{Aggregate, DomainEvent, Upcasters};
use serde::{Deserialize, Serialize};

/// What happened to an account.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    /// The account was opened.
    #[serde(rename = "AccountOpened")]
    Opened { owner: String },
    /// Money came in.
    #[serde(rename = "MoneyDeposited")]
    Deposited { amount: u64, currency: String },
    /// Money went out.
    #[serde(rename = "MoneyWithdrawn")]
    Withdrawn { amount: u64 },
    /// The account was closed.
    #[serde(rename = "AccountClosed")]
    Closed,
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "AccountOpened",
            AccountEvent::Deposited { .. } => "MoneyDeposited",
            AccountEvent::Withdrawn { .. } => "MoneyWithdrawn",
            AccountEvent::Closed => "AccountClosed",
        }
    }

    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            "AccountOpened" | "MoneyDeposited" => 2,
            _ => 1,
        }
    }
}

/// The conversions of old event versions.
pub fn upcasters() -> Upcasters {
    Upcasters::new()
        .rename_field("AccountOpened", 1, "name", "owner")
        .add_field("MoneyDeposited", 1, "currency", serde_json::json!("EUR"))
}

/// What a caller can ask of an account.
#[derive(Debug, Clone)]
pub enum AccountCommand {
    /// Open it for an owner.
    Open { owner: String },
    /// Put money in.
    Deposit { amount: u64 },
    /// Take money out.
    Withdraw { amount: u64 },
    /// Close it.
    Close,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountError {
    /// Open on an account that exists.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Anything but open on an account never opened.
    #[error("the account is not open")]
    NotOpen,
    /// Anything on a closed account.
    #[error("the account is closed")]
    Closed,
    /// A zero amount.
    #[error("the amount must be positive")]
    ZeroAmount,
    /// A withdrawal beyond the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
    /// Closing with money left.
    #[error("cannot close with a balance of {0}")]
    NonZeroBalance(u64),
}

/// Where an account is in its life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq)]
pub enum Status {
    /// Not opened yet.
    #[default]
    New,
    /// Open.
    Open,
    /// Closed.
    Closed,
}

/// An account's state.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Account {
    pub status: Status,
    pub owner: String,
    pub balance: u64,
    pub transactions: u64,
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.status = Status::Open;
                self.owner = owner.clone();
            }
            AccountEvent::Deposited { amount, .. } => {
                self.balance += amount;
                self.transactions += 1;
            }
            AccountEvent::Withdrawn { amount } => {
                self.balance = self.balance.saturating_sub(*amount);
                self.transactions += 1;
            }
            AccountEvent::Closed => self.status = Status::Closed,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match (self.status, command) {
            (Status::New, AccountCommand::Open { owner }) => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            (Status::New, _) => Err(AccountError::NotOpen),
            (Status::Closed, _) => Err(AccountError::Closed),
            (Status::Open, AccountCommand::Open { .. }) => Err(AccountError::AlreadyOpen),
            (Status::Open, AccountCommand::Deposit { amount: 0 })
            | (Status::Open, AccountCommand::Withdraw { amount: 0 }) => {
                Err(AccountError::ZeroAmount)
            }
            (Status::Open, AccountCommand::Deposit { amount }) => {
                Ok(vec![AccountEvent::Deposited {
                    amount: *amount,
                    currency: "EUR".into(),
                }])
            }
            (Status::Open, AccountCommand::Withdraw { amount }) if *amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: *amount,
                })
            }
            (Status::Open, AccountCommand::Withdraw { amount }) => {
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
            (Status::Open, AccountCommand::Close) if self.balance > 0 => {
                Err(AccountError::NonZeroBalance(self.balance))
            }
            (Status::Open, AccountCommand::Close) => Ok(vec![AccountEvent::Closed]),
        }
    }
}
