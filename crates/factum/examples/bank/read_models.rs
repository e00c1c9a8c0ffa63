//! The bank's read models, in SQLite: account balances, account summary,
//! daily transaction summary.

use factum::projection::sqlite::SqliteProjection;
use factum::projection::{ApplyError, Envelope};
use rusqlite::{params, Transaction};

use super::domain::AccountEvent;

/// The account id of an event: its stream name without `account-`.
fn account_of(e: &Envelope) -> Option<&str> {
    e.stream().as_str().strip_prefix("account-")
}

/// Decodes account events; other categories are not ours.
fn decode(e: &Envelope) -> Result<Option<(&str, AccountEvent)>, ApplyError> {
    match account_of(e) {
        Some(id) => Ok(Some((id, e.decode::<AccountEvent>()?))),
        None => Ok(None),
    }
}

/// `account_balances(account, balance)`.
#[derive(Clone, Default)]
pub struct AccountBalances;

impl SqliteProjection for AccountBalances {
    fn name(&self) -> &str {
        "account_balances"
    }
    fn schema(&self) -> &str {
        include_str!("sql/account_balances.sql")
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some((id, event)) = decode(e)? else {
            return Ok(());
        };
        let delta: i64 = match event {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { amount, .. } => amount as i64,
            AccountEvent::Withdrawn { amount } => -(amount as i64),
            AccountEvent::Closed => return Ok(()),
        };
        tx.prepare_cached(
            "INSERT INTO account_balances (account, balance) VALUES (?1, ?2)
             ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
        )?
        .execute(params![id, delta])?;
        Ok(())
    }
}

/// `account_summary(account, owner, balance, transactions, status)`.
#[derive(Clone, Default)]
pub struct AccountSummary;

impl SqliteProjection for AccountSummary {
    fn name(&self) -> &str {
        "account_summary"
    }
    fn schema(&self) -> &str {
        include_str!("sql/account_summary.sql")
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some((id, event)) = decode(e)? else {
            return Ok(());
        };
        match event {
            AccountEvent::Opened { owner } => {
                tx.prepare_cached(
                    "INSERT INTO account_summary (account, owner, status) VALUES (?1, ?2, 'open')",
                )?
                .execute(params![id, owner])?;
            }
            AccountEvent::Deposited { amount, .. } => {
                tx.prepare_cached(
                    "UPDATE account_summary SET balance = balance + ?2, transactions = transactions + 1 WHERE account = ?1",
                )?
                .execute(params![id, amount as i64])?;
            }
            AccountEvent::Withdrawn { amount } => {
                tx.prepare_cached(
                    "UPDATE account_summary SET balance = balance - ?2, transactions = transactions + 1 WHERE account = ?1",
                )?
                .execute(params![id, amount as i64])?;
            }
            AccountEvent::Closed => {
                tx.prepare_cached(
                    "UPDATE account_summary SET status = 'closed' WHERE account = ?1",
                )?
                .execute(params![id])?;
            }
        }
        Ok(())
    }
}

/// `daily_transactions(day, deposits, deposited, withdrawals, withdrawn)`,
/// by the store's commit date (UTC).
#[derive(Clone, Default)]
pub struct DailyTransactions;

impl SqliteProjection for DailyTransactions {
    fn name(&self) -> &str {
        "daily_transactions"
    }
    fn schema(&self) -> &str {
        include_str!("sql/daily_transactions.sql")
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        let Some((_, event)) = decode(e)? else {
            return Ok(());
        };
        let day = e.created().to_rfc3339()[..10].to_owned();
        let (sql, amount) = match event {
            AccountEvent::Deposited { amount, .. } => (
                "INSERT INTO daily_transactions (day, deposits, deposited) VALUES (?1, 1, ?2)
                 ON CONFLICT (day) DO UPDATE SET deposits = deposits + 1, deposited = deposited + ?2",
                amount,
            ),
            AccountEvent::Withdrawn { amount } => (
                "INSERT INTO daily_transactions (day, withdrawals, withdrawn) VALUES (?1, 1, ?2)
                 ON CONFLICT (day) DO UPDATE SET withdrawals = withdrawals + 1, withdrawn = withdrawn + ?2",
                amount,
            ),
            _ => return Ok(()),
        };
        tx.prepare_cached(sql)?
            .execute(params![day, amount as i64])?;
        Ok(())
    }
}
