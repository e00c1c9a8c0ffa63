//! KurrentDB's official Rust client (`kurrentdb` 1.2.0, the version the
//! interop tests use) as a [`BenchStore`], and its `$all` read: the server
//! path as users of the official clients reach it. Each append is one
//! `Append` RPC; the client's one connection (one `Client`, as an
//! application holds it) carries every writer's calls, with the client's
//! own socket settings.

use factum_core::{Bytes, StreamName, Uuid};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadAllOptions, StreamPosition,
    SubscribeToAllOptions, Subscription, SubscriptionEvent,
};

use serde_json::value::RawValue;

use crate::error::BenchError;
use crate::grpc::BenchStore;
use crate::server::ServerProcess;

fn failure(what: &str, e: kurrentdb::Error) -> BenchError {
    BenchError::failure(format!("kurrentdb {what}: {e}"))
}

/// The official client connected to `server` (`esdb://…?tls=false`, or
/// for a `--dev` server TLS with its CA and `admin:changeit`). The client
/// connects on its first call: one read of at most one `$all` event does
/// that here, outside any measured window.
pub async fn connect(server: &ServerProcess) -> Result<Official, BenchError> {
    let connection = match &server.ca {
        None => format!("esdb://{}?tls=false", server.addr),
        Some(ca) => format!(
            "esdb://admin:changeit@localhost:{}?tls=true&tlsCaFile={}",
            server.addr.port(),
            ca.display()
        ),
    };
    let settings: ClientSettings = connection
        .parse()
        .map_err(|e| BenchError::failure(format!("kurrentdb settings: {e}")))?;
    let client =
        Client::new(settings).map_err(|e| BenchError::failure(format!("kurrentdb client: {e}")))?;
    let official = Official(client);
    read_all(&official, 1).await?;
    Ok(official)
}

/// A `kurrentdb::Client`.
#[derive(Clone)]
pub struct Official(Client);

impl BenchStore for Official {
    type Live = Subscription;

    async fn append(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        data: &Bytes,
    ) -> Result<(), BenchError> {
        // The client takes a value to serialize: the payload as a raw JSON
        // value comes out byte for byte.
        let body: &RawValue = serde_json::from_slice(data)
            .map_err(|e| BenchError::failure(format!("bench payload: {e}")))?;
        let events = ids
            .iter()
            .map(|id| {
                EventData::json("Bench", &body)
                    .map(|e| e.id(*id))
                    .map_err(|e| BenchError::failure(format!("bench payload: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.0
            .append_to_stream(stream.as_str(), &AppendToStreamOptions::default(), events)
            .await
            .map_err(|e| failure("append", e))?;
        Ok(())
    }

    async fn subscribe_end(&self) -> Result<Subscription, BenchError> {
        let mut sub = self
            .0
            .subscribe_to_all(&SubscribeToAllOptions::default().position(StreamPosition::End))
            .await;
        // The call goes out on the first poll: wait for the server's
        // confirmation, so that what is appended next is delivered.
        loop {
            match sub.next_subscription_event().await {
                Ok(SubscriptionEvent::Confirmed(_)) => return Ok(sub),
                Ok(_) => continue,
                Err(e) => return Err(failure("subscribe", e)),
            }
        }
    }

    async fn next_id(live: &mut Subscription) -> Result<Option<Uuid>, BenchError> {
        let event = live.next().await.map_err(|e| failure("subscription", e))?;
        Ok(Some(event.get_original_event().id))
    }
}

/// Reads `$all` forwards from the start, `max` events at most, as one
/// streamed read; returns how many arrived.
pub async fn read_all(client: &Official, max: u64) -> Result<u64, BenchError> {
    let options = ReadAllOptions::default()
        .forwards()
        .position(StreamPosition::Start)
        .max_count(max as usize);
    let mut read = client
        .0
        .read_all(&options)
        .await
        .map_err(|e| failure("read", e))?;
    let mut events = 0;
    while read.next().await.map_err(|e| failure("read", e))?.is_some() {
        events += 1;
    }
    Ok(events)
}
