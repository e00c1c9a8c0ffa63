//! The bank scenario, shared by `main.rs` and the tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use factum::projection::sqlite::SqliteReadModel;
use factum::{
    CommandContext, ProjectionRunner, Repository, RepositoryError, RunnerOptions, SnapshotPolicy,
};
use factum_core::Timestamp;
use factum_engine::Engine;

use super::domain::{Account, AccountCommand as Cmd, AccountError, AccountEvent};
use super::read_models::{AccountBalances, AccountSummary, DailyTransactions};

/// What the scenario observed (printed by `main`, asserted by the tests).
#[derive(Debug)]
#[allow(dead_code)]
pub struct BankReport {
    /// `account_balances` rows.
    pub balances: Vec<(String, i64)>,
    /// `account_summary` rows: (account, owner, balance, transactions, status).
    pub summaries: Vec<(String, String, i64, i64, String)>,
    /// `daily_transactions` totals: (deposits, deposited, withdrawals, withdrawn).
    pub daily_totals: (i64, i64, i64, i64),
    /// The refusals, as the domain reported them.
    pub refusals: Vec<String>,
    /// Alice's balance as of the time before her withdrawal.
    pub alice_balance_before_withdrawal: u64,
    /// Alice's balance after her first two events (revision 1).
    pub alice_balance_at_revision_1: u64,
    /// Event types on Alice's account in the audit window.
    pub alice_audit_window: Vec<String>,
    /// The generation of `account_summary` after the rebuild.
    pub rebuilt_generation: u64,
    /// Progress reports seen during the rebuild.
    pub rebuild_reports: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs the scenario with a store and read models under `dir`.
pub async fn run(dir: &Path) -> Result<BankReport, Error> {
    let store = Arc::new(Engine::open(dir.join("store"))?);
    let repo = Repository::<_, Account>::new(store.clone())
        .snapshots(SnapshotPolicy::every(3))
        .upcasters(super::domain::upcasters());
    let models = dir.join("read-models");
    let balances_model = SqliteReadModel::new(&models, AccountBalances)?;
    let summary_model = SqliteReadModel::new(&models, AccountSummary)?;
    let daily_model = SqliteReadModel::new(&models, DailyTransactions)?;
    let balances = ProjectionRunner::start(
        store.clone(),
        balances_model.clone(),
        RunnerOptions::default(),
    )
    .await?;
    let summary = ProjectionRunner::start(
        store.clone(),
        summary_model.clone(),
        RunnerOptions::default(),
    )
    .await?;
    let daily =
        ProjectionRunner::start(store.clone(), daily_model.clone(), RunnerOptions::default())
            .await?;

    let teller = CommandContext::new()
        .actor("teller-7")
        .with("branch", "north");
    let mut refusals = Vec::new();
    let mut refuse = |r: Result<_, RepositoryError<AccountError>>| match r {
        Err(RepositoryError::Domain(e)) => refusals.push(e.to_string()),
        Err(other) => refusals.push(format!("unexpected: {other}")),
        Ok(_) => refusals.push("unexpectedly accepted".into()),
    };

    repo.execute(
        "alice",
        &Cmd::Open {
            owner: "Alice".into(),
        },
        &teller,
    )
    .await?;
    repo.execute("alice", &Cmd::Deposit { amount: 100 }, &teller)
        .await?;
    repo.execute(
        "bob",
        &Cmd::Open {
            owner: "Bob".into(),
        },
        &teller,
    )
    .await?;
    repo.execute("bob", &Cmd::Deposit { amount: 30 }, &teller)
        .await?;
    refuse(
        repo.execute("bob", &Cmd::Withdraw { amount: 31 }, &teller)
            .await,
    ); // no overdraft
    refuse(repo.execute("bob", &Cmd::Close, &teller).await); // close only at zero
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_withdrawal = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    repo.execute("alice", &Cmd::Withdraw { amount: 40 }, &teller)
        .await?;
    repo.execute("bob", &Cmd::Withdraw { amount: 30 }, &teller)
        .await?;
    let closed = repo.execute("bob", &Cmd::Close, &teller).await?;
    refuse(
        repo.execute("bob", &Cmd::Deposit { amount: 1 }, &teller)
            .await,
    ); // closed

    // Read-your-writes: wait until each read model has Bob's closing.
    let at = closed.position.ok_or("the close appended nothing")?;
    balances.wait_for(at, Duration::from_secs(10)).await?;
    summary.wait_for(at, Duration::from_secs(10)).await?;
    daily.wait_for(at, Duration::from_secs(10)).await?;

    // Temporal queries.
    let then = repo.load_as_of("alice", before_withdrawal).await?;
    let at_rev_1 = repo
        .load_at_revision("alice", factum_core::StreamRevision(1))
        .await?;
    let window = repo
        .events_between("alice", before_withdrawal, Timestamp::now())
        .await?;
    let alice_audit_window = window
        .iter()
        .map(|r| {
            match &r.event {
                AccountEvent::Opened { .. } => "AccountOpened",
                AccountEvent::Deposited { .. } => "MoneyDeposited",
                AccountEvent::Withdrawn { .. } => "MoneyWithdrawn",
                AccountEvent::Closed => "AccountClosed",
            }
            .to_string()
        })
        .collect();

    // Rebuild the summary beside the live one, then switch.
    let mut rebuild_reports = 0;
    let rebuilt_generation = summary
        .rebuild(|p| {
            rebuild_reports += 1;
            println!("rebuilding account_summary: {:.0}%", p.fraction() * 100.0);
        })
        .await?;

    let conn = balances_model.reader()?;
    let balances_rows = conn
        .prepare("SELECT account, balance FROM account_balances ORDER BY account")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let conn = summary_model.reader()?;
    let summaries = conn
        .prepare("SELECT account, owner, balance, transactions, status FROM account_summary ORDER BY account")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    let conn = daily_model.reader()?;
    let daily_totals = conn.query_row(
        "SELECT sum(deposits), sum(deposited), sum(withdrawals), sum(withdrawn) FROM daily_transactions",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    balances.stop().await;
    summary.stop().await;
    daily.stop().await;
    store.close()?;
    Ok(BankReport {
        balances: balances_rows,
        summaries,
        daily_totals,
        refusals,
        alice_balance_before_withdrawal: then.state.balance,
        alice_balance_at_revision_1: at_rev_1.state.balance,
        alice_audit_window,
        rebuilt_generation,
        rebuild_reports,
    })
}
