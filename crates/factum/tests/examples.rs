//! Runs the two examples' scenarios (the same code `cargo run --example`
//! runs) and checks what they report, then their `rebuild` commands.

// Each example includes `examples/common/rebuild.rs`: separate crates under
// `cargo run --example`, two modules of this one test crate.
#![allow(clippy::duplicate_mod)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use factum::projection::ProgressBar;

#[path = "../examples/bank/main.rs"]
#[allow(dead_code)]
mod bank;

#[path = "../examples/orders/main.rs"]
#[allow(dead_code)]
mod orders;

#[tokio::test]
async fn bank_example() {
    let dir = tempfile::tempdir().unwrap();
    let r = bank::scenario::run(dir.path()).await.unwrap();
    assert_eq!(r.balances, vec![("alice".into(), 60), ("bob".into(), 0)]);
    assert_eq!(
        r.summaries,
        vec![
            ("alice".into(), "Alice".into(), 60, 2, "open".into()),
            ("bob".into(), "Bob".into(), 0, 2, "closed".into()),
        ]
    );
    assert_eq!(r.daily_totals, (2, 130, 2, 70));
    assert_eq!(
        r.refusals,
        vec![
            "insufficient funds: balance 30, requested 31",
            "cannot close with a balance of 30",
            "the account is closed",
        ]
    );
    assert_eq!(r.alice_balance_before_withdrawal, 100);
    assert_eq!(r.alice_balance_at_revision_1, 100);
    assert_eq!(r.alice_audit_window, vec!["MoneyWithdrawn"]);
    assert_eq!(r.rebuilt_generation, 2);
    assert!(r.rebuild_reports > 0);

    // `bank rebuild DIR account_balances daily_transactions`: both move to
    // generation 2 with the same content; account_summary is left alone.
    let out = Captured::default();
    let names = ["account_balances".to_string(), "daily_transactions".into()];
    let rebuilt = bank::rebuild(dir.path(), &names, |m| out.bar(m))
        .await
        .unwrap();
    assert_eq!(
        rebuilt,
        vec![
            ("account_balances".into(), 2),
            ("daily_transactions".into(), 2)
        ]
    );
    let text = out.text();
    assert!(
        text.contains("account_balances [##############################] 100%"),
        "{text}"
    );
    assert!(
        text.contains("daily_transactions: generation 2 is live"),
        "{text}"
    );
    let models = dir.path().join("read-models");
    let balances = factum::projection::sqlite::SqliteReadModel::new(
        &models,
        bank::read_models::AccountBalances,
    )
    .unwrap();
    let rows: Vec<(String, i64)> = balances
        .reader()
        .unwrap()
        .prepare("SELECT account, balance FROM account_balances ORDER BY account")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, r.balances, "the rebuild gives the same balances");
    // All models (the summary goes 2 → 3); unknown names and missing stores
    // are clear errors.
    let all = bank::rebuild(dir.path(), &[], |m| out.bar(m))
        .await
        .unwrap();
    assert_eq!(all[1], ("account_summary".into(), 3));
    let unknown = bank::rebuild(dir.path(), &["nope".into()], |m| out.bar(m)).await;
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("known: account_balances"));
    let empty = tempfile::tempdir().unwrap();
    let missing = bank::rebuild(empty.path(), &[], |m| out.bar(m)).await;
    assert!(missing.unwrap_err().to_string().contains("no store at"));
}

/// Collects what progress bars write.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn bar(&self, model: &str) -> ProgressBar {
        ProgressBar::new(model, Box::new(self.clone()), false)
    }
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn orders_example() {
    let dir = tempfile::tempdir().unwrap();
    let r = orders::scenario::run(dir.path()).await.unwrap();
    assert_eq!(
        r.by_status,
        vec![
            ("cancelled".into(), 1),
            ("delivered".into(), 1),
            ("draft".into(), 1),
            ("returned".into(), 1),
        ]
    );
    // Order 1 (2 books, 1 pen) was returned and order 3 (lamp) cancelled
    // after payment: only order 2's book counts.
    assert_eq!(
        r.revenue,
        vec![
            ("book".into(), 1, 15),
            ("lamp".into(), 0, 0),
            ("pen".into(), 0, 0)
        ]
    );
    assert_eq!(r.carol_history.len(), 8 + 6);
    assert_eq!(r.carol_history[0], ("1".into(), "OrderCreated".into()));
    assert_eq!(
        r.carol_history.last().unwrap(),
        &("2".into(), "OrderDelivered".into())
    );
    assert_eq!(r.refusals.len(), 5);
    assert_eq!(
        r.order_1_status_before_shipping,
        orders::domain::OrderStatus::Paid
    );
    assert_eq!(r.rebuilt_generation, 2);
    let out = Captured::default();
    let rebuilt = orders::rebuild(dir.path(), &["revenue_by_product".into()], |m| out.bar(m))
        .await
        .unwrap();
    assert_eq!(rebuilt, vec![("revenue_by_product".into(), 3)]);
    assert!(out
        .text()
        .contains("revenue_by_product: generation 3 is live"));
}
