//! # factum-client
//!
//! A remote [`EventStore`] over the KurrentDB-compatible gRPC protocol:
//! the toolkit (or anything written against the trait) runs unchanged
//! against a `factum serve` — or, for what the protocol covers, a KurrentDB
//! node. It passes the core conformance testkit against `factum serve`.
//!
//! What the protocol cannot say is done on the client: temporal reads
//! (`until`) filter on each event's `created` time; `head_position` reads
//! `$all` backwards; metadata is the last `$metadata` event of `$$<stream>`.
//!
//! ```no_run
//! # async fn run() -> factum_core::Result<()> {
//! use factum_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
//! let store = factum_client::Client::connect(
//!     "esdb://admin:changeit@localhost:2113?tls=true&tlsCAFile=data/dev-certs/ca/ca.crt",
//! )
//! .await?;
//! let order = StreamName::new("order-1")?;
//! store.append(order.clone(), ExpectedRevision::Any, vec![EventData::binary("Placed", "x")]).await?;
//! let events = store.read_stream(ReadStream::forwards(order)).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod batch;
mod connection;
mod multi;
mod read;
mod request;
mod resume;
mod retry;
mod wire;

use connection::Transport;
pub use connection::{ConnectionSettings, Verify};
use factum_core::UnavailableReason;
use factum_core::{
    AppendResult, DeleteResult, Error, EventData, EventStore, ExpectedRevision, Position, ReadAll,
    ReadStream, RecordedEvent, Result, StreamMetadata, StreamMetadataResult, StreamName, Subscribe,
    Subscription, SubscriptionMessage, METADATA_EVENT_TYPE,
};
use factum_proto::streams::append_resp;
use factum_proto::streams::read_req::Options as ReadOptions;
use factum_proto::streams::read_resp::Content;
use factum_proto::streams::streams_client::StreamsClient;
use factum_proto::streams::ReadResp;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
#[doc(hidden)]
pub use read::decode_read_message;
use read::ReadItem;
use resume::{Resumable, Target};
pub use retry::Retry;
use tonic::Streaming;

/// The core error a failed call of a Factum server stands for, exactly as
/// the server's store returned it (from KurrentDB: by its `exception`
/// metadata or the status code). For calls this client does not make
/// itself, such as persistent subscriptions through the generated client.
pub fn error_from_status(status: tonic::Status) -> Error {
    wire::from_status(status, &StreamName::all())
}

/// Largest message the client sends or accepts (the server's default
/// append limit plus framing).
pub(crate) const MAX_MESSAGE: usize = 65 * 1024 * 1024;

/// A connection to a server; cheap to clone (one HTTP/2 connection shared).
#[derive(Clone, Debug)]
pub struct Client {
    streams: StreamsClient<Transport>,
    /// Reads go through their own codec (see `read.rs`).
    channel: Transport,
    /// The BatchAppend call appends share, opened on first use.
    batcher: std::sync::Arc<tokio::sync::Mutex<Option<std::sync::Arc<batch::Batcher>>>>,
    retry: Retry,
}

impl Client {
    /// Connects with a connection string: `http://host:port` (plain),
    /// `https://host:port`, or KurrentDB's
    /// `esdb://[login:password@]host:port[?tls=…&tlsCAFile=…&tlsVerifyCert=…]`
    /// (TLS unless `tls=false`; see [`ConnectionSettings::parse`]).
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::connect_with(&ConnectionSettings::parse(endpoint)?).await
    }

    /// Connects with `settings`: TLS as they say, their credentials sent
    /// as `authorization: Basic …` on every call.
    pub async fn connect_with(settings: &ConnectionSettings) -> Result<Client> {
        let transport = settings.connect().await?;
        Ok(Client {
            channel: transport.clone(),
            streams: StreamsClient::new(transport)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            batcher: Default::default(),
            retry: Retry::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: Retry) -> Client {
        self.retry = retry;
        self
    }

    /// The shared BatchAppend call, (re)opened when needed.
    async fn batcher(&self) -> Result<std::sync::Arc<batch::Batcher>> {
        let mut slot = self.batcher.lock().await;
        match slot.as_ref() {
            Some(b) if b.is_open() => Ok(b.clone()),
            _ => {
                let b = batch::Batcher::open(&self.streams).await?;
                *slot = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Appends through the `Append` call (one HTTP/2 stream per append).
    async fn append_raw(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let reqs = request::append(stream, expected, events)?;
        let resp = self
            .streams
            .clone()
            .append(futures_util::stream::iter(reqs))
            .await
            .map_err(|s| wire::from_status(s, stream))?
            .into_inner();
        match resp.result {
            Some(append_resp::Result::Success(s)) => Ok(AppendResult::from(&s)),
            Some(append_resp::Result::WrongExpectedVersion(w)) => {
                Err(Error::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual: w.actual(),
                })
            }
            None => Err(wire::protocol("an append answer without a result")),
        }
    }

    async fn read(&self, options: ReadOptions, stream: &StreamName) -> Result<Streaming<ReadItem>> {
        let req = request::read(options);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        grpc.ready().await.map_err(|e| {
            Error::unavailable(
                UnavailableReason::Connection,
                format!("the connection is not ready: {e}"),
            )
        })?;
        grpc.server_streaming(
            tonic::Request::new(req),
            tonic::codegen::http::uri::PathAndQuery::from_static(read::READ_PATH),
            read::ReadCodec,
        )
        .await
        .map(|r| r.into_inner())
        .map_err(|s| wire::from_status(s, stream))
    }

    /// Reads `$all` as one streamed read: events arrive as the server sends
    /// them, so a long read needs no memory for the whole result (what
    /// [`EventStore::read_all`] returns at once). Same request, same events.
    pub async fn read_all_streaming(
        &self,
        request: ReadAll,
    ) -> Result<BoxStream<'static, Result<RecordedEvent>>> {
        let mut reader = Resumable::new(self, Target::All(request));
        // Fail early, as the other reads do, when the read cannot start.
        let first = reader.next().await;
        if let Some(Err(e)) = first {
            return Err(e);
        }
        let rest = futures_util::stream::unfold(reader, |mut reader| async move {
            reader.next().await.map(|e| (e, reader))
        });
        Ok(futures_util::stream::iter(first).chain(rest).boxed())
    }
}

impl EventStore for Client {
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.retrying(|| {
            let (stream, events) = (&stream, events.clone());
            async move { self.batcher().await?.append(stream, expected, events).await }
        })
        .await
    }

    async fn append_multi(
        &self,
        request: factum_core::MultiAppend,
    ) -> Result<factum_core::MultiAppendResult> {
        // Bad input is answered here, as the server would.
        factum_core::rules::multi::check_multi_input(
            &request,
            &factum_core::rules::Limits::default(),
        )?;
        self.retrying(|| multi::append_records(self.channel.clone(), &request))
            .await
    }

    async fn read_stream(&self, request: ReadStream) -> Result<Vec<RecordedEvent>> {
        Resumable::new(self, Target::Stream(request))
            .collect()
            .await
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>> {
        Resumable::new(self, Target::All(request)).collect().await
    }

    async fn subscribe(&self, request: Subscribe) -> Result<Subscription> {
        let (options, name) = request::subscribe(&request);
        let mut resp = self.read(options, &name).await?;
        // The confirmation means the server's subscription exists: every
        // event committed from now on will be delivered.
        match resp
            .message()
            .await
            .map_err(|s| wire::from_status(s, &name))?
        {
            Some(ReadItem::Other(ReadResp {
                content: Some(Content::Confirmation(_)),
            })) => {}
            other => {
                return Err(wire::protocol(format!(
                    "expected a subscription confirmation, got {other:?}"
                )))
            }
        }
        let messages = resp.filter_map(move |msg| {
            let name = name.clone();
            async move {
                let msg = match msg {
                    Ok(m) => m,
                    Err(s) => return Some(Err(wire::from_status(s, &name))),
                };
                let content = match msg {
                    ReadItem::Event(e) => return Some(e.map(SubscriptionMessage::Event)),
                    ReadItem::Other(r) => r.content?,
                };
                match content {
                    Content::Event(_) => None,
                    Content::CaughtUp(_) => Some(Ok(SubscriptionMessage::CaughtUp)),
                    Content::FellBehind(_) => Some(Ok(SubscriptionMessage::FellBehind)),
                    Content::Checkpoint(c) => Some(Ok(SubscriptionMessage::Checkpoint(Position(
                        c.commit_position,
                    )))),
                    _ => None,
                }
            }
        });
        Ok(Subscription::new(messages))
    }

    async fn stream_metadata(&self, stream: StreamName) -> Result<StreamMetadataResult> {
        let meta = stream.metadata_stream();
        let read = ReadStream::backwards(meta).max_count(1);
        match self.read_stream(read).await {
            Ok(events) => match events.first() {
                Some(e) => Ok(StreamMetadataResult {
                    revision: Some(e.revision),
                    metadata: StreamMetadata::from_json(&e.data)?,
                }),
                None => Ok(StreamMetadataResult::default()),
            },
            Err(Error::StreamNotFound { .. }) => Ok(StreamMetadataResult::default()),
            Err(Error::StreamDeleted { .. }) => Err(Error::StreamDeleted { stream }),
            Err(e) => Err(e),
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<AppendResult> {
        let event = EventData::new(
            METADATA_EVENT_TYPE,
            factum_core::ContentType::Json,
            metadata.to_json(),
        );
        let meta = stream.metadata_stream();
        self.retrying(|| self.append_raw(&meta, expected, vec![event.clone()]))
            .await
    }

    async fn delete_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        let req = request::delete(&stream, expected)?;
        let resp = self
            .streams
            .clone()
            .delete(req)
            .await
            .map_err(|s| wire::from_status(s, &stream))?
            .into_inner();
        use factum_proto::streams::delete_resp::PositionOption as P;
        Ok(DeleteResult {
            position: Position(match resp.position_option {
                Some(P::Position(p)) => p.commit_position,
                _ => 0,
            }),
        })
    }

    async fn tombstone_stream(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult> {
        let req = request::tombstone(&stream, expected)?;
        let resp = self
            .streams
            .clone()
            .tombstone(req)
            .await
            .map_err(|s| wire::from_status(s, &stream))?
            .into_inner();
        use factum_proto::streams::tombstone_resp::PositionOption as P;
        Ok(DeleteResult {
            position: Position(match resp.position_option {
                Some(P::Position(p)) => p.commit_position,
                _ => 0,
            }),
        })
    }

    async fn head_position(&self) -> Result<Option<Position>> {
        let last = self.read_all(ReadAll::backwards().max_count(1)).await?;
        Ok(last.first().map(|e| e.position))
    }
}
