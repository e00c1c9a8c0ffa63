//! Crypto-shredding and the toolkit (ADR 36): an event's
//! `DomainEvent::personal_data` becomes `$subject` / `$personalFields`
//! metadata, the store encrypts those fields, a projection sees them
//! decrypted; after `forget` a rebuilt read model holds no personal data of
//! the subject (the field reads `null`), while the other subjects' rows are
//! as before.

use std::sync::Arc;
use std::time::Duration;

use factum::context::PersonalData;
use factum::projection::sqlite::{SqliteProjection, SqliteReadModel};
use factum::projection::{ApplyError, Envelope};
use factum::{CommandContext, DomainEvent, ProjectionRunner, RunnerOptions};
use factum_core::{ContentType, EventData, EventStore, ExpectedRevision, StreamName};
use factum_crypto::{FileKeyStore, SecretKey, Shredding};
use factum_engine::Engine;
use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum CustomerEvent {
    #[serde(rename = "CustomerRegistered")]
    Registered {
        customer: String,
        /// Personal: `Option` so the event still decodes once erased.
        email: Option<String>,
        plan: String,
    },
}

impl DomainEvent for CustomerEvent {
    fn event_type(&self) -> &'static str {
        "CustomerRegistered"
    }
    fn personal_data(&self) -> Option<PersonalData> {
        let CustomerEvent::Registered { customer, .. } = self;
        Some(PersonalData::subject(format!("customer-{customer}")).fields(["email"]))
    }
}

#[derive(Clone)]
struct Emails;

impl SqliteProjection for Emails {
    fn name(&self) -> &str {
        "customer_emails"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS customer_emails (customer TEXT PRIMARY KEY, email TEXT, plan TEXT NOT NULL);"
    }
    fn apply(&self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        if e.event_type() != "CustomerRegistered" {
            return Ok(());
        }
        let CustomerEvent::Registered {
            customer,
            email,
            plan,
        } = e.decode::<CustomerEvent>()?;
        tx.prepare_cached("INSERT OR REPLACE INTO customer_emails VALUES (?1, ?2, ?3)")?
            .execute(params![customer, email, plan])?;
        Ok(())
    }
}

fn secret(who: &str) -> String {
    format!("{who}-toolkit-mail-61fa@example.org")
}

fn rows(model: &SqliteReadModel<Emails>) -> Vec<(String, Option<String>, String)> {
    let conn = model.reader().unwrap();
    let mut stmt = conn
        .prepare("SELECT customer, email, plan FROM customer_emails ORDER BY customer")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_read_model_rebuilt_after_forget_holds_no_personal_data_of_the_subject() {
    let data = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(data.path()).unwrap());
    let keys = FileKeyStore::open(data.path(), SecretKey::random().unwrap()).unwrap();
    let store = Shredding::new(engine.clone(), Arc::new(keys));
    let ctx = CommandContext::new();
    for who in ["alice", "bob"] {
        let event = CustomerEvent::Registered {
            customer: who.into(),
            email: Some(secret(who)),
            plan: format!("{who}-plan"),
        };
        let (event_type, body) = factum::event::encode(&event).unwrap();
        let meta = ctx
            .event_metadata_for(1, event.personal_data().as_ref())
            .unwrap();
        store
            .append(
                StreamName::new(format!("customer-{who}")).unwrap(),
                ExpectedRevision::NoStream,
                vec![EventData::new(event_type, ContentType::Json, body).with_metadata(meta)],
            )
            .await
            .unwrap();
    }
    let model = SqliteReadModel::new(models.path().join("rm"), Emails).unwrap();
    let handle = ProjectionRunner::start(store.clone(), model.clone(), RunnerOptions::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    handle
        .wait_for(head, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rows(&model)[0].1, Some(secret("alice")));
    assert!(files_holding(data.path(), &secret("alice")).is_empty());

    store.forget("customer-alice", "test").await.unwrap();
    handle.rebuild(|_| {}).await.unwrap();
    assert_eq!(
        rows(&model),
        vec![
            ("alice".into(), None, "alice-plan".into()),
            ("bob".into(), Some(secret("bob")), "bob-plan".into()),
        ]
    );
    handle.stop().await;
    assert!(
        files_holding(models.path(), &secret("alice")).is_empty(),
        "the rebuilt read model holds alice's email"
    );
    assert!(!files_holding(models.path(), &secret("bob")).is_empty());
    drop(store);
    engine.close().unwrap();
}
