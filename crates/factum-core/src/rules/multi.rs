//! The rules of multi-stream appends (ADR 29), shared by every backend.
//!
//! A backend looks up the state of every stream of a [`MultiAppend`] (and,
//! for a soft-deleted one, of its `$$` stream), calls [`decide_multi`],
//! compares event ids where a part asks for it ([`Part::Retry`]), and hands
//! the parts to [`settle`], which says what to write or answer. A written
//! stream follows exactly the rules of a single-stream append ([`decide`]:
//! expectations, soft deletes and their undelete event, tombstones,
//! limits); a stream only checked follows KurrentDB's consistency checks.
//! Any condition that does not hold fails the whole append with
//! [`Error::ConsistencyViolation`] listing every one; nothing is written.
//! A retry whose every written stream already holds its events answers
//! the earlier result, as KurrentDB does; a request in which only some
//! streams are such retries is a violation on those streams.

use super::{check_events, decide, Decision, Limits, Operation, StreamState, Undelete, WriteKind};
use crate::error::{Error, Result};
use crate::expected::AppendResult;
use crate::model::{EventData, Position, StreamName, StreamRevision};
use crate::multi::{
    ActualState, MultiAppend, MultiAppendResult, StreamAppended, StreamCondition, Violation,
};
use uuid::Uuid;

/// What the rules say of one stream of a multi-stream append.
#[derive(Debug)]
pub enum Part {
    /// A stream only checked, whose condition holds.
    Holds,
    /// Its condition does not hold.
    Violated(Violation),
    /// The request cannot be carried out at all (bad input, a limit).
    Refused(Error),
    /// A written stream: write these events ([`Decision::Write`]).
    Write(Decision),
    /// A written stream whose events may already stand at `first`: if the
    /// stream's events from revision `first` have exactly the ids `ids`,
    /// the backend replaces this part by [`Part::Retried`], else by
    /// `otherwise`.
    Retry {
        /// The stream.
        stream: StreamName,
        /// First revision to compare.
        first: u64,
        /// The ids of the request's events for this stream.
        ids: Vec<Uuid>,
        /// Where the stream is (reported if the retry is only partial).
        actual: ActualState,
        /// What the part is when the ids differ.
        otherwise: Box<Part>,
    },
    /// A written stream whose events already stand: the earlier result.
    Retried {
        /// That append's result for this stream.
        result: AppendResult,
        /// Where the stream is now.
        actual: ActualState,
    },
}

/// The checks of a multi-stream append that need no stream state: at least
/// one event; every stream named once; not a stream and its `$$` stream
/// together (the undelete of one would race the other's writes); `$all`
/// never; the events of each written stream valid as in a single append;
/// the whole request within the limits of one append.
pub fn check_multi_input(req: &MultiAppend, limits: &Limits) -> Result<()> {
    if req.events.is_empty() {
        return Err(Error::InvalidInput(
            "a multi-stream append needs at least one event".into(),
        ));
    }
    let mut names: Vec<&str> = req.streams.iter().map(|p| p.stream.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidInput(format!(
            "stream {} appears more than once in a multi-stream append",
            w[0]
        )));
    }
    for (i, part) in req.streams.iter().enumerate() {
        if part.stream.is_all() {
            return Err(Error::InvalidInput(
                "$all cannot take part in a multi-stream append".into(),
            ));
        }
        if let StreamCondition::Revision(r) = part.condition {
            crate::ExpectedRevision::Exact(r).checked()?;
        }
        if let Some(owner) = part.stream.metadata_of() {
            if names.binary_search(&owner.as_str()).is_ok() {
                return Err(Error::InvalidInput(format!(
                    "stream {owner} and its metadata stream {} cannot both take part in one multi-stream append",
                    part.stream
                )));
            }
        }
        let events: Vec<EventData> = req.events_of(i).cloned().collect();
        if !events.is_empty() {
            if !part.stream.is_writable() {
                return Err(Error::InvalidInput(format!(
                    "stream {} is read-only",
                    part.stream
                )));
            }
            check_events(&part.stream, &events, limits)?;
        }
    }
    if let Some(&(i, _)) = req.events.iter().find(|(i, _)| *i >= req.streams.len()) {
        return Err(Error::InvalidInput(format!(
            "an event names stream index {i} of {}",
            req.streams.len()
        )));
    }
    let total: usize = req.events.iter().map(|(_, e)| e.size()).sum();
    if total > limits.max_append_bytes {
        return Err(Error::LimitExceeded {
            what: "append size in bytes".into(),
            limit: limits.max_append_bytes as u64,
            actual: total as u64,
        });
    }
    if req.events.len() > limits.max_append_events {
        return Err(Error::LimitExceeded {
            what: "events in one append".into(),
            limit: limits.max_append_events as u64,
            actual: req.events.len() as u64,
        });
    }
    Ok(())
}

/// Where a stream is, as a violation reports it: KurrentDB reports a
/// soft-deleted stream as deleted only to an `Exists` condition, and its
/// last revision otherwise.
fn actual(state: &StreamState, condition: StreamCondition) -> ActualState {
    if state.tombstoned {
        ActualState::Tombstoned
    } else if state.deleted && condition == StreamCondition::Exists {
        ActualState::Deleted
    } else {
        state.current().into()
    }
}

/// Does `condition` hold of a stream only checked? As KurrentDB: a
/// tombstoned stream counts as having no stream; a soft-deleted one keeps
/// its last revision.
pub fn check_only(condition: StreamCondition, state: Option<&StreamState>) -> Option<ActualState> {
    use StreamCondition as C;
    let empty = StreamState::default();
    let s = state.unwrap_or(&empty);
    let holds = if s.tombstoned {
        matches!(condition, C::Any | C::NoStream | C::Tombstoned)
    } else if s.deleted {
        match condition {
            C::Any | C::NoStream | C::Deleted => true,
            C::Exists | C::Tombstoned => false,
            C::Revision(r) => s.last_revision == Some(r.0),
        }
    } else {
        match condition {
            C::Any => true,
            C::NoStream => s.last_revision.is_none(),
            C::Exists => s.last_revision.is_some(),
            C::Revision(r) => s.last_revision == Some(r.0),
            C::Deleted | C::Tombstoned => false,
        }
    };
    (!holds).then(|| actual(s, condition))
}

/// Decides every stream of `req`. `state` looks a stream up (as the store
/// holds it now). Errors only when a lookup fails or the input is bad.
pub fn decide_multi(
    req: &MultiAppend,
    mut state: impl FnMut(&StreamName) -> Result<Option<StreamState>>,
    limits: &Limits,
) -> Result<Vec<Part>> {
    check_multi_input(req, limits)?;
    let mut parts = Vec::with_capacity(req.streams.len());
    for (index, p) in req.streams.iter().enumerate() {
        let events: Vec<EventData> = req.events_of(index).cloned().collect();
        let own = state(&p.stream)?;
        let violated = |actual| {
            Part::Violated(Violation {
                index,
                stream: p.stream.clone(),
                expected: p.condition,
                actual,
            })
        };
        if events.is_empty() {
            parts.push(match check_only(p.condition, own.as_ref()) {
                None => Part::Holds,
                Some(a) => violated(a),
            });
            continue;
        }
        let empty = StreamState::default();
        let own_state = own.as_ref().unwrap_or(&empty);
        let expected = match p.condition {
            StreamCondition::Tombstoned => {
                parts.push(violated(actual(own_state, p.condition)));
                continue;
            }
            StreamCondition::Deleted if !own_state.deleted || own_state.tombstoned => {
                parts.push(violated(actual(own_state, p.condition)));
                continue;
            }
            StreamCondition::Deleted => crate::ExpectedRevision::Any,
            c => c.as_expected().expect("not deleted or tombstoned"),
        };
        let op = Operation::Append(events);
        let (owner, written) = super::streams_of(&p.stream, &op);
        let owner_state = if owner == p.stream {
            own.clone()
        } else {
            state(&owner)?
        };
        let written_state = if written == p.stream {
            own.clone()
        } else {
            state(&written)?
        };
        let meta_state = match &owner_state {
            Some(s) if s.deleted => state(&owner.metadata_stream())?,
            _ => None,
        };
        let d = decide(
            &p.stream,
            expected,
            op,
            owner_state.as_ref(),
            written_state.as_ref(),
            meta_state.as_ref(),
            limits,
        );
        let tombstoned = owner_state.as_ref().is_some_and(|s| s.tombstoned);
        parts.push(part_of(
            index,
            p.condition,
            &p.stream,
            d,
            own_state,
            tombstoned,
        ));
    }
    Ok(parts)
}

/// A single-stream decision as a part.
fn part_of(
    index: usize,
    condition: StreamCondition,
    stream: &StreamName,
    d: Decision,
    state: &StreamState,
    tombstoned: bool,
) -> Part {
    let violated = |actual| {
        Part::Violated(Violation {
            index,
            stream: stream.clone(),
            expected: condition,
            actual,
        })
    };
    match d {
        Decision::Reject(Error::WrongExpectedVersion { actual, .. }) => violated(actual.into()),
        Decision::Reject(Error::StreamDeleted { .. }) => violated(if tombstoned {
            ActualState::Tombstoned
        } else {
            ActualState::Deleted
        }),
        Decision::Reject(e) => Part::Refused(e),
        w @ Decision::Write { .. } => Part::Write(w),
        Decision::CheckRetry {
            stream: retried,
            first,
            ids,
            otherwise,
        } => Part::Retry {
            stream: retried,
            first,
            ids,
            actual: state.current().into(),
            otherwise: Box::new(part_of(
                index, condition, stream, *otherwise, state, tombstoned,
            )),
        },
        // An append with events is never answered without writing.
        Decision::Done(_) => Part::Refused(Error::unavailable(
            crate::error::UnavailableReason::Protocol,
            "a multi-stream append decided to write nothing",
        )),
    }
}

/// Resolves a [`Part::Retry`] by what the backend found: `Some` earlier
/// result when the stream's events from `first` have the request's ids.
/// Other parts are returned as they are.
pub fn resolve(part: Part, found: Option<AppendResult>) -> Part {
    match (part, found) {
        (Part::Retry { actual, .. }, Some(result)) => Part::Retried { result, actual },
        (Part::Retry { otherwise, .. }, None) => *otherwise,
        (p, _) => p,
    }
}

/// One record of a multi-stream append's write, in log order.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// Its stream.
    pub stream: StreamName,
    /// Its revision there.
    pub revision: u64,
    /// The event.
    pub event: EventData,
}

/// What a multi-stream append writes: its events in the request's order,
/// then the undelete events of the soft-deleted streams it recreates, as
/// one atomic unit (one frame in the engine, one transaction in
/// PostgreSQL).
#[derive(Clone, Debug)]
pub struct MultiWrite {
    /// The records, in log order (all [`WriteKind::Events`]).
    pub records: Vec<WriteRecord>,
    /// How many of them are the request's events (the undeletes follow).
    pub events: usize,
    /// Per written stream: its index in the request, name, last revision
    /// and the index of its last record in `records`.
    pub written: Vec<(usize, StreamName, u64, usize)>,
}

impl MultiWrite {
    /// The answer once the first record is at `first_position`.
    pub fn result(&self, first_position: u64) -> MultiAppendResult {
        MultiAppendResult {
            streams: self
                .written
                .iter()
                .map(|(index, stream, revision, last)| StreamAppended {
                    index: *index,
                    stream: stream.clone(),
                    revision: StreamRevision(*revision),
                    position: Position(first_position + *last as u64),
                })
                .collect(),
            position: Position(first_position + self.events as u64 - 1),
        }
    }
}

/// What the backend does after [`decide_multi`] and its retry checks.
#[derive(Debug)]
pub enum Settled {
    /// Every written stream already holds its events: answer this.
    Done(MultiAppendResult),
    /// Write this.
    Write(MultiWrite),
}

/// Settles a multi-stream append from its decided parts (every
/// [`Part::Retry`] resolved by the backend). The first refusal fails it;
/// otherwise every violation is reported at once.
pub fn settle(req: &MultiAppend, parts: Vec<Part>) -> Result<Settled> {
    let mut violations = Vec::new();
    let mut writes: Vec<(usize, Decision)> = Vec::new();
    let mut retried: Vec<(usize, AppendResult, ActualState)> = Vec::new();
    for (index, part) in parts.into_iter().enumerate() {
        match part {
            Part::Holds => {}
            Part::Violated(v) => violations.push(v),
            Part::Refused(e) => return Err(e),
            Part::Write(d) => writes.push((index, d)),
            Part::Retry { .. } => {
                return Err(Error::unavailable(
                    crate::error::UnavailableReason::Protocol,
                    "a retry check of a multi-stream append was left unresolved",
                ))
            }
            Part::Retried { result, actual } => retried.push((index, result, actual)),
        }
    }
    if writes.is_empty() && !retried.is_empty() {
        // A retry of an append that was made: its result, whatever the
        // streams only checked say now (as KurrentDB).
        let streams: Vec<StreamAppended> = retried
            .iter()
            .map(|(index, r, _)| StreamAppended {
                index: *index,
                stream: req.streams[*index].stream.clone(),
                revision: r.revision,
                position: r.position,
            })
            .collect();
        let position = streams.iter().map(|s| s.position).max().expect("non-empty");
        return Ok(Settled::Done(MultiAppendResult { streams, position }));
    }
    for (index, _, actual) in retried {
        violations.push(Violation {
            index,
            stream: req.streams[index].stream.clone(),
            expected: req.streams[index].condition,
            actual,
        });
    }
    if !violations.is_empty() {
        violations.sort_by_key(|v| v.index);
        return Err(Error::ConsistencyViolation { violations });
    }
    // Interleave the written streams' events in the request's order.
    let mut streams: Vec<Option<(u64, std::vec::IntoIter<EventData>)>> =
        (0..req.streams.len()).map(|_| None).collect();
    let mut undeletes: Vec<Undelete> = Vec::new();
    for (index, d) in writes {
        if let Decision::Write {
            events,
            first_revision,
            undelete,
            kind,
            ..
        } = d
        {
            debug_assert_eq!(kind, WriteKind::Events);
            streams[index] = Some((first_revision, events.into_iter()));
            undeletes.extend(undelete);
        }
    }
    let mut records = Vec::with_capacity(req.events.len() + undeletes.len());
    let mut last: Vec<Option<(u64, usize)>> = vec![None; req.streams.len()];
    for (index, _) in &req.events {
        let Some((next, events)) = streams[*index].as_mut() else {
            continue;
        };
        let Some(event) = events.next() else { continue };
        last[*index] = Some((*next, records.len()));
        records.push(WriteRecord {
            stream: req.streams[*index].stream.clone(),
            revision: *next,
            event,
        });
        *next += 1;
    }
    let events = records.len();
    records.extend(undeletes.into_iter().map(|u| WriteRecord {
        stream: u.stream,
        revision: u.revision,
        event: u.event,
    }));
    let written = last
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|(rev, at)| (i, req.streams[i].stream.clone(), rev, at)))
        .collect();
    Ok(Settled::Write(MultiWrite {
        records,
        events,
        written,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExpectedRevision;

    fn s(n: &str) -> StreamName {
        StreamName::new(n).unwrap()
    }

    fn at(last: u64) -> StreamState {
        StreamState {
            last_revision: Some(last),
            ..StreamState::default()
        }
    }

    #[test]
    fn check_only_follows_kurrentdbs_matrix() {
        use StreamCondition as C;
        let deleted = StreamState {
            deleted: true,
            ..at(3)
        };
        let tomb = StreamState {
            tombstoned: true,
            ..at(3)
        };
        let live = at(3);
        let r = |n| C::Revision(StreamRevision(n));
        let rev = |n| Some(ActualState::Revision(StreamRevision(n)));
        let cases: Vec<(C, Option<&StreamState>, Option<ActualState>)> = vec![
            (r(3), Some(&live), None),
            (r(2), Some(&live), rev(3)),
            (r(0), None, Some(ActualState::NoStream)),
            (r(3), Some(&deleted), None),
            (r(2), Some(&deleted), rev(3)),
            (r(3), Some(&tomb), Some(ActualState::Tombstoned)),
            (C::NoStream, Some(&live), rev(3)),
            (C::NoStream, Some(&deleted), None),
            (C::NoStream, Some(&tomb), None),
            (C::Exists, None, Some(ActualState::NoStream)),
            (C::Exists, Some(&deleted), Some(ActualState::Deleted)),
            (C::Exists, Some(&tomb), Some(ActualState::Tombstoned)),
            (C::Deleted, Some(&deleted), None),
            (C::Deleted, Some(&live), rev(3)),
            (C::Deleted, None, Some(ActualState::NoStream)),
            (C::Tombstoned, Some(&tomb), None),
            (C::Tombstoned, Some(&deleted), rev(3)),
            (C::Tombstoned, None, Some(ActualState::NoStream)),
        ];
        for (c, st, want) in cases {
            assert_eq!(check_only(c, st), want, "{c} on {st:?}");
        }
    }

    #[test]
    fn interleaved_events_get_revisions_in_order_and_one_range() {
        let req = MultiAppend::new()
            .append(s("a-1"), ExpectedRevision::Exact(StreamRevision(3)), [])
            .record(s("b-1"), EventData::binary("T", "1"))
            .record(s("a-1"), EventData::binary("T", "2"))
            .record(s("b-1"), EventData::binary("T", "3"));
        let states = |n: &StreamName| Ok((n.as_str() == "a-1").then(|| at(3)));
        let parts = decide_multi(&req, states, &Limits::default()).unwrap();
        let Settled::Write(w) = settle(&req, parts).unwrap() else {
            panic!()
        };
        let got: Vec<_> = w
            .records
            .iter()
            .map(|r| (r.stream.as_str(), r.revision))
            .collect();
        assert_eq!(got, [("b-1", 0), ("a-1", 4), ("b-1", 1)]);
        let r = w.result(10);
        assert_eq!(r.position, Position(12));
        assert_eq!(
            r.streams
                .iter()
                .map(|s| (s.stream.as_str(), s.revision.0, s.position.0))
                .collect::<Vec<_>>(),
            [("a-1", 4, 11), ("b-1", 1, 12)]
        );
    }

    #[test]
    fn every_violation_is_reported_and_nothing_written() {
        let req = MultiAppend::new()
            .append(
                s("a-1"),
                ExpectedRevision::NoStream,
                [EventData::binary("T", "x")],
            )
            .append(
                s("b-1"),
                ExpectedRevision::Exact(StreamRevision(0)),
                [EventData::binary("T", "x")],
            )
            .check(s("c-1"), StreamCondition::Exists);
        let states = |n: &StreamName| Ok((n.as_str() == "a-1").then(|| at(0)));
        let parts = decide_multi(&req, states, &Limits::default()).unwrap();
        assert!(matches!(parts[0], Part::Retry { .. }), "{parts:?}");
        let parts = parts.into_iter().map(|p| resolve(p, None)).collect();
        let Err(Error::ConsistencyViolation { violations }) = settle(&req, parts) else {
            panic!()
        };
        let got: Vec<_> = violations.iter().map(|v| (v.index, v.actual)).collect();
        assert_eq!(
            got,
            [
                (0, ActualState::Revision(StreamRevision(0))),
                (1, ActualState::NoStream),
                (2, ActualState::NoStream)
            ]
        );
    }

    #[test]
    fn bad_requests_are_refused_before_any_state() {
        let e = || EventData::binary("T", "x");
        for req in [
            MultiAppend::new(),
            MultiAppend::new()
                .append(s("a-1"), ExpectedRevision::Any, [e()])
                .append(s("a-1"), ExpectedRevision::Any, [e()]),
            MultiAppend::new()
                .append(s("a-1"), ExpectedRevision::Any, [e()])
                .append(s("$$a-1"), ExpectedRevision::Any, []),
            MultiAppend::new().append(s("$ce-a"), ExpectedRevision::Any, [e()]),
        ] {
            let r = decide_multi(&req, |_| panic!("no lookups"), &Limits::default());
            assert!(matches!(r, Err(Error::InvalidInput(_))), "{req:?}: {r:?}");
        }
    }
}
