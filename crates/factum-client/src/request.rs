//! The requests the client sends, built from the core's requests: reads,
//! subscriptions, appends through `Append`, deletes and tombstones.
//! (BatchAppend's requests are built in `batch.rs`.)

use factum_core::{
    AllStart, Direction, EventData, ExpectedRevision, Filter, FilterMatch, FilterOn, Position,
    ReadAll, ReadStream, Result, StreamName, StreamRevision, StreamStart, Subscribe,
    SubscriptionStart, SubscriptionTarget,
};
use factum_proto::shared::Empty;
use factum_proto::streams::read_req::options::{
    self as ro, CountOption, FilterOption, StreamOption,
};
use factum_proto::streams::read_req::Options as ReadOptions;
use factum_proto::streams::{
    append_req, delete_req, tombstone_req, AppendReq, DeleteReq, ReadReq, TombstoneReq,
};

use crate::wire;

/// A count read of a stream (every event when it filters by `until`:
/// the client counts those it keeps).
pub(crate) fn read_stream(request: &ReadStream) -> ReadOptions {
    let count = if request.until.is_some() {
        u64::MAX
    } else {
        request.max_count
    };
    ReadOptions {
        stream_option: stream_option(&request.stream, request.from),
        read_direction: direction(request.direction),
        count_option: Some(CountOption::Count(count)),
        filter_option: Some(FilterOption::NoFilter(Empty {})),
        ..Default::default()
    }
}

/// A count read of `$all` (every event when it filters by `until`).
pub(crate) fn read_all(request: &ReadAll) -> ReadOptions {
    let count = if request.until.is_some() {
        u64::MAX
    } else {
        request.max_count
    };
    ReadOptions {
        stream_option: all_option(request.from),
        read_direction: direction(request.direction),
        count_option: Some(CountOption::Count(count)),
        filter_option: Some(match &request.filter {
            Some(f) => FilterOption::Filter(filter_options(f)),
            None => FilterOption::NoFilter(Empty {}),
        }),
        ..Default::default()
    }
}

/// A read as the client sends every read and subscription: links
/// resolved, ids as two integers, the newest compatibility.
pub(crate) fn read(options: ReadOptions) -> ReadReq {
    ReadReq {
        options: Some(ReadOptions {
            resolve_links: true,
            // Two integers: cheaper than the string form at both ends.
            uuid_option: Some(ro::UuidOption {
                content: Some(ro::uuid_option::Content::Structured(Empty {})),
            }),
            control_option: Some(ro::ControlOption { compatibility: 2 }),
            ..options
        }),
    }
}

/// A subscription's read options, and the stream named in its errors.
pub(crate) fn subscribe(request: &Subscribe) -> (ReadOptions, StreamName) {
    let (option, filter, name) = match &request.target {
        SubscriptionTarget::Stream(s) => {
            let from = match request.start {
                SubscriptionStart::Beginning => StreamStart::Start,
                SubscriptionStart::End => StreamStart::End,
                SubscriptionStart::After(r) => StreamStart::Revision(StreamRevision(r)),
            };
            (
                stream_option(s, from),
                FilterOption::NoFilter(Empty {}),
                s.clone(),
            )
        }
        SubscriptionTarget::All(f) => {
            let from = match request.start {
                SubscriptionStart::Beginning => AllStart::Start,
                SubscriptionStart::End => AllStart::End,
                SubscriptionStart::After(p) => AllStart::Position(Position(p)),
            };
            let filter = match f {
                Some(f) => FilterOption::Filter(filter_options(f)),
                None => FilterOption::NoFilter(Empty {}),
            };
            (all_option(from), filter, StreamName::all())
        }
    };
    let options = ReadOptions {
        stream_option: option,
        count_option: Some(CountOption::Subscription(ro::SubscriptionOptions {})),
        filter_option: Some(filter),
        ..Default::default()
    };
    (options, name)
}

/// The messages of an `Append` call: its options, then each event.
pub(crate) fn append(
    stream: &StreamName,
    expected: ExpectedRevision,
    events: Vec<EventData>,
) -> Result<impl Iterator<Item = AppendReq>> {
    let expected_wire = expected.try_into()?;
    let mut reqs = Vec::with_capacity(events.len() + 1);
    reqs.push(append_req::Content::Options(append_req::Options {
        stream_identifier: wire::stream_id(stream),
        expected_stream_revision: Some(expected_wire),
    }));
    for e in events {
        reqs.push(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: wire::uuid(e.id),
                metadata: wire::proposed_metadata(&e),
                custom_metadata: e.metadata.to_vec(),
                data: e.data.to_vec(),
            },
        ));
    }
    let reqs = reqs.into_iter().map(|c| AppendReq { content: Some(c) });
    Ok(reqs)
}

/// A `Delete` request.
pub(crate) fn delete(stream: &StreamName, expected: ExpectedRevision) -> Result<DeleteReq> {
    Ok(DeleteReq {
        options: Some(delete_req::Options {
            stream_identifier: wire::stream_id(stream),
            expected_stream_revision: Some(expected.try_into()?),
        }),
    })
}

/// A `Tombstone` request.
pub(crate) fn tombstone(stream: &StreamName, expected: ExpectedRevision) -> Result<TombstoneReq> {
    Ok(TombstoneReq {
        options: Some(tombstone_req::Options {
            stream_identifier: wire::stream_id(stream),
            expected_stream_revision: Some(expected.try_into()?),
        }),
    })
}

fn direction(d: Direction) -> i32 {
    match d {
        Direction::Forwards => 0,
        Direction::Backwards => 1,
    }
}

fn filter_options(f: &Filter) -> ro::FilterOptions {
    use ro::filter_options::{Expression, Filter as F, Window};
    let expr = match &f.matcher {
        FilterMatch::Prefixes(p) => Expression {
            regex: String::new(),
            prefix: p.clone(),
        },
        FilterMatch::Regex(r) => Expression {
            regex: r.as_str().to_owned(),
            prefix: Vec::new(),
        },
    };
    ro::FilterOptions {
        filter: Some(match f.on {
            FilterOn::StreamName => F::StreamIdentifier(expr),
            FilterOn::EventType => F::EventType(expr),
        }),
        window: Some(Window::Max(32)),
        checkpoint_interval_multiplier: 1,
    }
}

fn stream_option(stream: &StreamName, from: StreamStart) -> Option<StreamOption> {
    use ro::stream_options::RevisionOption as R;
    Some(StreamOption::Stream(ro::StreamOptions {
        stream_identifier: wire::stream_id(stream),
        revision_option: Some(match from {
            StreamStart::Start => R::Start(Empty {}),
            StreamStart::End => R::End(Empty {}),
            StreamStart::Revision(r) => R::Revision(r.0),
        }),
    }))
}

fn all_option(from: AllStart) -> Option<StreamOption> {
    use ro::all_options::AllOption as A;
    Some(StreamOption::All(ro::AllOptions {
        all_option: Some(match from {
            AllStart::Start => A::Start(Empty {}),
            AllStart::End => A::End(Empty {}),
            AllStart::Position(p) => A::Position(ro::Position {
                commit_position: p.0,
                prepare_position: p.0,
            }),
        }),
    }))
}
