//! Runs the two examples' scenarios (the same code `cargo run --example`
//! runs) and checks what they report.

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
}
