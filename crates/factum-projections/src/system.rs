//! KurrentDB's system projections (ADR 39): listed, with a status, enabled
//! and disabled like any projection, running as the system (past ACLs).
//!
//! | projection | what | here |
//! |---|---|---|
//! | `$by_category` | `$ce-<category>` | served by the store's category index: always readable |
//! | `$by_event_type` | `$et-<type>` | served by the store's event-type index: always readable |
//! | `$streams` | `$streams`: a link to the first event of every stream | links written by the projection |
//! | `$stream_by_category` | `$category-<c>`: a stream reference (`$@`, data the stream's name) per stream of `c` | written by the projection |
//! | `$by_correlation_id` | `$bc-<id>`: a link to every event whose metadata has `$correlationId` | links written by the projection |
//!
//! The last three are KurrentDB's, written as links (`$>`, `$@`) in one
//! multi-stream append with the projection's checkpoint, so they are
//! exactly-once like every projection's output (ADR 35); reads resolve the
//! links (`factum-server`'s client store). Like KurrentDB's standard
//! projections they start disabled; the first two start running (their
//! streams exist whatever their status, the index serves them).

/// Every system projection, in KurrentDB's order.
pub const SYSTEM_PROJECTIONS: [&str; 5] = [
    BY_CATEGORY,
    BY_EVENT_TYPE,
    STREAM_BY_CATEGORY,
    STREAMS,
    BY_CORRELATION_ID,
];

/// `$by_category`.
pub const BY_CATEGORY: &str = "$by_category";
/// `$by_event_type`.
pub const BY_EVENT_TYPE: &str = "$by_event_type";
/// `$stream_by_category`.
pub const STREAM_BY_CATEGORY: &str = "$stream_by_category";
/// `$streams`.
pub const STREAMS: &str = "$streams";
/// `$by_correlation_id`.
pub const BY_CORRELATION_ID: &str = "$by_correlation_id";

/// Whether `name` is a system projection.
pub fn is_system(name: &str) -> bool {
    SYSTEM_PROJECTIONS.contains(&name)
}

/// Whether the store's indexes serve the projection's streams (nothing runs).
pub fn index_served(name: &str) -> bool {
    name == BY_CATEGORY || name == BY_EVENT_TYPE
}

/// The query a system projection shows and, for those that run, runs.
pub fn query(name: &str) -> Option<&'static str> {
    Some(match name {
        // KurrentDB's configuration text for these two.
        BY_CATEGORY => "first\r\n-",
        BY_EVENT_TYPE => "",
        STREAMS => {
            "fromAll().when({ $any: function (s, e) { if (e.sequenceNumber === 0) linkTo('$streams', e); } })"
        }
        STREAM_BY_CATEGORY => {
            "fromAll().when({ $any: function (s, e) { if (e.sequenceNumber === 0 && e.category !== '') linkStreamTo('$category-' + e.category, e.streamId); } })"
        }
        BY_CORRELATION_ID => {
            "fromAll().when({ $any: function (s, e) { var m = e.metadata; if (m !== null && typeof m === 'object' && typeof m.$correlationId === 'string' && m.$correlationId !== '') linkTo('$bc-' + m.$correlationId, e); } })"
        }
        _ => return None,
    })
}

/// Whether it runs when first listed (never stored yet).
pub fn enabled_by_default(name: &str) -> bool {
    index_served(name)
}
