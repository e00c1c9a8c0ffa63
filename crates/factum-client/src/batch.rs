//! Appends multiplexed on one long-lived `Streams.BatchAppend` call per
//! connection, as the official clients do: no new HTTP/2 stream per
//! append, so many concurrent small appends stay cheap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::connection::Transport;
use factum_core::UnavailableReason;
use factum_core::{AppendResult, Error, EventData, ExpectedRevision, Result, StreamName, Uuid};
use factum_proto::shared;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::{batch_append_req, batch_append_resp, BatchAppendReq};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::wire;

type Waiters = Arc<
    Mutex<
        HashMap<
            Uuid,
            (
                StreamName,
                ExpectedRevision,
                oneshot::Sender<Result<AppendResult>>,
            ),
        >,
    >,
>;

/// One open BatchAppend call and the appends waiting for their answers.
pub struct Batcher {
    tx: mpsc::UnboundedSender<BatchAppendReq>,
    waiters: Waiters,
    /// Cleared when the call ends, so the next append reopens it.
    open: Arc<AtomicBool>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("open", &self.is_open())
            .finish()
    }
}

impl Batcher {
    /// Opens the call; answers are routed to waiters by correlation id.
    pub async fn open(client: &StreamsClient<Transport>) -> Result<Arc<Batcher>> {
        let (tx, rx) = mpsc::unbounded_channel::<BatchAppendReq>();
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut responses = client
            .clone()
            .batch_append(requests)
            .await
            .map_err(|s| wire::from_status(s, &StreamName::all()))?
            .into_inner();
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        let open = Arc::new(AtomicBool::new(true));
        let still_open = open.clone();
        tokio::spawn(async move {
            let failure = loop {
                match responses.message().await {
                    Ok(Some(resp)) => {
                        let Ok(id) = uuid_of(resp.correlation_id.as_ref()) else {
                            continue;
                        };
                        let waiter = w.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        if let Some((stream, expected, reply)) = waiter {
                            let _ = reply.send(result(resp.result, &stream, expected));
                        }
                    }
                    Ok(None) => {
                        break Error::unavailable(
                            UnavailableReason::Connection,
                            "the server closed the batch-append call",
                        )
                    }
                    Err(s) => break wire::from_status(s, &StreamName::all()),
                }
            };
            // Everyone still waiting learns why; the next append reopens.
            still_open.store(false, Ordering::Release);
            for (_, (_, _, reply)) in w.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                let _ = reply.send(Err(Error::unavailable(
                    UnavailableReason::Connection,
                    failure.to_string(),
                )));
            }
        });
        Ok(Arc::new(Batcher { tx, waiters, open }))
    }

    /// True while the call is usable.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// Appends and waits for the answer.
    pub async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let expected_wire = expected.try_into()?;
        let id = Uuid::new_v4();
        let (reply, answer) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (stream.clone(), expected, reply));
        let req = BatchAppendReq {
            correlation_id: wire::uuid(id),
            options: Some(batch_append_req::Options {
                stream_identifier: wire::stream_id(stream),
                expected_stream_position: Some(expected_wire),
                deadline_option: None,
            }),
            proposed_messages: events
                .into_iter()
                .map(|e| batch_append_req::ProposedMessage {
                    id: wire::uuid(e.id),
                    metadata: wire::proposed_metadata(&e),
                    custom_metadata: e.metadata.to_vec(),
                    data: e.data.to_vec(),
                })
                .collect(),
            is_final: true,
        };
        if self.tx.send(req).is_err() {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(Error::unavailable(
                UnavailableReason::Connection,
                "the batch-append call is closed",
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::unavailable(
                UnavailableReason::Connection,
                "the batch-append call ended",
            ))
        })
    }
}

fn uuid_of(id: Option<&shared::Uuid>) -> std::result::Result<Uuid, ()> {
    match id.and_then(|u| u.value.as_ref()) {
        Some(shared::uuid::Value::String(s)) => Uuid::parse_str(s).map_err(|_| ()),
        Some(shared::uuid::Value::Structured(s)) => Ok(Uuid::from_u64_pair(
            s.most_significant_bits as u64,
            s.least_significant_bits as u64,
        )),
        None => Err(()),
    }
}

/// A batch-append answer as the core result.
fn result(
    r: Option<batch_append_resp::Result>,
    stream: &StreamName,
    expected: ExpectedRevision,
) -> Result<AppendResult> {
    match r {
        Some(batch_append_resp::Result::Success(s)) => Ok(AppendResult::from(&s)),
        // A Factum server sends the error map's fields beside the detail.
        Some(batch_append_resp::Result::Error(status))
            if status.metadata.contains_key("factum-error") =>
        {
            Err(wire::decode(
                tonic::Code::from(status.code),
                &status.message,
                |k| status.metadata.get(k).cloned(),
                stream,
            ))
        }
        // KurrentDB: the detail's type says what failed.
        Some(batch_append_resp::Result::Error(status)) => {
            let detail = status.details.unwrap_or_default();
            let name = detail.type_url.rsplit('/').next().unwrap_or("");
            let bytes = detail.value.as_slice();
            Err(match name {
                "event_store.client.WrongExpectedVersion" => {
                    let d = shared::WrongExpectedVersion::decode(bytes).unwrap_or_default();
                    Error::WrongExpectedVersion {
                        stream: stream.clone(),
                        expected,
                        actual: d.actual(),
                    }
                }
                "event_store.client.StreamDeleted" => Error::StreamDeleted {
                    stream: stream.clone(),
                },
                "event_store.client.MaximumAppendSizeExceeded" => {
                    let d = shared::MaximumAppendSizeExceeded::decode(bytes).unwrap_or_default();
                    Error::LimitExceeded {
                        what: "append size in bytes".into(),
                        limit: d.max_append_size as u64,
                        actual: 0,
                    }
                }
                "event_store.client.MaximumAppendEventSizeExceeded" => {
                    let d =
                        shared::MaximumAppendEventSizeExceeded::decode(bytes).unwrap_or_default();
                    Error::LimitExceeded {
                        what: format!(
                            "event {} size in bytes (data + metadata + type)",
                            d.event_id
                        ),
                        limit: d.max_append_event_size as u64,
                        actual: d.proposed_event_size as u64,
                    }
                }
                "event_store.client.Timeout" => Error::unavailable(
                    UnavailableReason::Busy,
                    format!(
                        "the append's deadline passed before it was written: {}",
                        status.message
                    ),
                ),
                "event_store.client.BadRequest" => {
                    let d = shared::BadRequest::decode(bytes).unwrap_or_default();
                    Error::InvalidInput(d.message)
                }
                "event_store.client.AccessDenied" => Error::AccessDenied(
                    // The message is the error's text: keep only its reason.
                    status
                        .message
                        .strip_prefix("access denied: ")
                        .unwrap_or(&status.message)
                        .to_owned(),
                ),
                _ => Error::unavailable(
                    UnavailableReason::Unspecified,
                    format!("batch append failed: {}", status.message),
                ),
            })
        }
        None => Err(wire::protocol("a batch-append answer without a result")),
    }
}
