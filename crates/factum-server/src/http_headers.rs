//! The HTTP API's request headers, named once for the routes (`http.rs`)
//! and their OpenAPI document (`openapi.rs`).

/// The header carrying an expected revision (`any`, `no-stream`, `exists`, or a number).
pub const EXPECTED_HEADER: &str = "factum-expected-revision";
/// KurrentDB's headers for a single event whose body is its data.
pub const EVENT_TYPE_HEADER: &str = "es-eventtype";
/// The event id of a single-event append (a new one when absent).
pub const EVENT_ID_HEADER: &str = "es-eventid";
/// KurrentDB's expected version: -2 any, -1 no stream, -4 stream exists, or a revision.
pub const EXPECTED_VERSION_HEADER: &str = "es-expectedversion";
