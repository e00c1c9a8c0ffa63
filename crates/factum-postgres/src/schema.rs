//! Versioned migrations, applied on start (and by `factum migrate`).

use factum_core::Result;

use crate::db_err;

/// The migrations, in order. Each runs once per schema, in a transaction.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../sql/0001_init.sql")),
    // Positions start at 1 (ADR 25).
    (2, include_str!("../sql/0002_positions_from_one.sql")),
    // The fast path's guard raises a named condition (issue 14).
    (3, include_str!("../sql/0003_head_moved_condition.sql")),
    // Crypto-shredding's subject keys (ADR 36).
    (4, include_str!("../sql/0004_subject_keys.sql")),
    // Links found by position, for a scavenge's removals (ADR 33).
    (5, include_str!("../sql/0005_links_by_position.sql")),
];

/// Connects to `url` and applies pending migrations to `schema`.
pub async fn migrate(url: &str, schema: &str) -> Result<Vec<i32>> {
    crate::valid_schema(schema)?;
    let (pg, tls) = crate::tls::parse(url)?;
    let (mut client, conn) = pg.connect(tls).await.map_err(|e| db_err("connect", e))?;
    let conn = tokio::spawn(conn);
    let applied = migrate_client(&mut client, schema).await;
    drop(client);
    let _ = conn.await;
    applied
}

/// Applies pending migrations on an open connection; returns the versions applied.
pub(crate) async fn migrate_client(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<Vec<i32>> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_err("migrate", e))?;
    // One migrator per schema at a time, even across processes.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("factum-migrate-{schema}")],
    )
    .await
    .map_err(|e| db_err("migrate lock", e))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(|e| db_err("migrate", e))?;
    let done: Vec<i32> = tx
        .query(&format!("SELECT version FROM {schema}.migrations"), &[])
        .await
        .map_err(|e| db_err("migrate", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(newer) = done.iter().copied().filter(|v| *v > known).max() {
        // A newer build migrated this schema: serving it could misread
        // what that build wrote (as a build before version 2 would read
        // positions one lower).
        return Err(factum_core::Error::InvalidInput(format!(
            "schema {schema} is at version {newer}, newer than this build's {known}: a newer build of Factum migrated it"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{schema}", schema))
            .await
            .map_err(|e| db_err(&format!("migration {version}"), e))?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(|e| db_err("migrate", e))?;
        applied.push(*version);
    }
    tx.commit().await.map_err(|e| db_err("migrate commit", e))?;
    Ok(applied)
}
