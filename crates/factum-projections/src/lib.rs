//! # factum-projections
//!
//! Server-side projections as KurrentDB has them: a projection is
//! JavaScript (`fromCategory('account').when({...}).outputState()`) that
//! folds events into state, partitions it, and emits or links events into
//! other streams. This crate runs it:
//!
//! | module | what |
//! |---|---|
//! | `sandbox` | one projection's QuickJS runtime: memory, stack and CPU-time limits per call (interrupt handler), no I/O, timers or modules, a deterministic clock and `Math.random` (ADR 35) |
//! | `prelude.js` | KurrentDB's projection language written in JavaScript: the definition functions, handlers, the event object, `emit`/`linkTo`/`linkStreamTo`/`copyTo`/`log` |
//! | `definition` | what a source declares: source streams/categories, partitioning, handled types, options |
//! | `access` | who a projection runs as and the server's stream ACLs it is checked against |
//!
//! ```
//! use factum_projections::{InputEvent, Limits, Projection};
//! let mut p = Projection::compile(
//!     "fromCategory('account').when({ $init: () => ({ n: 0 }), Deposited: (s, e) => { s.n += e.body.amount; return s; } })",
//!     Limits::default(),
//! ).unwrap();
//! p.load_partition("", None).unwrap();
//! let e = InputEvent {
//!     position: 1, created_micros: 0, stream: "account-1", sequence_number: 0,
//!     event_type: "Deposited", body: r#"{"amount":5}"#, metadata: "", link_metadata: None,
//!     is_json: true, category: "account", event_id: "00000000-0000-0000-0000-000000000001",
//! };
//! p.handle("", false, &e).unwrap();
//! assert_eq!(p.state("").unwrap().as_deref(), Some(r#"{"n":5}"#));
//! ```
#![warn(missing_docs)]

pub mod access;
pub mod definition;
pub mod manager;
pub mod names;
pub mod runner;
pub mod sandbox;
pub mod settings;
pub mod system;

pub use access::{Access, Right, RunAs};
pub use definition::{Definition, Source};
pub use manager::{
    Create, DeleteOptions, ProjectionError, Projections, Statistics, SYSTEM_PROJECTIONS,
};
pub use runner::{CheckpointPolicy, Status};
pub use sandbox::{Emitted, Fault, Input, InputEvent, Limits, Projection};
pub use settings::{Mode, Settings};
