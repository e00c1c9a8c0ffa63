//! What every session of the store runs with, and the start-up check of
//! the database's durability settings (ADR 17).
//!
//! Each session pins what correctness needs in its start-up packet, which
//! outranks `ALTER ROLE … SET` and `ALTER DATABASE … SET`:
//! `synchronous_commit` (`on`, or `remote_apply` when that is what the
//! database asks for: never weaker), READ COMMITTED, and timeouts so that a
//! stalled instance cannot hold the head lock forever: `lock_timeout` (a
//! writer waiting for the lock gives up and answers `Unavailable`),
//! `idle_in_transaction_session_timeout` (the server ends a session that
//! stopped in the middle of a transaction, releasing its locks) and TCP
//! keepalives and user timeouts on both ends (a dead peer is noticed).
//!
//! At start-up the store refuses a database that would lose acknowledged
//! commits in a crash (`fsync` or `full_page_writes` off: server-wide, no
//! session can change them) or whose sessions did not get the pinned
//! settings (a connection pooler that drops start-up options), unless
//! [`PostgresConfig::allow_unsafe`] says it is a throwaway cluster.

use std::time::Duration;

use factum_core::{Error, Result};

use crate::tls::Tls;
use crate::{db_err, PostgresConfig};

/// The connection settings of every session, before `synchronous_commit`
/// is pinned ([`pin_synchronous_commit`]), and how they use TLS.
pub(crate) fn base_config(config: &PostgresConfig) -> Result<(tokio_postgres::Config, Tls)> {
    let (mut pg, tls) = crate::tls::parse(&config.url)?;
    let keepalive = config.keepalive.max(Duration::from_secs(1));
    pg.keepalives(true)
        .keepalives_idle(keepalive)
        .keepalives_interval(keepalive)
        .keepalives_retries(KEEPALIVE_PROBES)
        .tcp_user_timeout(keepalive * (KEEPALIVE_PROBES + 1))
        .connect_timeout(config.connect_timeout);
    // The server's side of the same: it drops a dead instance's session
    // (and its locks) too. Options from the URL come first, ours win.
    let ours = [
        format!("statement_timeout={}", millis(config.statement_timeout)),
        format!("lock_timeout={}", millis(config.lock_timeout)),
        format!(
            "idle_in_transaction_session_timeout={}",
            millis(config.idle_in_transaction_timeout)
        ),
        format!("tcp_keepalives_idle={}", keepalive.as_secs()),
        format!("tcp_keepalives_interval={}", keepalive.as_secs()),
        format!("tcp_keepalives_count={KEEPALIVE_PROBES}"),
        format!(
            "tcp_user_timeout={}",
            millis(keepalive * (KEEPALIVE_PROBES + 1))
        ),
        // A space in a start-up option is escaped with a backslash.
        "default_transaction_isolation=read\\ committed".to_string(),
    ];
    set_options(&mut pg, &ours);
    Ok((pg, tls))
}

/// Keepalive probes unanswered before a peer counts as dead.
const KEEPALIVE_PROBES: u32 = 3;

fn millis(d: Duration) -> u128 {
    // 0 disables a PostgreSQL timeout: a configured zero stays "off", any
    // other value is at least 1 ms.
    if d.is_zero() {
        0
    } else {
        d.as_millis().max(1)
    }
}

/// Appends `-c name=value` options after those already in `pg`.
fn set_options(pg: &mut tokio_postgres::Config, settings: &[String]) {
    let mut options = pg.get_options().unwrap_or_default().to_string();
    for s in settings {
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c ");
        options.push_str(s);
    }
    pg.options(options);
}

/// The `synchronous_commit` every session pins: `remote_apply` when the
/// database already asks for it (stronger: the commit is visible on
/// synchronous standbys too), else `on` (the commit is flushed to disk,
/// and to synchronous standbys when there are some, before it is
/// acknowledged).
pub(crate) fn pinned_synchronous_commit(found: &str) -> &'static str {
    if found == "remote_apply" {
        "remote_apply"
    } else {
        "on"
    }
}

/// Adds the pinned `synchronous_commit` to the session settings.
pub(crate) fn pin_synchronous_commit(pg: &mut tokio_postgres::Config, value: &str) {
    set_options(pg, &[format!("synchronous_commit={value}")]);
}

/// What the store reads of the database's settings at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub fsync: String,
    pub full_page_writes: String,
    pub synchronous_commit: String,
    pub transaction_isolation: String,
}

/// Reads the settings a session runs with.
pub(crate) async fn settings(client: &tokio_postgres::Client) -> Result<Settings> {
    let row = client
        .query_one(
            "SELECT current_setting('fsync'), current_setting('full_page_writes'),
                    current_setting('synchronous_commit'), current_setting('default_transaction_isolation')",
            &[],
        )
        .await
        .map_err(|e| db_err("reading settings", e))?;
    Ok(Settings {
        fsync: row.get(0),
        full_page_writes: row.get(1),
        synchronous_commit: row.get(2),
        transaction_isolation: row.get(3),
    })
}

/// Reads `synchronous_commit` as a session without our pin gets it (the
/// server's, database's and role's settings), to pin nothing weaker.
pub(crate) async fn configured_synchronous_commit(
    pg: &tokio_postgres::Config,
    tls: &Tls,
) -> Result<String> {
    let (client, conn) = pg
        .connect(tls.clone())
        .await
        .map_err(|e| db_err("connect", e))?;
    let driver = tokio::spawn(conn);
    let found = client
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await
        .map_err(|e| db_err("reading settings", e));
    drop(client);
    let _ = driver.await;
    Ok(found?.get(0))
}

/// What in `found` could lose acknowledged commits or break the store's
/// reasoning, each with how to fix it; `pinned` is the
/// `synchronous_commit` the sessions asked for.
pub(crate) fn unsafe_settings(found: &Settings, pinned: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if found.fsync != "on" {
        problems.push(
            "fsync is off: a crash of the server or the machine can lose acknowledged commits \
             and corrupt the database (set fsync = on in postgresql.conf and reload)"
                .to_string(),
        );
    }
    if found.full_page_writes != "on" {
        problems.push(
            "full_page_writes is off: a crash in the middle of a page write can corrupt \
             committed data (set full_page_writes = on in postgresql.conf and reload)"
                .to_string(),
        );
    }
    if found.synchronous_commit != pinned {
        problems.push(format!(
            "sessions run with synchronous_commit = {} although the store asked for {pinned} in \
             its start-up options (does a connection pooler drop them?): commits could be \
             acknowledged before they are durable",
            found.synchronous_commit
        ));
    }
    if found.transaction_isolation != "read committed" {
        problems.push(format!(
            "sessions run with default_transaction_isolation = {} although the store asked for \
             read committed in its start-up options (does a connection pooler drop them?)",
            found.transaction_isolation
        ));
    }
    problems
}

/// Refuses to start on unsafe settings unless `allow_unsafe`; then it
/// warns instead.
pub(crate) fn check(found: &Settings, pinned: &str, allow_unsafe: bool) -> Result<()> {
    let problems = unsafe_settings(found, pinned);
    if problems.is_empty() {
        return Ok(());
    }
    let list = problems.join("; ");
    if allow_unsafe {
        tracing::warn!("PostgreSQL settings are unsafe, allowed by configuration: {list}");
        return Ok(());
    }
    Err(Error::Unsupported(format!(
        "PostgreSQL's settings would lose acknowledged events: {list}. For a throwaway \
         development cluster, allow it explicitly (factum serve --postgres-allow-unsafe, \
         PostgresConfig::allow_unsafe)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safe() -> Settings {
        Settings {
            fsync: "on".into(),
            full_page_writes: "on".into(),
            synchronous_commit: "on".into(),
            transaction_isolation: "read committed".into(),
        }
    }

    #[test]
    fn each_unsafe_setting_is_named_and_refused_unless_allowed() {
        assert!(check(&safe(), "on", false).is_ok());
        type Spoil = fn(&mut Settings);
        let cases: [(Spoil, &str); 4] = [
            (|s| s.fsync = "off".into(), "fsync is off"),
            (
                |s| s.full_page_writes = "off".into(),
                "full_page_writes is off",
            ),
            (
                |s| s.synchronous_commit = "off".into(),
                "synchronous_commit = off",
            ),
            (
                |s| s.transaction_isolation = "serializable".into(),
                "serializable",
            ),
        ];
        for (spoil, named) in cases {
            let mut s = safe();
            spoil(&mut s);
            match check(&s, "on", false) {
                Err(Error::Unsupported(m)) => {
                    assert!(m.contains(named), "{m}");
                    assert!(m.contains("--postgres-allow-unsafe"), "{m}");
                }
                other => panic!("{named}: {other:?}"),
            }
            assert!(check(&s, "on", true).is_ok());
        }
    }

    #[test]
    fn synchronous_commit_is_never_pinned_weaker() {
        assert_eq!(pinned_synchronous_commit("remote_apply"), "remote_apply");
        for found in ["on", "off", "local", "remote_write"] {
            assert_eq!(pinned_synchronous_commit(found), "on");
        }
        let mut s = safe();
        s.synchronous_commit = "remote_apply".into();
        assert!(check(&s, "remote_apply", false).is_ok());
    }

    #[test]
    fn options_from_the_url_are_kept_and_ours_come_last() {
        let mut config = PostgresConfig::new(
            "postgres://u@h/db?options=-c%20search_path%3Dx%20-c%20lock_timeout%3D1",
        );
        config.lock_timeout = Duration::from_millis(2500);
        let (mut pg, _) = base_config(&config).unwrap();
        pin_synchronous_commit(&mut pg, "on");
        let options = pg.get_options().unwrap();
        assert!(
            options.starts_with("-c search_path=x -c lock_timeout=1 "),
            "{options}"
        );
        assert!(options.contains("-c lock_timeout=2500 "), "{options}");
        assert!(options.ends_with("-c synchronous_commit=on"), "{options}");
    }
}
