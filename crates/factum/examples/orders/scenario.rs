//! The order scenario, shared by `main.rs` and the tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use factum::projection::sqlite::SqliteReadModel;
use factum::{CommandContext, ProjectionRunner, Repository, RepositoryError, RunnerOptions};
use factum_core::Timestamp;
use factum_engine::Engine;

use super::domain::{Order, OrderCommand as Cmd, OrderError, OrderStatus};
use super::read_models::{CustomerOrderHistory, OrdersByStatus, RevenueByProduct};

/// What the scenario observed (printed by `main`, asserted by the tests).
#[derive(Debug)]
#[allow(dead_code)]
pub struct OrdersReport {
    /// (status, count) from `orders_by_status`.
    pub by_status: Vec<(String, i64)>,
    /// (product, units, revenue) from `revenue_by_product`.
    pub revenue: Vec<(String, i64, i64)>,
    /// Carol's history: (order, event type).
    pub carol_history: Vec<(String, String)>,
    /// Refused transitions, as the domain reported them.
    pub refusals: Vec<String>,
    /// Order 1's status as of the time before it shipped.
    pub order_1_status_before_shipping: OrderStatus,
    /// The generation of `revenue_by_product` after the rebuild.
    pub rebuilt_generation: u64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs the scenario with a store and read models under `dir`.
pub async fn run(dir: &Path) -> Result<OrdersReport, Error> {
    let store = Arc::new(Engine::open(dir.join("store"))?);
    let repo = Repository::<_, Order>::new(store.clone());
    let models = dir.join("read-models");
    let status_model = SqliteReadModel::new(&models, OrdersByStatus)?;
    let revenue_model = SqliteReadModel::new(&models, RevenueByProduct)?;
    let history_model = SqliteReadModel::new(&models, CustomerOrderHistory)?;
    let status = ProjectionRunner::start(
        store.clone(),
        status_model.clone(),
        RunnerOptions::default(),
    )
    .await?;
    let revenue = ProjectionRunner::start(
        store.clone(),
        revenue_model.clone(),
        RunnerOptions::default(),
    )
    .await?;
    let history = ProjectionRunner::start(
        store.clone(),
        history_model.clone(),
        RunnerOptions::default(),
    )
    .await?;

    let ctx = CommandContext::new().actor("shop-frontend");
    let mut refusals = Vec::new();
    let mut refuse = |r: Result<_, RepositoryError<OrderError>>| match r {
        Err(RepositoryError::Domain(e)) => refusals.push(e.to_string()),
        Err(other) => refusals.push(format!("unexpected: {other}")),
        Ok(_) => refusals.push("unexpectedly accepted".into()),
    };
    let item = |product: &str, quantity, unit_price| Cmd::AddItem {
        product: product.into(),
        quantity,
        unit_price,
    };
    // Order 1: the happy path to delivery, then returned.
    repo.execute(
        "1",
        &Cmd::Create {
            customer: "carol".into(),
        },
        &ctx,
    )
    .await?;
    repo.execute("1", &item("book", 2, 15), &ctx).await?;
    repo.execute("1", &item("pen", 1, 3), &ctx).await?;
    refuse(repo.execute("1", &Cmd::Ship, &ctx).await); // not paid
    repo.execute("1", &Cmd::Submit, &ctx).await?;
    refuse(repo.execute("1", &item("pen", 1, 3), &ctx).await); // submitted: no more items
    refuse(repo.execute("1", &Cmd::Pay { amount: 1 }, &ctx).await); // wrong amount
    repo.execute("1", &Cmd::Pay { amount: 33 }, &ctx).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_shipping = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    repo.execute("1", &Cmd::Ship, &ctx).await?;
    refuse(repo.execute("1", &Cmd::Cancel, &ctx).await); // shipped: too late
    repo.execute("1", &Cmd::Deliver, &ctx).await?;
    repo.execute("1", &Cmd::Return, &ctx).await?;
    // Order 2: paid and shipped and delivered.
    repo.execute(
        "2",
        &Cmd::Create {
            customer: "carol".into(),
        },
        &ctx,
    )
    .await?;
    repo.execute("2", &item("book", 1, 15), &ctx).await?;
    repo.execute("2", &Cmd::Submit, &ctx).await?;
    repo.execute("2", &Cmd::Pay { amount: 15 }, &ctx).await?;
    repo.execute("2", &Cmd::Ship, &ctx).await?;
    repo.execute("2", &Cmd::Deliver, &ctx).await?;
    // Order 3: paid then cancelled (refunded). Order 4: an empty draft.
    repo.execute(
        "3",
        &Cmd::Create {
            customer: "dan".into(),
        },
        &ctx,
    )
    .await?;
    repo.execute("3", &item("lamp", 1, 40), &ctx).await?;
    repo.execute("3", &Cmd::Submit, &ctx).await?;
    repo.execute("3", &Cmd::Pay { amount: 40 }, &ctx).await?;
    repo.execute("3", &Cmd::Cancel, &ctx).await?;
    let last = repo
        .execute(
            "4",
            &Cmd::Create {
                customer: "dan".into(),
            },
            &ctx,
        )
        .await?;
    refuse(repo.execute("4", &Cmd::Submit, &ctx).await); // empty

    let at = last.position.ok_or("nothing appended")?;
    status.wait_for(at, Duration::from_secs(10)).await?;
    revenue.wait_for(at, Duration::from_secs(10)).await?;
    history.wait_for(at, Duration::from_secs(10)).await?;

    let then = repo.load_as_of("1", before_shipping).await?;
    let rebuilt_generation = revenue
        .rebuild(|p| {
            println!(
                "rebuilding revenue_by_product: {:.0}%",
                p.fraction() * 100.0
            )
        })
        .await?;

    let conn = status_model.reader()?;
    let by_status = conn
        .prepare("SELECT status, count(*) FROM orders_by_status GROUP BY status ORDER BY status")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let conn = revenue_model.reader()?;
    let revenue_rows = conn
        .prepare("SELECT product, units, revenue FROM revenue_by_product ORDER BY product")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let conn = history_model.reader()?;
    let carol_history = conn
        .prepare("SELECT order_id, event FROM customer_order_history WHERE customer = 'carol' ORDER BY position")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    status.stop().await;
    revenue.stop().await;
    history.stop().await;
    store.close()?;
    Ok(OrdersReport {
        by_status,
        revenue: revenue_rows,
        carol_history,
        refusals,
        order_1_status_before_shipping: then.state.status,
        rebuilt_generation,
    })
}
