//! Given / when / then helpers for aggregate tests: given past events, when
//! a command, then these events or this error. No store involved.
//!
//! ```ignore
//! use factum::testing::given;
//! given::<Account>([AccountEvent::Opened { owner: "ada".into() }])
//!     .when(&Command::Deposit { amount: 10 })
//!     .then([AccountEvent::Deposited { amount: 10 }]);
//! ```
//!
//! These are assertions: they panic with a readable message when the
//! expectation does not hold, as `assert_eq!` does.

use std::fmt::Debug;

use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::event;

/// Starts a scenario from past events.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for e in events {
        state.apply(&e);
    }
    Given { state }
}

/// A scenario's state after its past events.
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// The state reached (for assertions on `apply`).
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Runs a command.
    pub fn when(self, command: &A::Command) -> Then<A> {
        let outcome = self.state.handle(command);
        Then { outcome }
    }
}

/// A command's outcome, to assert on.
pub struct Then<A: Aggregate> {
    outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command produced exactly these events (compared by event
    /// type and JSON data, so events need not implement `PartialEq`).
    ///
    /// # Panics
    /// When the command failed or produced other events.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) {
        let actual = match self.outcome {
            Ok(events) => events,
            Err(e) => panic!("expected events, but the command was refused: {e}"),
        };
        let expected: Vec<A::Event> = expected.into_iter().collect();
        assert_eq!(
            as_json(&actual),
            as_json(&expected),
            "the command produced other events than expected"
        );
    }

    /// Asserts the command was refused with an error the predicate accepts.
    ///
    /// # Panics
    /// When the command succeeded or failed otherwise.
    pub fn then_error(self, accept: impl FnOnce(&A::Error) -> bool) {
        match self.outcome {
            Ok(events) => panic!(
                "expected the command to be refused, but it produced {:?}",
                as_json(&events)
            ),
            Err(e) => assert!(accept(&e), "the command was refused, but with: {e}"),
        }
    }

    /// Asserts the command was refused with an error equal to `expected`.
    ///
    /// # Panics
    /// When the command succeeded or failed otherwise.
    pub fn then_error_eq(self, expected: A::Error)
    where
        A::Error: PartialEq + Debug,
    {
        match self.outcome {
            Ok(events) => panic!(
                "expected {expected:?}, but the command produced {:?}",
                as_json(&events)
            ),
            Err(e) => assert_eq!(e, expected, "the command was refused with another error"),
        }
    }

    /// The raw outcome, for anything else.
    pub fn outcome(self) -> Result<Vec<A::Event>, A::Error> {
        self.outcome
    }
}

fn as_json<E: event::DomainEvent>(events: &[E]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|e| match event::encode(e) {
            Ok((t, data)) => (
                t.to_owned(),
                serde_json::from_slice(&data).unwrap_or(Value::Null),
            ),
            Err(err) => (format!("<unencodable: {err}>"), Value::Null),
        })
        .collect()
}
