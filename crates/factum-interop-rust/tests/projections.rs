//! KurrentDB's official Rust client's projection calls against a real
//! `factum serve` (issue 20): create (with emit and tracking), update,
//! enable, disable, abort, reset, state and result with partitions,
//! statistics, list, delete, restart the subsystem, the system
//! projections, and the errors for unknown names and invalid queries.

use std::time::Duration;

use futures_util::TryStreamExt;

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CreateProjectionOptions,
    DeleteProjectionOptions, Error, EventData, GenericProjectionOptions,
    GetResultProjectionOptions, GetStateProjectionOptions, ProjectionClient,
    UpdateProjectionOptions,
};

mod common;
use common::{name, Server};

async fn deposit(client: &Client, stream: &str, amount: i64) {
    client
        .append_to_stream(
            stream.to_owned(),
            &AppendToStreamOptions::default(),
            EventData::json("Deposited", &serde_json::json!({ "amount": amount })).unwrap(),
        )
        .await
        .unwrap();
}

async fn state(
    projections: &ProjectionClient,
    projection: &str,
    partition: &str,
) -> serde_json::Value {
    projections
        .get_state::<_, serde_json::Value>(
            projection,
            &GetStateProjectionOptions::default().partition(partition),
        )
        .await
        .unwrap()
        .unwrap()
}

/// The client reads numbers from `google.protobuf.Value`: as f64.
async fn eventually_state(
    projections: &ProjectionClient,
    projection: &str,
    partition: &str,
    want: serde_json::Value,
) {
    let mut last = serde_json::Value::Null;
    for _ in 0..400 {
        last = state(projections, projection, partition).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{projection}/{partition}: wanted {want}, last {last}");
}

async fn status(projections: &ProjectionClient, projection: &str) -> String {
    projections
        .get_status(projection, &GenericProjectionOptions::default())
        .await
        .unwrap()
        .unwrap()
        .status
}

/// Waits for a projection's status: a projection starts (`Preparing`)
/// after every create, update and enable, and the client's `create` with
/// `emit` is a Create and then an Update (kurrentdb 1.2.0), which restarts
/// the projection; its states read meanwhile come from its checkpoints.
async fn eventually_status(projections: &ProjectionClient, projection: &str, want: &str) {
    let mut seen = String::new();
    for _ in 0..400 {
        seen = status(projections, projection).await;
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{projection}: wanted status {want}, last {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_client_projection_calls() {
    let server = Server::start();
    let settings: ClientSettings = format!("esdb://{}?tls=false", server.addr).parse().unwrap();
    let client = Client::new(settings.clone()).unwrap();
    let projections = ProjectionClient::new(settings).unwrap();
    let category = name("acct").replace('-', "");
    let (a, b) = (format!("{category}-a"), format!("{category}-b"));
    deposit(&client, &a, 5).await;
    deposit(&client, &b, 7).await;
    deposit(&client, &a, 1).await;

    // Create (continuous, emitting, tracked): a partition per stream.
    let query = format!(
        r#"fromCategory('{category}').foreachStream().when({{
            $init: () => ({{ total: 0 }}),
            Deposited: (s, e) => {{ s.total += e.body.amount; emit('{category}audit-' + e.sequenceNumber, 'Seen', {{}}); return s }}
        }}).transformBy(s => ({{ doubled: s.total * 2 }})).outputState()"#
    );
    projections
        .create(
            "balances",
            query.clone(),
            &CreateProjectionOptions::default()
                .emit(true)
                .track_emitted_streams(true),
        )
        .await
        .unwrap();
    eventually_state(
        &projections,
        "balances",
        &a,
        serde_json::json!({"total": 6.0}),
    )
    .await;
    eventually_state(
        &projections,
        "balances",
        &b,
        serde_json::json!({"total": 7.0}),
    )
    .await;
    let result: serde_json::Value = projections
        .get_result(
            "balances",
            &GetResultProjectionOptions::default().partition(&a),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, serde_json::json!({"doubled": 12.0}));

    // Statistics and the list (continuous ones, the system projections too).
    eventually_status(&projections, "balances", "Running").await;
    let stats = projections
        .get_status("balances", &GenericProjectionOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.status, "Running", "{stats:?}");
    assert_eq!(stats.mode, "Continuous");
    assert_eq!(stats.name, "balances");
    assert!(stats.position.starts_with("C:"), "{}", stats.position);
    let mut listed = Vec::new();
    let mut list = projections
        .list(&GenericProjectionOptions::default())
        .await
        .unwrap();
    while let Some(s) = list.try_next().await.unwrap() {
        listed.push(s.name);
    }
    assert!(listed.contains(&"balances".to_owned()), "{listed:?}");
    assert!(listed.contains(&"$by_category".to_owned()), "{listed:?}");

    // Disable, enable, abort, reset.
    projections
        .disable("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    assert_eq!(status(&projections, "balances").await, "Stopped");
    deposit(&client, &a, 10).await;
    projections
        .enable("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    eventually_state(
        &projections,
        "balances",
        &a,
        serde_json::json!({"total": 16.0}),
    )
    .await;
    projections
        .abort("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    assert_eq!(status(&projections, "balances").await, "Stopped");
    projections
        .reset("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    projections
        .enable("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    eventually_state(
        &projections,
        "balances",
        &a,
        serde_json::json!({"total": 16.0}),
    )
    .await;

    // Update the query (emit kept on).
    let counting = format!(
        "fromCategory('{category}').when({{ $init: () => ({{ n: 0 }}), $any: (s, e) => {{ s.n += 1; return s }} }})"
    );
    projections
        .update(
            "balances",
            counting,
            &UpdateProjectionOptions::default().emit(true),
        )
        .await
        .unwrap();
    projections
        .reset("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    eventually_state(&projections, "balances", "", serde_json::json!({"n": 4.0})).await;

    // The system projections answer like the others.
    projections
        .enable("$by_correlation_id", &GenericProjectionOptions::default())
        .await
        .unwrap();
    eventually_status(&projections, "$by_correlation_id", "Running").await;
    projections
        .disable("$by_correlation_id", &GenericProjectionOptions::default())
        .await
        .unwrap();
    assert_eq!(status(&projections, "$by_correlation_id").await, "Stopped");

    // Errors: unknown names, invalid queries, names taken.
    assert!(matches!(
        projections
            .get_state::<_, serde_json::Value>("nope", &GetStateProjectionOptions::default())
            .await,
        Err(Error::ResourceNotFound)
    ));
    assert!(matches!(
        projections
            .enable("nope", &GenericProjectionOptions::default())
            .await,
        Err(Error::ResourceNotFound)
    ));
    match projections
        .create(
            "bad",
            "fromAll(".to_owned(),
            &CreateProjectionOptions::default(),
        )
        .await
    {
        Err(Error::Grpc { code, .. }) => assert_eq!(format!("{code:?}"), "InvalidArgument"),
        other => panic!("an invalid query: {other:?}"),
    }
    assert!(matches!(
        projections
            .create("balances", query, &CreateProjectionOptions::default())
            .await,
        Err(Error::ResourceAlreadyExists)
    ));

    // Restart the subsystem: the projection comes back with its state.
    projections
        .restart_subsystem(&GenericProjectionOptions::default())
        .await
        .unwrap();
    eventually_state(&projections, "balances", "", serde_json::json!({"n": 4.0})).await;

    // Delete with its streams.
    projections
        .disable("balances", &GenericProjectionOptions::default())
        .await
        .unwrap();
    projections
        .delete(
            "balances",
            &DeleteProjectionOptions::default()
                .delete_emitted_streams(true)
                .delete_state_stream(true)
                .delete_checkpoint_stream(true),
        )
        .await
        .unwrap();
    assert!(matches!(
        projections
            .get_status("balances", &GenericProjectionOptions::default())
            .await,
        Err(Error::ResourceNotFound) | Ok(None)
    ));
}
