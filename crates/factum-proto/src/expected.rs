//! Expected and current revisions on the wire: the one set of conversions
//! the server and the client share.
//!
//! KurrentDB's expected version is a signed 64-bit number: `-1` no stream,
//! `-2` any, `-4` stream exists, `n ≥ 0` the exact revision (HTTP's
//! `ES-ExpectedVersion`, error metadata). Its gRPC messages carry a
//! `uint64` revision beside empty `no_stream` / `any` / `stream_exists`
//! variants, and the server reads that revision as the signed number it
//! is the two's complement of. So, as in KurrentDB:
//!
//! | `uint64` on the wire | meaning |
//! |---|---|
//! | `0 ..= i64::MAX` | `Exact` |
//! | `i64::MAX + 1 ..= u64::MAX - 1` | refused: `InvalidInput` (gRPC `INVALID_ARGUMENT`) |
//! | `u64::MAX` (`-1`) | `NoStream` |
//!
//! Encoding refuses `Exact(n)` above `i64::MAX` the same way (the core
//! refuses it too, [`ExpectedRevision::checked`]), so a client can never
//! send a number the server would read as something else.
//!
//! ```
//! use factum_core::ExpectedRevision;
//! use factum_proto::streams::append_req::options::ExpectedStreamRevision as Wire;
//!
//! assert_eq!(
//!     ExpectedRevision::try_from(Wire::Revision(u64::MAX)).unwrap(),
//!     ExpectedRevision::NoStream
//! );
//! assert!(ExpectedRevision::try_from(Wire::Revision(1 << 63)).is_err());
//! ```

use factum_core::{
    AppendResult, CurrentRevision, Error, ExpectedRevision, Position, Result, StreamRevision,
};

use crate::shared;
use crate::streams::{
    append_req, append_resp, batch_append_req, batch_append_resp, delete_req, tombstone_req,
};

/// The `uint64` revision of a gRPC expected-revision field, as the core
/// expectation it stands for (see the module table).
pub fn expected_from_wire_revision(r: u64) -> Result<ExpectedRevision> {
    match r {
        u64::MAX => Ok(ExpectedRevision::NoStream),
        r => ExpectedRevision::Exact(StreamRevision(r))
            .checked()
            .map_err(|_| {
                Error::InvalidInput(format!(
                    "expected revision {r} is out of range: the largest is {} \
                 ({} is -1, no stream)",
                    i64::MAX,
                    u64::MAX
                ))
            }),
    }
}

/// The `uint64` revision field for `Exact(r)`; `InvalidInput` above `i64::MAX`.
pub fn exact_revision_to_wire(r: StreamRevision) -> Result<u64> {
    ExpectedRevision::Exact(r).checked().map(|_| r.0)
}

/// KurrentDB's numeric expected version (`-2` any, `-1` no stream, `-4`
/// stream exists, `n ≥ 0` exact); any other negative number is `InvalidInput`.
pub fn expected_from_version_number(n: i64) -> Result<ExpectedRevision> {
    match n {
        -2 => Ok(ExpectedRevision::Any),
        -1 => Ok(ExpectedRevision::NoStream),
        -4 => Ok(ExpectedRevision::StreamExists),
        n => u64::try_from(n)
            .map(|r| ExpectedRevision::Exact(StreamRevision(r)))
            .map_err(|_| {
                Error::InvalidInput(format!(
                    "expected version {n} is out of range: use -2 (any), -1 (no stream), \
                     -4 (stream exists) or a revision from 0 to {}",
                    i64::MAX
                ))
            }),
    }
}

/// The numeric expected version of an expectation (see
/// [`expected_from_version_number`]); an `Exact` revision above `i64::MAX`,
/// which the core refuses before it can be reported, saturates.
pub fn expected_version_number(e: ExpectedRevision) -> i64 {
    match e {
        ExpectedRevision::Any => -2,
        ExpectedRevision::NoStream => -1,
        ExpectedRevision::StreamExists => -4,
        ExpectedRevision::Exact(r) => i64::try_from(r.0).unwrap_or(i64::MAX),
    }
}

/// The numeric current version: `-1` for no stream.
pub fn current_version_number(c: CurrentRevision) -> i64 {
    match c {
        CurrentRevision::NoStream => -1,
        CurrentRevision::Current(r) => i64::try_from(r.0).unwrap_or(i64::MAX),
    }
}

/// A numeric current version as the core form: negative is no stream.
pub fn current_from_version_number(n: i64) -> CurrentRevision {
    match u64::try_from(n) {
        Ok(r) => CurrentRevision::Current(StreamRevision(r)),
        Err(_) => CurrentRevision::NoStream,
    }
}

/// `TryFrom` both ways between [`ExpectedRevision`] and one of the
/// expected-revision `oneof`s (they differ in name, not in meaning).
macro_rules! expected_oneof {
    ($($oneof:ident)::+, $revision:ident, $empty:expr) => {
        impl TryFrom<$($oneof)::+> for ExpectedRevision {
            type Error = Error;
            fn try_from(w: $($oneof)::+) -> Result<Self> {
                match w {
                    $($oneof)::+::$revision(r) => expected_from_wire_revision(r),
                    $($oneof)::+::NoStream(_) => Ok(ExpectedRevision::NoStream),
                    $($oneof)::+::Any(_) => Ok(ExpectedRevision::Any),
                    $($oneof)::+::StreamExists(_) => Ok(ExpectedRevision::StreamExists),
                }
            }
        }

        impl TryFrom<ExpectedRevision> for $($oneof)::+ {
            type Error = Error;
            fn try_from(e: ExpectedRevision) -> Result<Self> {
                Ok(match e {
                    ExpectedRevision::Exact(r) => Self::$revision(exact_revision_to_wire(r)?),
                    ExpectedRevision::NoStream => Self::NoStream($empty),
                    ExpectedRevision::Any => Self::Any($empty),
                    ExpectedRevision::StreamExists => Self::StreamExists($empty),
                })
            }
        }
    };
}

expected_oneof!(
    append_req::options::ExpectedStreamRevision,
    Revision,
    crate::shared::Empty {}
);
expected_oneof!(
    delete_req::options::ExpectedStreamRevision,
    Revision,
    crate::shared::Empty {}
);
expected_oneof!(
    tombstone_req::options::ExpectedStreamRevision,
    Revision,
    crate::shared::Empty {}
);
expected_oneof!(
    batch_append_req::options::ExpectedStreamPosition,
    StreamPosition,
    ()
);
expected_oneof!(
    batch_append_resp::ExpectedStreamPosition,
    StreamPosition,
    ()
);

/// `From` both ways between [`AppendResult`] and an append's success
/// answer (`Append`'s and `BatchAppend`'s differ only in the type of their
/// position): the stream's revision, the commit position as both commit
/// and prepare position (one log, as KurrentDB's clients expect). A
/// success without them (`no_stream`, `no_position`) reads as 0.
macro_rules! append_success {
    ($success:ident, $position:expr) => {
        impl From<AppendResult> for $success::Success {
            fn from(r: AppendResult) -> Self {
                use $success::success::{CurrentRevisionOption as C, PositionOption as P};
                $success::Success {
                    current_revision_option: Some(C::CurrentRevision(r.revision.0)),
                    position_option: Some(P::Position($position(r.position))),
                }
            }
        }

        impl From<&$success::Success> for AppendResult {
            fn from(s: &$success::Success) -> Self {
                use $success::success::{CurrentRevisionOption as C, PositionOption as P};
                AppendResult {
                    revision: StreamRevision(match s.current_revision_option {
                        Some(C::CurrentRevision(r)) => r,
                        _ => 0,
                    }),
                    position: Position(match &s.position_option {
                        Some(P::Position(p)) => p.commit_position,
                        _ => 0,
                    }),
                }
            }
        }
    };
}

append_success!(append_resp, |p: Position| append_resp::Position {
    commit_position: p.0,
    prepare_position: p.0,
});
append_success!(batch_append_resp, |p: Position| shared::AllStreamPosition {
    commit_position: p.0,
    prepare_position: p.0,
});

/// `Append`'s wrong-expected-version answer, in both shapes current
/// KurrentDB servers send (the `20_6_0` fields have no "no stream"
/// expectation, so that one is left out there, as KurrentDB does).
impl append_resp::WrongExpectedVersion {
    /// The answer for `expected` when the stream stood at `actual`.
    pub fn new(expected: ExpectedRevision, actual: CurrentRevision) -> Self {
        use append_resp::wrong_expected_version as w;
        let e = crate::shared::Empty {};
        let (current, current_old) = match actual {
            CurrentRevision::Current(r) => (
                w::CurrentRevisionOption::CurrentRevision(r.0),
                w::CurrentRevisionOption2060::CurrentRevision2060(r.0),
            ),
            CurrentRevision::NoStream => (
                w::CurrentRevisionOption::CurrentNoStream(e),
                w::CurrentRevisionOption2060::NoStream2060(e),
            ),
        };
        let (exp, exp_old) = match expected {
            ExpectedRevision::Exact(r) => (
                w::ExpectedRevisionOption::ExpectedRevision(r.0),
                Some(w::ExpectedRevisionOption2060::ExpectedRevision2060(r.0)),
            ),
            ExpectedRevision::Any => (
                w::ExpectedRevisionOption::ExpectedAny(e),
                Some(w::ExpectedRevisionOption2060::Any2060(e)),
            ),
            ExpectedRevision::StreamExists => (
                w::ExpectedRevisionOption::ExpectedStreamExists(e),
                Some(w::ExpectedRevisionOption2060::StreamExists2060(e)),
            ),
            ExpectedRevision::NoStream => (w::ExpectedRevisionOption::ExpectedNoStream(e), None),
        };
        append_resp::WrongExpectedVersion {
            current_revision_option_20_6_0: Some(current_old),
            expected_revision_option_20_6_0: exp_old,
            current_revision_option: Some(current),
            expected_revision_option: Some(exp),
        }
    }

    /// Where the stream stood (no current revision reads as no stream).
    pub fn actual(&self) -> CurrentRevision {
        use append_resp::wrong_expected_version::CurrentRevisionOption as C;
        match self.current_revision_option {
            Some(C::CurrentRevision(r)) => CurrentRevision::Current(StreamRevision(r)),
            _ => CurrentRevision::NoStream,
        }
    }
}

/// The wrong-expected-version detail of a `BatchAppend` answer.
impl shared::WrongExpectedVersion {
    /// The detail for `expected` when the stream stood at `actual`.
    pub fn new(expected: ExpectedRevision, actual: CurrentRevision) -> Self {
        use shared::wrong_expected_version as w;
        shared::WrongExpectedVersion {
            current_stream_revision_option: Some(match actual {
                CurrentRevision::Current(r) => {
                    w::CurrentStreamRevisionOption::CurrentStreamRevision(r.0)
                }
                CurrentRevision::NoStream => w::CurrentStreamRevisionOption::CurrentNoStream(()),
            }),
            expected_stream_position_option: Some(match expected {
                ExpectedRevision::Exact(r) => {
                    w::ExpectedStreamPositionOption::ExpectedStreamPosition(r.0)
                }
                ExpectedRevision::Any => w::ExpectedStreamPositionOption::ExpectedAny(()),
                ExpectedRevision::StreamExists => {
                    w::ExpectedStreamPositionOption::ExpectedStreamExists(())
                }
                ExpectedRevision::NoStream => w::ExpectedStreamPositionOption::ExpectedNoStream(()),
            }),
        }
    }

    /// Where the stream stood (no current revision reads as no stream).
    pub fn actual(&self) -> CurrentRevision {
        use shared::wrong_expected_version::CurrentStreamRevisionOption as C;
        match self.current_stream_revision_option {
            Some(C::CurrentStreamRevision(r)) => CurrentRevision::Current(StreamRevision(r)),
            _ => CurrentRevision::NoStream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I64_MAX: u64 = i64::MAX as u64;

    #[test]
    fn wire_revisions_read_as_kurrentdb_reads_them() {
        use append_req::options::ExpectedStreamRevision as W;
        let read = |r: u64| ExpectedRevision::try_from(W::Revision(r));
        assert_eq!(read(0).unwrap(), ExpectedRevision::Exact(StreamRevision(0)));
        assert_eq!(
            read(I64_MAX).unwrap(),
            ExpectedRevision::Exact(StreamRevision(I64_MAX))
        );
        assert_eq!(read(u64::MAX).unwrap(), ExpectedRevision::NoStream);
        for r in [I64_MAX + 1, I64_MAX + 2, u64::MAX - 2, u64::MAX - 1] {
            let Err(Error::InvalidInput(m)) = read(r) else {
                panic!("{r} was not refused")
            };
            assert!(
                m.contains("out of range") && m.contains(&r.to_string()),
                "{m}"
            );
        }
    }

    #[test]
    fn every_expectation_round_trips_and_huge_ones_are_refused() {
        use batch_append_req::options::ExpectedStreamPosition as B;
        use delete_req::options::ExpectedStreamRevision as D;
        for e in [
            ExpectedRevision::Any,
            ExpectedRevision::NoStream,
            ExpectedRevision::StreamExists,
            ExpectedRevision::Exact(StreamRevision(0)),
            ExpectedRevision::Exact(StreamRevision(I64_MAX)),
        ] {
            assert_eq!(
                ExpectedRevision::try_from(D::try_from(e).unwrap()).unwrap(),
                e
            );
            assert_eq!(
                ExpectedRevision::try_from(B::try_from(e).unwrap()).unwrap(),
                e
            );
            let n = expected_version_number(e);
            assert_eq!(expected_from_version_number(n).unwrap(), e);
        }
        for r in [I64_MAX + 1, u64::MAX] {
            let e = ExpectedRevision::Exact(StreamRevision(r));
            assert!(matches!(D::try_from(e), Err(Error::InvalidInput(_))));
            assert!(matches!(B::try_from(e), Err(Error::InvalidInput(_))));
        }
    }

    #[test]
    fn version_numbers_other_than_kurrentdbs_are_refused() {
        for n in [-3, -5, i64::MIN] {
            assert!(matches!(
                expected_from_version_number(n),
                Err(Error::InvalidInput(_))
            ));
        }
        assert_eq!(current_from_version_number(-1), CurrentRevision::NoStream);
        assert_eq!(
            current_version_number(CurrentRevision::Current(StreamRevision(7))),
            7
        );
    }

    #[test]
    fn wrong_expected_version_answers_carry_the_actual_revision_back() {
        for actual in [
            CurrentRevision::NoStream,
            CurrentRevision::Current(StreamRevision(0)),
            CurrentRevision::Current(StreamRevision(I64_MAX)),
        ] {
            let e = ExpectedRevision::Exact(StreamRevision(3));
            assert_eq!(
                append_resp::WrongExpectedVersion::new(e, actual).actual(),
                actual
            );
            assert_eq!(
                shared::WrongExpectedVersion::new(e, actual).actual(),
                actual
            );
        }
        let old = append_resp::WrongExpectedVersion::new(
            ExpectedRevision::NoStream,
            CurrentRevision::NoStream,
        );
        assert!(old.expected_revision_option_20_6_0.is_none());
        assert!(old.expected_revision_option.is_some());
    }

    #[test]
    fn append_successes_round_trip() {
        let r = AppendResult {
            revision: StreamRevision(4),
            position: Position(12),
        };
        assert_eq!(AppendResult::from(&append_resp::Success::from(r)), r);
        assert_eq!(AppendResult::from(&batch_append_resp::Success::from(r)), r);
        let empty = append_resp::Success::default();
        assert_eq!(
            AppendResult::from(&empty),
            AppendResult {
                revision: StreamRevision(0),
                position: Position(0)
            }
        );
    }
}
