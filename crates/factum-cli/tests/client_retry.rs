//! factum-client retries safe operations across a server restart: a real
//! `factum serve` is stopped, an append and reads are started while it is
//! down, and the server is started again on the same address and store.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use factum_client::{Client, Retry};
use factum_core::{EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, StreamName};

/// `factum serve` on `addr` over `data`; returns once it listens.
fn serve(addr: &str, data: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", addr, "--insecure"])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("factum serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(" on "), "not listening: {line:?}");
    child
}

/// SIGTERM and wait: the store is closed when this returns.
fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "factum serve exited with {status}");
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_ride_out_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let addr = free_addr();
    let server = serve(&addr, &data);
    // A generous budget: the restart below must fall inside it, however
    // slowly this machine starts a process.
    let retry = Retry {
        attempts: 200,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    };
    let client = Client::connect(&format!("http://{addr}"))
        .await
        .unwrap()
        .with_retry(retry);
    let stream = StreamName::new("restart-1").unwrap();
    let events: Vec<EventData> = (0..3)
        .map(|i| EventData::binary("E", vec![i as u8]))
        .collect();
    client
        .append(stream.clone(), ExpectedRevision::NoStream, events)
        .await
        .unwrap();

    stop(server);
    // Started while nothing listens: they keep trying.
    let later: Vec<EventData> = (3..5)
        .map(|i| EventData::binary("E", vec![i as u8]))
        .collect();
    let append = tokio::spawn({
        let (client, stream) = (client.clone(), stream.clone());
        async move { client.append(stream, ExpectedRevision::Any, later).await }
    });
    let read = tokio::spawn({
        let client = client.clone();
        async move { client.read_all(ReadAll::forwards()).await }
    });
    let server = serve(&addr, &data);
    append.await.unwrap().unwrap();
    // The read saw at least the first three; it may have run before or
    // after the append.
    let all = read.await.unwrap().unwrap();
    assert!(all.len() >= 3, "{all:?}");
    let back = client
        .read_stream(ReadStream::forwards(stream.clone()))
        .await
        .unwrap();
    let data: Vec<u8> = back.iter().map(|e| e.data[0]).collect();
    assert_eq!(data, vec![0, 1, 2, 3, 4], "each event exactly once");

    // With retries off, an unreachable server is an error at once.
    stop(server);
    let err = client
        .clone()
        .with_retry(Retry::none())
        .read_stream(ReadStream::forwards(stream))
        .await
        .unwrap_err();
    assert!(
        matches!(err, factum_core::Error::Unavailable { .. }),
        "{err:?}"
    );
}
