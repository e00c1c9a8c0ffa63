//! `PersistentSubscriptions`: KurrentDB's consumer-group service over
//! `factum_persistent` (the groups live in the store; this module only
//! translates the wire).

use std::sync::Arc;
use std::time::Duration;

use factum_core::{EventStore, Uuid};
use factum_persistent::{
    ConnectOptions, ConsumerStrategy, FilterSpec, GroupInfo, GroupSettings, GroupSource,
    NackAction, PersistentError, StartFrom,
};
use factum_proto::persistent::persistent_subscriptions_server::PersistentSubscriptions;
use factum_proto::persistent::{self as wire, read_req, read_resp};
use factum_proto::shared;
// Old clients send timeouts in .NET ticks.
use factum_proto::ticks::PER_MILLI as TICKS_PER_MS;
use tokio::sync::mpsc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::convert::{self, UuidFormat};
use crate::errors::{to_status, Operation};
use crate::grpc::GrpcApi;
use crate::grpc_call::{channel_stream, ResponseStream};

/// The status KurrentDB answers for a persistent-subscription error.
pub fn persistent_status(err: &PersistentError) -> Status {
    let mut md = MetadataMap::new();
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = MetadataValue::try_from(factum_proto::metadata_text::escape(v).as_str()) {
            md.insert(k, v);
        }
    };
    let code = match err {
        PersistentError::AlreadyExists(key) => {
            put("exception", "persistent-subscription-exists");
            put("stream-name", key.source());
            put("group-name", key.group());
            Code::AlreadyExists
        }
        PersistentError::NotFound(key) => {
            put("exception", "persistent-subscription-does-not-exist");
            put("stream-name", key.source());
            put("group-name", key.group());
            Code::NotFound
        }
        PersistentError::MaximumSubscribersReached { key, .. } => {
            put("exception", "maximum-subscribers-reached");
            put("stream-name", key.source());
            put("group-name", key.group());
            // KurrentDB's words: the Python client keys on their start.
            let message = format!(
                "Maximum subscriptions reached for subscription group '{}' on stream '{}'.",
                key.group(),
                key.source()
            );
            return Status::with_metadata(Code::FailedPrecondition, message, md);
        }
        PersistentError::Dropped { key, .. } => {
            put("exception", "persistent-subscription-dropped");
            put("stream-name", key.source());
            put("group-name", key.group());
            Code::Cancelled
        }
        PersistentError::Faulted { key, reason } => {
            // KurrentDB's answer for a group that failed.
            put("exception", "persistent-subscription-failed");
            put("stream-name", key.source());
            put("group-name", key.group());
            put("reason", reason);
            Code::Internal
        }
        PersistentError::InvalidSettings(_) => Code::InvalidArgument,
        PersistentError::Store(e) => return to_status(e, Operation::Read),
        _ => Code::Internal,
    };
    Status::with_metadata(code, err.to_string(), md)
}

/// The group source a request names in its `stream_option` oneof (each
/// request type has its own generated enum): a stream, or `$all`.
macro_rules! source_of {
    ($option:expr, $stream:path, $all:path) => {
        match $option {
            Some($stream(s)) => {
                convert::stream_from_wire(Some(s)).map(|name| name.as_str().to_owned())
            }
            Some($all(_)) => Ok("$all".to_owned()),
            None => Err(Status::invalid_argument("no stream or $all given")),
        }
    };
}

/// A request's `options`, which every request of this service must carry.
fn required<T>(options: Option<&T>) -> Result<&T, Status> {
    options.ok_or_else(|| Status::invalid_argument("options are missing"))
}

fn count(value: i32, what: &str) -> Result<u32, Status> {
    u32::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{what} may not be negative")))
}

fn millis(value: i64, what: &str) -> Result<Duration, Status> {
    u64::try_from(value)
        .map(Duration::from_millis)
        .map_err(|_| Status::invalid_argument(format!("{what} may not be negative")))
}

/// Wire settings → group settings (start point decided by the caller).
fn settings_from_wire(s: &wire::Settings, start_from: StartFrom) -> Result<GroupSettings, Status> {
    use wire::settings::{CheckpointAfter, MessageTimeout};
    let defaults = GroupSettings::default();
    let message_timeout = match s.message_timeout {
        Some(MessageTimeout::MessageTimeoutMs(ms)) => millis(ms.into(), "message timeout")?,
        Some(MessageTimeout::MessageTimeoutTicks(t)) => {
            millis(t / TICKS_PER_MS, "message timeout")?
        }
        None => defaults.message_timeout,
    };
    let checkpoint_after = match s.checkpoint_after {
        Some(CheckpointAfter::CheckpointAfterMs(ms)) => millis(ms.into(), "checkpoint after")?,
        Some(CheckpointAfter::CheckpointAfterTicks(t)) => {
            millis(t / TICKS_PER_MS, "checkpoint after")?
        }
        None => defaults.checkpoint_after,
    };
    #[allow(deprecated)]
    let consumer_strategy = if s.consumer_strategy.is_empty() {
        match wire::ConsumerStrategy::try_from(s.named_consumer_strategy) {
            Ok(wire::ConsumerStrategy::DispatchToSingle) => ConsumerStrategy::DispatchToSingle,
            Ok(wire::ConsumerStrategy::RoundRobin) => ConsumerStrategy::RoundRobin,
            Ok(wire::ConsumerStrategy::Pinned) => ConsumerStrategy::Pinned,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown consumer strategy {}",
                    s.named_consumer_strategy
                )))
            }
        }
    } else {
        ConsumerStrategy::parse(&s.consumer_strategy).map_err(|e| persistent_status(&e))?
    };
    Ok(GroupSettings {
        start_from,
        resolve_links: s.resolve_links,
        extra_statistics: s.extra_statistics,
        message_timeout,
        max_retry_count: count(s.max_retry_count, "max retry count")?,
        live_buffer_size: count(s.live_buffer_size, "live buffer size")?,
        read_batch_size: count(s.read_batch_size, "read batch size")?,
        history_buffer_size: count(s.history_buffer_size, "history buffer size")?,
        checkpoint_after,
        min_checkpoint_count: count(s.min_checkpoint_count, "min checkpoint count")?,
        max_checkpoint_count: count(s.max_checkpoint_count, "max checkpoint count")?,
        max_subscriber_count: count(s.max_subscriber_count, "max subscriber count")?,
        consumer_strategy,
    })
}

fn filter_from_wire(f: &wire::all_options::FilterOptions) -> Result<FilterSpec, Status> {
    use wire::all_options::filter_options::Filter;
    let (on_event_type, e) = match &f.filter {
        Some(Filter::StreamIdentifier(e)) => (false, e),
        Some(Filter::EventType(e)) => (true, e),
        None => return Err(Status::invalid_argument("filter has no expression")),
    };
    let spec = FilterSpec {
        on_event_type,
        prefixes: e.prefix.clone(),
        regex: (!e.regex.is_empty()).then(|| e.regex.clone()),
    };
    spec.compile().map_err(|e| persistent_status(&e))?;
    Ok(spec)
}

/// What Create and Update carry: the source, the group, its settings.
fn group_from_wire(
    options: Option<&wire::GroupOptions>,
) -> Result<(GroupSource, String, GroupSettings), Status> {
    use wire::all_options::{AllOption, FilterOption};
    use wire::group_options::StreamOption;
    use wire::stream_options::RevisionOption;
    let o = required(options)?;
    let wire_settings = o.settings.clone().unwrap_or_default();
    let (source, start_from) = match &o.stream_option {
        Some(StreamOption::Stream(s)) => {
            let name = convert::stream_from_wire(s.stream_identifier.as_ref())?;
            let start = match s.revision_option {
                Some(RevisionOption::Revision(r)) => StartFrom::At(r),
                Some(RevisionOption::Start(_)) => StartFrom::Start,
                Some(RevisionOption::End(_)) | None => StartFrom::End,
            };
            (GroupSource::Stream(name.as_str().to_owned()), start)
        }
        Some(StreamOption::All(a)) => {
            let start = match &a.all_option {
                Some(AllOption::Position(p)) => StartFrom::At(p.commit_position),
                Some(AllOption::Start(_)) => StartFrom::Start,
                Some(AllOption::End(_)) | None => StartFrom::End,
            };
            let filter = match &a.filter_option {
                Some(FilterOption::Filter(f)) => Some(filter_from_wire(f)?),
                Some(FilterOption::NoFilter(_)) | None => None,
            };
            (GroupSource::All(filter), start)
        }
        None => {
            // Clients before 21.10 name the stream in the options and the
            // start in the settings (u64::MAX, i.e. -1, for the end).
            #[allow(deprecated)]
            let (stream, revision) = (o.stream_identifier.as_ref(), wire_settings.revision);
            let name = convert::stream_from_wire(stream)?;
            let start = match revision {
                u64::MAX => StartFrom::End,
                0 => StartFrom::Start,
                r => StartFrom::At(r),
            };
            (GroupSource::Stream(name.as_str().to_owned()), start)
        }
    };
    if o.group_name.is_empty() {
        return Err(Status::invalid_argument("group name is empty"));
    }
    let settings = settings_from_wire(&wire_settings, start_from)?;
    Ok((source, o.group_name.clone(), settings))
}

fn position_text(source: &GroupSource, p: u64) -> String {
    if source.is_all() {
        format!("C:{p}/P:{p}")
    } else {
        p.to_string()
    }
}

/// A group's state for `GetInfo` and `List`.
pub fn info_to_wire(info: &GroupInfo) -> wire::SubscriptionInfo {
    let s = &info.settings;
    let start_from = match s.start_from {
        StartFrom::Start => position_text(&info.source, 0),
        StartFrom::End if info.source.is_all() => "C:-1/P:-1".to_owned(),
        StartFrom::End => "-1".to_owned(),
        StartFrom::At(p) => position_text(&info.source, p),
    };
    let i32_of = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    wire::SubscriptionInfo {
        event_source: info.source.name().to_owned(),
        group_name: info.group.clone(),
        // The official clients show the status as text: a faulted group
        // says why there.
        status: match &info.error {
            Some(e) => format!("{}: {e}", info.status),
            None => info.status.to_owned(),
        },
        connections: info
            .connections
            .iter()
            .map(|c| wire::subscription_info::ConnectionInfo {
                from: c.from.clone(),
                username: String::new(),
                average_items_per_second: i32_of(c.average_items_per_second),
                total_items: c.total_items as i64,
                count_since_last_measurement: c.count_since_last_measurement as i64,
                observed_measurements: Vec::new(),
                available_slots: i32_of(c.available_slots),
                in_flight_messages: i32_of(c.in_flight),
                connection_name: c.name.clone(),
            })
            .collect(),
        average_per_second: i32_of(info.average_per_second),
        total_items: info.total_items as i64,
        count_since_last_measurement: info.count_since_last_measurement as i64,
        last_checkpointed_event_position: info
            .last_checkpointed_position
            .map(|p| position_text(&info.source, p))
            .unwrap_or_default(),
        last_known_event_position: info
            .last_known_position
            .map(|p| position_text(&info.source, p))
            .unwrap_or_default(),
        resolve_link_tos: s.resolve_links,
        start_from,
        message_timeout_milliseconds: i32_of(s.message_timeout.as_millis() as u64),
        extra_statistics: s.extra_statistics,
        max_retry_count: i32_of(s.max_retry_count.into()),
        live_buffer_size: i32_of(s.live_buffer_size.into()),
        buffer_size: i32_of(s.history_buffer_size.into()),
        read_batch_size: i32_of(s.read_batch_size.into()),
        check_point_after_milliseconds: i32_of(s.checkpoint_after.as_millis() as u64),
        min_check_point_count: i32_of(s.min_checkpoint_count.into()),
        max_check_point_count: i32_of(s.max_checkpoint_count.into()),
        read_buffer_count: i32_of(info.buffered),
        live_buffer_count: info.buffered as i64,
        retry_buffer_count: i32_of(info.retry_buffered),
        total_in_flight_messages: i32_of(info.in_flight),
        outstanding_messages_count: i32_of(info.in_flight),
        named_consumer_strategy: s.consumer_strategy.name().to_owned(),
        max_subscriber_count: i32_of(s.max_subscriber_count.into()),
        parked_message_count: info.parked as i64,
    }
}

fn ids_from_wire(ids: &[shared::Uuid]) -> Result<Vec<Uuid>, Status> {
    ids.iter()
        .map(|id| convert::uuid_from_wire(Some(id), "event id"))
        .collect()
}

#[tonic::async_trait]
impl<S: EventStore> PersistentSubscriptions for GrpcApi<S> {
    async fn create(
        &self,
        request: Request<wire::CreateReq>,
    ) -> Result<Response<wire::CreateResp>, Status> {
        self.authenticate(&request)?;
        let (source, group, settings) = group_from_wire(request.get_ref().options.as_ref())?;
        self.ctx()
            .persistent
            .create(source, &group, settings)
            .await
            .map_err(|e| persistent_status(&e))?;
        Ok(Response::new(wire::CreateResp {}))
    }

    async fn update(
        &self,
        request: Request<wire::UpdateReq>,
    ) -> Result<Response<wire::UpdateResp>, Status> {
        self.authenticate(&request)?;
        // Update carries the whole settings, the strategy included (by
        // number: 0 is DispatchToSingle), as KurrentDB's clients send them.
        let (source, group, settings) = group_from_wire(request.get_ref().options.as_ref())?;
        let subs = &self.ctx().persistent;
        subs.update(source.name(), &group, settings)
            .await
            .map_err(|e| persistent_status(&e))?;
        Ok(Response::new(wire::UpdateResp {}))
    }

    async fn delete(
        &self,
        request: Request<wire::DeleteReq>,
    ) -> Result<Response<wire::DeleteResp>, Status> {
        use wire::delete_req::options::StreamOption;
        self.authenticate(&request)?;
        let o = required(request.get_ref().options.as_ref())?;
        let source = source_of!(
            &o.stream_option,
            StreamOption::StreamIdentifier,
            StreamOption::All
        )?;
        self.ctx()
            .persistent
            .delete(&source, &o.group_name)
            .await
            .map_err(|e| persistent_status(&e))?;
        Ok(Response::new(wire::DeleteResp {}))
    }

    type ReadStream = ResponseStream<wire::ReadResp>;

    async fn read(
        &self,
        request: Request<Streaming<wire::ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::StreamOption;
        self.authenticate(&request)?;
        let from = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let name = request
            .metadata()
            .get("connection-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut incoming = request.into_inner();
        let first = incoming.message().await?;
        let Some(wire::ReadReq {
            content: Some(read_req::Content::Options(o)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a persistent subscription must carry its options",
            ));
        };
        let source = source_of!(
            &o.stream_option,
            StreamOption::StreamIdentifier,
            StreamOption::All
        )?;
        // Connecting needs `$r` on the group's source (ADR 31).
        self.ctx()
            .store
            .check_read(&source)
            .await
            .map_err(|e| crate::errors::to_status(&e, crate::errors::Operation::Read))?;
        let uuid = match o.uuid_option.as_ref().and_then(|u| u.content.as_ref()) {
            Some(read_req::options::uuid_option::Content::String(_)) => UuidFormat::String,
            _ => UuidFormat::Structured,
        };
        let buffer_size = usize::try_from(o.buffer_size)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Status::invalid_argument("buffer size must be positive"))?;
        let consumer = self
            .ctx()
            .persistent
            .connect(
                &source,
                &o.group_name,
                ConnectOptions {
                    buffer_size,
                    name,
                    from,
                },
            )
            .await
            .map_err(|e| persistent_status(&e))?;
        let (tx, rx) = mpsc::channel(buffer_size.clamp(16, 1024));
        let shutdown = self.ctx().shutdown.clone();
        // A link resolves only to a target the consumer may read (ADR 31),
        // decided as the principal who connected.
        let (ctx, who) = (self.ctx().clone(), crate::auth::current());
        let readable: Readable = Arc::new(move |stream| {
            let (ctx, who) = (ctx.clone(), who.clone());
            Box::pin(async move { ctx.store.may_read(&who, &stream).await })
        });
        tokio::spawn(pump(consumer, incoming, tx, uuid, shutdown, readable));
        Ok(Response::new(channel_stream(rx)))
    }

    async fn get_info(
        &self,
        request: Request<wire::GetInfoReq>,
    ) -> Result<Response<wire::GetInfoResp>, Status> {
        use wire::get_info_req::options::StreamOption;
        self.authenticate(&request)?;
        let o = required(request.get_ref().options.as_ref())?;
        let source = source_of!(
            &o.stream_option,
            StreamOption::StreamIdentifier,
            StreamOption::All
        )?;
        let info = self
            .ctx()
            .persistent
            .info(&source, &o.group_name)
            .await
            .map_err(|e| persistent_status(&e))?;
        Ok(Response::new(wire::GetInfoResp {
            subscription_info: Some(info_to_wire(&info)),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<wire::ReplayParkedReq>,
    ) -> Result<Response<wire::ReplayParkedResp>, Status> {
        use wire::replay_parked_req::options::{StopAtOption, StreamOption};
        self.authenticate(&request)?;
        let o = required(request.get_ref().options.as_ref())?;
        let source = source_of!(
            &o.stream_option,
            StreamOption::StreamIdentifier,
            StreamOption::All
        )?;
        let stop_at = match o.stop_at_option {
            Some(StopAtOption::StopAt(n)) if n >= 0 => Some(n as u64),
            Some(StopAtOption::StopAt(_)) => {
                return Err(Status::invalid_argument("stop_at may not be negative"))
            }
            Some(StopAtOption::NoLimit(_)) | None => None,
        };
        self.ctx()
            .persistent
            .replay_parked(&source, &o.group_name, stop_at)
            .await
            .map_err(|e| persistent_status(&e))?;
        Ok(Response::new(wire::ReplayParkedResp {}))
    }

    async fn list(
        &self,
        request: Request<wire::ListReq>,
    ) -> Result<Response<wire::ListResp>, Status> {
        use wire::list_req::options::ListOption;
        use wire::list_req::stream_option::StreamOption;
        self.authenticate(&request)?;
        let source = match request
            .get_ref()
            .options
            .as_ref()
            .and_then(|o| o.list_option.as_ref())
        {
            Some(ListOption::ListForStream(s)) => Some(source_of!(
                &s.stream_option,
                StreamOption::Stream,
                StreamOption::All
            )?),
            Some(ListOption::ListAllSubscriptions(_)) | None => None,
        };
        let infos = self
            .ctx()
            .persistent
            .list(source.as_deref())
            .await
            .map_err(|e| persistent_status(&e))?;
        if infos.is_empty() && source.is_some() {
            // KurrentDB answers NotFound when the stream has no groups.
            let mut md = MetadataMap::new();
            md.insert(
                "exception",
                MetadataValue::from_static("persistent-subscription-does-not-exist"),
            );
            return Err(Status::with_metadata(
                Code::NotFound,
                "no persistent subscription groups on this stream",
                md,
            ));
        }
        Ok(Response::new(wire::ListResp {
            subscriptions: infos.iter().map(info_to_wire).collect(),
        }))
    }

    async fn restart_subsystem(
        &self,
        request: Request<shared::Empty>,
    ) -> Result<Response<shared::Empty>, Status> {
        self.authenticate(&request)?;
        self.ctx()
            .persistent
            .restart()
            .await
            .map_err(|e| persistent_status(&e))?;
        Ok(Response::new(shared::Empty {}))
    }
}

/// Whether the consumer may read a link's target stream.
type Readable = Arc<
    dyn Fn(
            factum_core::StreamName,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// Moves a consumer's deliveries out and its acks and nacks in, until
/// either side ends or the server shuts down. A link whose target the
/// consumer may not read is delivered unresolved (the bare link record).
async fn pump(
    mut consumer: factum_persistent::Consumer,
    mut incoming: Streaming<wire::ReadReq>,
    tx: mpsc::Sender<Result<wire::ReadResp, Status>>,
    uuid: UuidFormat,
    shutdown: tokio::sync::watch::Receiver<bool>,
    readable: Readable,
) {
    let stopping = shutting_down(shutdown);
    tokio::pin!(stopping);
    let confirmation = wire::ReadResp {
        content: Some(read_resp::Content::SubscriptionConfirmation(
            read_resp::SubscriptionConfirmation {
                subscription_id: consumer.subscription_id(),
            },
        )),
    };
    if tx.send(Ok(confirmation)).await.is_err() {
        return;
    }
    let resolve_links = consumer.settings().resolve_links;
    loop {
        tokio::select! {
            request = incoming.message() => match request {
                Ok(Some(wire::ReadReq { content: Some(read_req::Content::Ack(a)) })) => {
                    match ids_from_wire(&a.ids) {
                        Ok(ids) => consumer.ack(ids).await,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                Ok(Some(wire::ReadReq { content: Some(read_req::Content::Nack(n)) })) => {
                    let action = match read_req::nack::Action::try_from(n.action) {
                        Ok(read_req::nack::Action::Park) => NackAction::Park,
                        Ok(read_req::nack::Action::Skip) => NackAction::Skip,
                        Ok(read_req::nack::Action::Stop) => NackAction::Stop,
                        // Unknown (the default) retries, as KurrentDB does.
                        Ok(read_req::nack::Action::Retry | read_req::nack::Action::Unknown) | Err(_) => NackAction::Retry,
                    };
                    match ids_from_wire(&n.ids) {
                        Ok(ids) => consumer.nack(ids, action, &n.reason).await,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                Ok(Some(_)) => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "after the options, a persistent subscription takes only acks and nacks",
                        )))
                        .await;
                    return;
                }
                // The client hung up.
                Ok(None) | Err(_) => return,
            },
            delivery = consumer.next() => match delivery {
                Some(Ok(d)) => {
                    let resolve = resolve_links
                        && (d.event.link.is_none() || readable(d.event.stream.clone()).await);
                    let (event, link) = convert::event_and_link(&d.event, resolve, uuid);
                    let resp = wire::ReadResp {
                        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
                            event,
                            link,
                            position: Some(read_resp::read_event::Position::CommitPosition(
                                d.event.position.0,
                            )),
                            count: Some(read_resp::read_event::Count::RetryCount(
                                i32::try_from(d.retry_count).unwrap_or(i32::MAX),
                            )),
                        })),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(persistent_status(&e))).await;
                    return;
                }
                None => return,
            },
            _ = &mut stopping => {
                let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                return;
            }
            _ = tx.closed() => return,
        }
    }
}

/// Completes when the server starts shutting down (never, if it cannot tell).
async fn shutting_down(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_in_ticks_and_names() {
        let s = wire::Settings {
            message_timeout: Some(wire::settings::MessageTimeout::MessageTimeoutTicks(
                5_000 * TICKS_PER_MS,
            )),
            checkpoint_after: Some(wire::settings::CheckpointAfter::CheckpointAfterMs(250)),
            consumer_strategy: "Pinned".into(),
            live_buffer_size: 10,
            read_batch_size: 5,
            history_buffer_size: 10,
            max_checkpoint_count: 10,
            ..Default::default()
        };
        let g = settings_from_wire(&s, StartFrom::Start).unwrap();
        assert_eq!(g.message_timeout, Duration::from_secs(5));
        assert_eq!(g.checkpoint_after, Duration::from_millis(250));
        assert_eq!(g.consumer_strategy, ConsumerStrategy::Pinned);
        let bad = wire::Settings {
            max_retry_count: -1,
            ..s
        };
        assert_eq!(
            settings_from_wire(&bad, StartFrom::Start)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn errors_carry_kurrentdbs_exceptions() {
        let key = factum_persistent::GroupKey::new("s", "g").unwrap();
        let st = persistent_status(&PersistentError::AlreadyExists(key.clone()));
        assert_eq!(st.code(), Code::AlreadyExists);
        assert_eq!(
            st.metadata().get("exception").unwrap(),
            "persistent-subscription-exists"
        );
        let st = persistent_status(&PersistentError::NotFound(key));
        assert_eq!(st.code(), Code::NotFound);
    }
}
