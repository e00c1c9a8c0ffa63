//! What a projection's source declares: where its events come from, how
//! they are partitioned, which handlers it has and its options — the
//! equivalent of KurrentDB's query sources, read from the JavaScript
//! prelude's definition once the source has run.

use serde::{Deserialize, Serialize};

/// Where a projection's events come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// `fromAll()`: every user event (streams not starting with `$`).
    All,
    /// `fromStream(s)` / `fromStreams([...])`: stream names, `$ce-<category>`
    /// and `$et-<type>` among them.
    Streams(Vec<String>),
    /// `fromCategory(c)` / `fromCategories([...])`.
    Categories(Vec<String>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSource {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    streams: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
}

/// A projection's definition (KurrentDB's "query sources" and options).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// Where events come from.
    pub source: Source,
    /// `foreachStream()`: one state per stream.
    pub by_stream: bool,
    /// `partitionBy(f)`: one state per partition `f` names.
    pub partitioned: bool,
    /// A `$any` handler (or none at all): every event is handled.
    pub all_events: bool,
    /// The event types with their own handler.
    pub events: Vec<String>,
    /// A `$created` handler.
    pub handles_created: bool,
    /// A `$deleted` handler.
    pub handles_deleted: bool,
    /// `$initShared` or the `biState` option: a shared state beside the
    /// partitions'.
    pub bi_state: bool,
    /// `outputState()` (or a transform / `outputTo`): results are written.
    pub output_state: bool,
    /// `transformBy` / `filterBy`: the result differs from the state.
    pub defines_state_transform: bool,
    /// `options({resultStreamName})` or `outputTo(stream)`.
    pub result_stream_name: Option<String>,
    /// `outputTo(stream, pattern)`: partitions' result streams, `{0}` for
    /// the partition.
    pub partition_result_stream_name_pattern: Option<String>,
    /// `options({$includeLinks})`: link events (`$>`) are delivered too.
    pub include_links: bool,
    /// `options({reorderEvents})` (events always arrive in log order here).
    pub reorder_events: bool,
    /// `options({processingLag})`, in milliseconds.
    pub processing_lag: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDefinition {
    source: RawSource,
    by_stream: bool,
    partitioned: bool,
    all_events: bool,
    events: Vec<String>,
    handles_created: bool,
    handles_deleted: bool,
    bi_state: bool,
    output_state: bool,
    defines_state_transform: bool,
    result_stream_name: Option<String>,
    partition_result_stream_name_pattern: Option<String>,
    include_links: bool,
    reorder_events: bool,
    processing_lag: Option<i64>,
}

impl Definition {
    /// Reads the prelude's JSON form.
    pub(crate) fn from_prelude_json(json: &str) -> Result<Definition, String> {
        let raw: RawDefinition =
            serde_json::from_str(json).map_err(|e| format!("definition: {e}"))?;
        let source = if raw.source.all {
            Source::All
        } else if !raw.source.categories.is_empty() {
            Source::Categories(raw.source.categories)
        } else {
            // `fromStream('$ce-c')` reads the category; `$et-` by type is
            // a stream the store serves, read as one.
            let mut categories = Vec::new();
            let mut streams = Vec::new();
            for s in raw.source.streams {
                match s.strip_prefix("$ce-") {
                    Some(c) if !c.is_empty() => categories.push(c.to_owned()),
                    _ => streams.push(s),
                }
            }
            if streams.is_empty() {
                Source::Categories(categories)
            } else {
                // A mix: the names as given, `$ce-`/`$et-` included (the
                // runner reads each kind).
                streams.extend(categories.into_iter().map(|c| format!("$ce-{c}")));
                Source::Streams(streams)
            }
        };
        Ok(Definition {
            source,
            by_stream: raw.by_stream,
            partitioned: raw.partitioned,
            all_events: raw.all_events,
            events: raw.events,
            handles_created: raw.handles_created,
            handles_deleted: raw.handles_deleted,
            bi_state: raw.bi_state,
            output_state: raw.output_state,
            defines_state_transform: raw.defines_state_transform,
            result_stream_name: raw.result_stream_name,
            partition_result_stream_name_pattern: raw.partition_result_stream_name_pattern,
            include_links: raw.include_links,
            reorder_events: raw.reorder_events,
            processing_lag: raw.processing_lag,
        })
    }

    /// Whether the projection keeps one state per partition.
    pub fn is_partitioned(&self) -> bool {
        self.by_stream || self.partitioned
    }

    /// Whether an event of this type reaches a handler.
    pub fn handles(&self, event_type: &str) -> bool {
        self.all_events || self.events.iter().any(|t| t == event_type)
    }
}
