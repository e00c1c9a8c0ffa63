//! One projection at work over any [`EventStore`]: follow the source in
//! `$all` from the checkpoint, hand events to the sandbox, and commit what
//! they produced — emitted events, partition states, results, the emitted
//! streams' list and the checkpoint — in **one multi-stream append**
//! (ADR 29) whose condition is the checkpoint stream's last revision (ADR
//! 35). After a kill -9 the projection restarts from the last committed
//! checkpoint and, being deterministic, produces the same events again for
//! what was not committed: nothing is lost and nothing is written twice.
//! A commit whose outcome is unknown is retried with the same event ids; if
//! the checkpoint moved, it is read back: at or past this commit it was
//! ours, otherwise another writer runs the projection and this one faults.
//!
//! Partition states are loaded on first use from
//! `$projections-<name>-<partition>-checkpoint` (states of an older epoch,
//! before a reset, are ignored) and stay in the sandbox's heap, bounded by
//! its memory limit. JavaScript runs on blocking threads, one batch of
//! events at a time, while a task of its own reads the next ones ahead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use factum_core::rules::{SOFT_DELETED_TRUNCATE_BEFORE, TOMBSTONE_EVENT_TYPE};
use factum_core::{
    ContentType, Direction, Error, EventData, EventStore, ExpectedRevision, Filter, MultiAppend,
    ReadStream, RecordedEvent, StreamCondition, StreamMetadata, StreamName, StreamRevision,
    StreamStart, Subscribe, Subscription, SubscriptionMessage, SubscriptionStart, Uuid,
    METADATA_EVENT_TYPE,
};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::access::{Access, Right};
use crate::definition::{Definition, Source};
use crate::names::{self, Names};
use crate::sandbox::{Emitted, Fault, Input, InputEvent, Limits, Projection};
use crate::settings::{Mode, Settings};

/// A link record's type.
const LINK_EVENT_TYPE: &str = "$>";

/// Events handed to the sandbox at once, at most (ADR 44: each batch costs
/// a hand-over to a blocking thread and one call into JavaScript; 512
/// measured slower).
const BATCH_EVENTS: usize = 4096;

/// Bytes of event data and metadata in one batch, at most (a batch of
/// large events stops early).
const BATCH_BYTES: usize = 4 << 20;

/// Streams a run remembers as checked for older epochs' events.
const EPOCH_CHECKED_STREAMS: usize = 10_000;

/// The metadata key of an emitted event (and a system projection's link)
/// naming the epoch that wrote it (KurrentDB keeps the projection version
/// in `$v`).
const EPOCH_KEY: &str = "$epoch";

/// The metadata key of an emitted event naming the projection that wrote
/// it, beside [`EPOCH_KEY`] (KurrentDB's `$v` starts with the projection's
/// id; Factum's projections are known by name).
const PROJECTION_KEY: &str = "$projection";

/// When a running projection commits.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    /// After this many handled events.
    pub after_events: u64,
    /// After this many bytes of emitted events and states.
    pub after_bytes: usize,
    /// After this long with uncommitted work.
    pub after_time: Duration,
    /// Partition states a partitioned projection keeps in memory: past
    /// this, after a commit (every state then stored), the least recently
    /// used half is dropped and read back from its checkpoint stream when
    /// an event needs it again.
    pub cached_partitions: usize,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            after_events: 4000,
            after_bytes: 1 << 20,
            after_time: Duration::from_secs(2),
            cached_partitions: 10_000,
        }
    }
}

/// A projection's status (KurrentDB's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started yet / starting.
    Starting,
    /// Running.
    Running,
    /// Disabled.
    Stopped,
    /// A one-time or transient projection reached the head.
    Completed,
    /// Stopped by an error; the reason.
    Faulted(String),
}

impl Status {
    /// KurrentDB's status word.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Starting => "Preparing",
            Status::Running => "Running",
            Status::Stopped => "Stopped",
            Status::Completed => "Completed",
            Status::Faulted(_) => "Faulted",
        }
    }
}

/// What a running projection shows the outside (statistics, state, result).
#[derive(Clone, Debug)]
pub struct Published {
    /// Its status.
    pub status: Status,
    /// The last position committed (or, transient, handled).
    pub position: u64,
    /// Events handled since it started.
    pub events_processed: u64,
    /// Partitions held in memory.
    pub partitions_cached: u64,
    /// Commits under way (0 or 1).
    pub writes_in_progress: u32,
    /// Reads under way (0 or 1).
    pub reads_in_progress: u32,
    /// The head of `$all` when last seen, for progress.
    pub head: u64,
    /// Committed state of each partition ("" root): state and result JSON.
    pub states: HashMap<String, (Option<String>, Option<String>)>,
    /// The definition, once compiled.
    pub definition: Option<Definition>,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            status: Status::Starting,
            position: 0,
            events_processed: 0,
            partitions_cached: 0,
            writes_in_progress: 0,
            reads_in_progress: 0,
            head: 0,
            states: HashMap::new(),
            definition: None,
        }
    }
}

/// Why a run ended without a fault.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Disabled (after a final commit) or aborted (without one).
    Stopped,
    /// Reached the head (one-time, transient).
    Completed,
}

/// How the run is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRequest {
    /// Keep running.
    Run,
    /// Commit what is pending, then stop (disable).
    Stop,
    /// Stop without writing (abort).
    Abort,
}

/// The checkpoint event's metadata: its position and epoch.
#[derive(Serialize, Deserialize, Default)]
struct CheckpointMeta {
    #[serde(rename = "$v", default)]
    v: String,
    #[serde(rename = "$c", default)]
    commit: u64,
    #[serde(rename = "$p", default)]
    prepare: u64,
    #[serde(rename = "$epoch", default)]
    epoch: u64,
    #[serde(rename = "$shared", default, skip_serializing_if = "Option::is_none")]
    shared: Option<serde_json::Value>,
    #[serde(rename = "$completed", default)]
    completed: bool,
}

/// A loaded checkpoint.
struct Checkpoint {
    revision: Option<StreamRevision>,
    position: u64,
    state: Option<String>,
    shared: Option<String>,
    completed: bool,
}

/// What the runner needs to run one projection.
pub struct Run<S> {
    /// The store.
    pub store: Arc<S>,
    /// The projection.
    pub settings: Settings,
    /// Sandbox limits.
    pub limits: Limits,
    /// When to commit.
    pub policy: CheckpointPolicy,
    /// Where it shows its progress.
    pub published: Arc<Mutex<Published>>,
    /// Asks it to stop.
    pub stop: watch::Receiver<StopRequest>,
    /// The stream ACLs its reads and writes are checked against, as
    /// `settings.run_as` (`None`: everything allowed).
    pub access: Option<Arc<dyn Access>>,
}

/// A runner failure: a fault of the projection or a store error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The projection faulted.
    #[error("{0}")]
    Fault(#[from] Fault),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] Error),
    /// The user it runs as may not read its source or write where it
    /// writes (KurrentDB's "Projection cannot read its source. Not
    /// authorized.").
    #[error("{0}")]
    NotAuthorized(String),
    /// Something else stopped it.
    #[error("{0}")]
    Other(String),
}

/// The streams a source reads, as stream ACLs name them (KurrentDB reads
/// `fromAll` from `$all` and a category from `$ce-<category>`).
fn source_streams(source: &Source) -> Vec<String> {
    match source {
        Source::All => vec!["$all".to_owned()],
        Source::Categories(cs) => cs.iter().map(|c| format!("$ce-{c}")).collect(),
        Source::Streams(ss) => ss.clone(),
    }
}

fn who(run_as: &crate::access::RunAs) -> String {
    match &run_as.login {
        Some(login) => format!("user '{login}'"),
        None => "the anonymous user (the projection has no creator)".to_owned(),
    }
}

/// Faults unless the user the projection runs as may read its source.
/// Checked at the start and before every batch, so an ACL change stops a
/// running projection (the ACLs are cached by the server: cheap).
async fn check_source<S: EventStore>(
    run: &Run<S>,
    definition: &Definition,
) -> Result<(), RunError> {
    let Some(access) = &run.access else {
        return Ok(());
    };
    let run_as = run.settings.run_as();
    for name in source_streams(&definition.source) {
        let stream = StreamName::new(&name)?;
        if !access.may(&run_as, &stream, Right::Read).await? {
            return Err(RunError::NotAuthorized(format!(
                "Projection cannot read its source. Not authorized: {} may not read {name} ($r)",
                who(&run_as)
            )));
        }
    }
    Ok(())
}

/// Faults unless the user the projection runs as may write `stream`.
async fn check_write<S: EventStore>(
    run: &Run<S>,
    stream: &StreamName,
    checked: &mut HashSet<String>,
) -> Result<(), RunError> {
    let Some(access) = &run.access else {
        return Ok(());
    };
    if checked.contains(stream.as_str()) {
        return Ok(());
    }
    let run_as = run.settings.run_as();
    if !access.may(&run_as, stream, Right::Write).await? {
        return Err(RunError::NotAuthorized(format!(
            "Projection cannot write to stream {stream}. Not authorized: {} may not write it ($w)",
            who(&run_as)
        )));
    }
    checked.insert(stream.as_str().to_owned());
    Ok(())
}

/// Runs a projection until it completes, is stopped, or faults; the
/// outcome is also published.
pub async fn run<S: EventStore>(mut run: Run<S>) -> Result<End, RunError> {
    let out = run_inner(&mut run).await;
    let mut p = run.published.lock().expect("published");
    p.writes_in_progress = 0;
    p.reads_in_progress = 0;
    p.status = match &out {
        Ok(End::Stopped) => Status::Stopped,
        Ok(End::Completed) => Status::Completed,
        Err(e) => Status::Faulted(e.to_string()),
    };
    drop(p);
    if let Err(e) = &out {
        tracing::warn!(projection = %run.settings.name, "projection faulted: {e}");
    }
    out
}

/// The state of one run between batches.
struct Work {
    projection: Option<Projection>,
    /// The last batch's emptied vector of inputs, kept for the next batch
    /// (fresh memory for each batch is pages the kernel zeroes).
    spare: Vec<Owned>,
    definition: Definition,
    names: Names,
    persist: bool,
    /// Partitions whose state is loaded in the sandbox.
    loaded: HashSet<String>,
    /// When each loaded partition was last used (a batch count), for
    /// eviction.
    last_used: HashMap<String, u64>,
    /// Batches handled.
    batches: u64,
    /// Partitions in the catalog stream.
    known_partitions: HashSet<String>,
    /// Emitted streams already tracked.
    tracked: HashSet<String>,
    /// Streams the projection wrote to in this run whose events of an
    /// older epoch are already hidden (a cache: cleared past
    /// [`EPOCH_CHECKED_STREAMS`], a stream checked again costs a read).
    epoch_checked: HashSet<String>,
    /// Position handled up to (uncommitted included).
    position: u64,
    checkpoint_revision: Option<StreamRevision>,
    pending_emits: Vec<(u64, Vec<Emitted>)>,
    pending_bytes: usize,
    pending_events: u64,
    since: Instant,
    committed_position: u64,
}

async fn blocking<R: Send + 'static>(
    work: &mut Work,
    f: impl FnOnce(&mut Projection) -> Result<R, Fault> + Send + 'static,
) -> Result<R, RunError> {
    let mut projection = work.projection.take().expect("the sandbox is home");
    let (projection, out) = tokio::task::spawn_blocking(move || {
        let out = f(&mut projection);
        (projection, out)
    })
    .await
    .map_err(|e| RunError::Other(format!("the projection's thread failed: {e}")))?;
    work.projection = Some(projection);
    Ok(out?)
}

async fn run_inner<S: EventStore>(run: &mut Run<S>) -> Result<End, RunError> {
    let settings = run.settings.clone();
    let store = run.store.clone();
    let query = settings.query.clone();
    let limits = run.limits;
    let projection = tokio::task::spawn_blocking(move || Projection::compile(&query, limits))
        .await
        .map_err(|e| RunError::Other(format!("the projection's thread failed: {e}")))??;
    let definition = projection.definition().clone();
    let filter = source_filter(&definition)?;
    let names = Names::new(
        &settings.name,
        definition.result_stream_name.clone(),
        definition.partition_result_stream_name_pattern.clone(),
    );
    let persist = settings.mode != Mode::Transient && settings.checkpoints_enabled;
    run.published.lock().expect("published").definition = Some(definition.clone());
    let mut work = Work {
        projection: Some(projection),
        spare: Vec::new(),
        definition: definition.clone(),
        names,
        persist,
        loaded: HashSet::new(),
        last_used: HashMap::new(),
        batches: 0,
        known_partitions: HashSet::new(),
        tracked: HashSet::new(),
        epoch_checked: HashSet::new(),
        position: 0,
        checkpoint_revision: None,
        pending_emits: Vec::new(),
        pending_bytes: 0,
        pending_events: 0,
        since: Instant::now(),
        committed_position: 0,
    };

    let checkpoint = if persist {
        load_checkpoint(&*store, &work.names, settings.epoch).await?
    } else {
        None
    };
    let (root_state, shared_state) = match &checkpoint {
        Some(c) => {
            work.position = c.position;
            work.committed_position = c.position;
            work.checkpoint_revision = c.revision;
            (c.state.clone(), c.shared.clone())
        }
        None => (None, None),
    };
    if persist {
        // The checkpoint stream's revision even when its last checkpoint
        // is of an older epoch: the commit's condition needs it.
        work.checkpoint_revision = last_revision(&*store, &work.names.checkpoint()?).await?;
        if work.definition.is_partitioned() {
            work.known_partitions =
                read_strings(&*store, &work.names.partitions()?, names::PARTITION_EVENT).await?;
        }
        if settings.track_emitted_streams {
            work.tracked = read_strings(
                &*store,
                &work.names.emitted_streams()?,
                names::STREAM_TRACKED_EVENT,
            )
            .await?;
        }
    }
    let partitioned = definition.is_partitioned();
    let bi_state = definition.bi_state;
    blocking(&mut work, move |p| {
        if !partitioned {
            p.load_partition("", root_state.as_deref())?;
        }
        if bi_state {
            p.load_shared(shared_state.as_deref())?;
        }
        Ok(())
    })
    .await?;
    if !partitioned {
        work.loaded.insert(String::new());
    }
    publish_states(&mut work, run, &[String::new()]).await?;
    {
        let mut p = run.published.lock().expect("published");
        p.position = work.position;
        if checkpoint.as_ref().is_some_and(|c| c.completed) && settings.mode == Mode::OneTime {
            return Ok(End::Completed);
        }
        p.status = Status::Running;
    }

    check_source(run, &definition).await?;
    if definition.output_state {
        let result = work.names.result("")?;
        if !result.as_str().starts_with(names::PREFIX) {
            check_write(run, &result, &mut HashSet::new()).await?;
        }
    }
    let start = match work.position {
        0 => SubscriptionStart::Beginning,
        p => SubscriptionStart::After(p),
    };
    let subscription = store.subscribe(Subscribe::all(start, Some(filter))).await?;
    let mut ahead = ReadAhead::start(subscription);
    let runs_once = settings.mode != Mode::Continuous;
    let mut batch: Vec<RecordedEvent> = Vec::with_capacity(BATCH_EVENTS);
    loop {
        let mut caught_up = false;
        let mut scanned = None;
        let request = *run.stop.borrow();
        if request != StopRequest::Run {
            return stop(&mut work, run, request).await;
        }
        // Wait for what the read-ahead has, up to a batch.
        let first = tokio::select! {
            changed = run.stop.changed() => {
                if changed.is_err() {
                    return stop(&mut work, run, StopRequest::Abort).await;
                }
                continue;
            }
            _ = tokio::time::sleep(run.policy.after_time), if work.pending_events > 0 => None,
            chunk = ahead.chunks.recv() => Some(chunk),
        };
        let mut messages = match first {
            // The read-ahead ends only after passing on the subscription's
            // end or error; gone otherwise, it failed.
            Some(None) => vec![None],
            Some(Some(chunk)) => chunk,
            None => Vec::new(),
        };
        for m in messages.drain(..) {
            match m {
                None => return Err(RunError::Other("the store closed the subscription".into())),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(SubscriptionMessage::Event(e))) => batch.push(e),
                Some(Ok(SubscriptionMessage::CaughtUp)) => caught_up = true,
                Some(Ok(SubscriptionMessage::Checkpoint(p))) => scanned = Some(p.0),
                Some(Ok(SubscriptionMessage::FellBehind)) => {}
            }
        }
        ahead.recycle(messages);
        if !batch.is_empty() {
            handle_batch(&mut work, run, &mut batch).await?;
        }
        if let Some(p) = scanned {
            work.position = work.position.max(p);
        }
        let due = work.pending_events >= run.policy.after_events
            || work.pending_bytes >= run.policy.after_bytes
            || (work.pending_events > 0 && work.since.elapsed() >= run.policy.after_time)
            || (caught_up && work.position > work.committed_position);
        if due || (caught_up && runs_once) {
            commit(&mut work, run, caught_up && runs_once).await?;
        }
        if caught_up && runs_once {
            return Ok(End::Completed);
        }
    }
}

/// What the subscription delivered, a chunk at a time: at most a batch's
/// worth of messages (the last one ending the subscription: `None` when
/// the store closed it, or an error).
type Chunk = Vec<Option<Result<SubscriptionMessage, Error>>>;

/// The subscription read ahead of the sandbox by a task of its own: while
/// JavaScript handles a batch, the next pages are read and gathered (ADR
/// 44's follow-up: the store's reads and the sandbox's calls overlap
/// instead of taking turns). At most one chunk waits in the channel and one
/// is being gathered, each bounded like a batch ([`BATCH_EVENTS`],
/// [`BATCH_BYTES`]); the task ends with the runner (aborted when this is
/// dropped) or after passing on the subscription's end.
struct ReadAhead {
    chunks: tokio::sync::mpsc::Receiver<Chunk>,
    task: tokio::task::JoinHandle<()>,
    /// Emptied chunks handed back for the next ones (fresh memory for each
    /// chunk is pages the kernel zeroes).
    spare: Arc<Mutex<Vec<Chunk>>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReadAhead {
    /// Hands an emptied chunk back (two are kept at most).
    fn recycle(&self, mut chunk: Chunk) {
        chunk.clear();
        let mut spare = self.spare.lock().expect("spare chunks");
        if spare.len() < 2 && chunk.capacity() > 0 {
            spare.push(chunk);
        }
    }

    fn start(mut subscription: Subscription) -> ReadAhead {
        let (tx, chunks) = tokio::sync::mpsc::channel::<Chunk>(1);
        let spare: Arc<Mutex<Vec<Chunk>>> = Arc::default();
        let kept = spare.clone();
        let task = tokio::spawn(async move {
            let size = |m: &Option<Result<SubscriptionMessage, Error>>| match m {
                Some(Ok(SubscriptionMessage::Event(e))) => e.data.len() + e.metadata.len(),
                _ => 0,
            };
            let mut gathered: Chunk = Vec::new();
            let mut bytes = 0usize;
            let mut ended = false;
            loop {
                let full = gathered.len() >= BATCH_EVENTS || bytes >= BATCH_BYTES || ended;
                // Hand over what is gathered as soon as the runner can take
                // it; read on meanwhile (both are cancel-safe).
                tokio::select! {
                    biased;
                    permit = tx.reserve(), if !gathered.is_empty() => {
                        let Ok(permit) = permit else { return };
                        let next = kept.lock().expect("spare chunks").pop().unwrap_or_default();
                        permit.send(std::mem::replace(&mut gathered, next));
                        bytes = 0;
                        if ended {
                            return;
                        }
                    }
                    m = subscription.next(), if !full => {
                        let mut next = Some(m);
                        while let Some(m) = next.take() {
                            ended = !matches!(m, Some(Ok(_)));
                            bytes += size(&m);
                            gathered.push(m);
                            if ended || gathered.len() >= BATCH_EVENTS || bytes >= BATCH_BYTES {
                                break;
                            }
                            next = subscription.next().now_or_never();
                        }
                    }
                }
            }
        });
        ReadAhead {
            chunks,
            task,
            spare,
        }
    }
}

async fn stop<S: EventStore>(
    work: &mut Work,
    run: &Run<S>,
    request: StopRequest,
) -> Result<End, RunError> {
    if request == StopRequest::Stop {
        commit(work, run, false).await?;
    }
    Ok(End::Stopped)
}

/// Which `$all` events reach the projection (narrowed exactly by [`wanted`]).
fn source_filter(definition: &Definition) -> Result<Filter, Fault> {
    // A `$deleted` handler needs the deletion records too: a tombstone's
    // `$streamDeleted` event in the stream itself, a soft delete's
    // `$metadata` event in `$$<stream>`.
    let deletes = definition.handles_deleted;
    // Every user stream, link records included; system streams are passed
    // over below too.
    let user_streams = || {
        if deletes {
            Filter::stream_regex(r"^(?:[^$]|\$\$[^$])").expect("a valid filter regex")
        } else if definition.include_links {
            Filter::stream_regex("^[^$]").expect("a valid filter regex")
        } else {
            Filter::exclude_system_events()
        }
    };
    // A prefix and, with a `$deleted` handler, its metadata stream's.
    let with_metadata = |prefixes: Vec<String>| {
        if deletes {
            let meta: Vec<String> = prefixes.iter().map(|p| format!("$${p}")).collect();
            prefixes.into_iter().chain(meta).collect()
        } else {
            prefixes
        }
    };
    Ok(match &definition.source {
        Source::All => user_streams(),
        Source::Categories(cs) => {
            Filter::stream_prefix(with_metadata(cs.iter().map(|c| format!("{c}-")).collect()))
        }
        Source::Streams(ss) => {
            let mut prefixes = Vec::with_capacity(ss.len());
            let mut by_type = false;
            for s in ss {
                if let Some(c) = s.strip_prefix("$ce-").filter(|c| !c.is_empty()) {
                    prefixes.push(format!("{c}-"));
                } else if s.strip_prefix("$et-").is_some_and(|t| !t.is_empty()) {
                    by_type = true;
                } else if s.starts_with('$') {
                    return Err(Fault::NotImplemented(format!(
                        "a projection reading the system stream {s}"
                    )));
                } else {
                    prefixes.push(s.clone());
                }
            }
            if by_type {
                // Event types and stream names do not share one filter.
                user_streams()
            } else {
                // A prefix filter, narrowed to exact names in `wanted`.
                Filter::stream_prefix(with_metadata(prefixes))
            }
        }
    })
}

/// The stream an `$all` record deletes, if it is a deletion: a tombstone
/// (`$streamDeleted` in the stream) or a soft delete (`$metadata` in
/// `$$<stream>` with `$tb` at its deleted value) — KurrentDB's
/// `StreamDeletedHelper`.
fn deleted_stream(e: &RecordedEvent) -> Option<&str> {
    let stream = e.stream.as_str();
    if e.event_type == TOMBSTONE_EVENT_TYPE && !stream.starts_with('$') {
        return Some(stream);
    }
    let target = stream.strip_prefix("$$")?;
    if e.event_type != METADATA_EVENT_TYPE || target.starts_with('$') {
        return None;
    }
    let metadata = StreamMetadata::from_json(&e.data).ok()?;
    (metadata.truncate_before == Some(SOFT_DELETED_TRUNCATE_BEFORE)).then_some(target)
}

/// What an `$all` record is to a projection.
enum Wanted<'a> {
    /// Not its business.
    No,
    /// An event its handlers take.
    Event,
    /// The deletion of a stream of its source (`$deleted` handlers only).
    Deleted(&'a str),
}

/// Whether the source names `stream` (for deletions, which carry no
/// event type: an `$et-` source names no stream).
fn source_names(source: &Source, stream: &StreamName) -> bool {
    match source {
        Source::All => true,
        Source::Categories(cs) => stream.category().is_some_and(|c| cs.iter().any(|x| x == c)),
        Source::Streams(ss) => ss.iter().any(|s| {
            if let Some(c) = s.strip_prefix("$ce-") {
                stream.category() == Some(c)
            } else {
                !s.starts_with("$et-") && s == stream.as_str()
            }
        }),
    }
}

/// Whether a `fromStreams` source names one of the streams `$ce-`/`$et-`
/// serve (read through their links).
fn reads_links(source: &Source) -> bool {
    match source {
        Source::All => false,
        Source::Categories(_) => true,
        Source::Streams(ss) => ss
            .iter()
            .any(|s| s.starts_with("$ce-") || s.starts_with("$et-")),
    }
}

fn classify<'e>(definition: &Definition, e: &'e RecordedEvent) -> Wanted<'e> {
    if definition.handles_deleted {
        if let Some(deleted) = deleted_stream(e) {
            let named = StreamName::new(deleted)
                .ok()
                .is_some_and(|s| source_names(&definition.source, &s));
            return if named {
                Wanted::Deleted(deleted)
            } else {
                Wanted::No
            };
        }
    }
    if wanted(definition, e) {
        Wanted::Event
    } else {
        Wanted::No
    }
}

fn wanted(definition: &Definition, e: &RecordedEvent) -> bool {
    let stream = e.stream.as_str();
    // `$includeLinks`: link records (`$>`) reach the handlers as they are
    // stored (data `<revision>@<stream>`), as in KurrentDB.
    let system_type = e.event_type.starts_with('$')
        && !definition.events.contains(&e.event_type)
        && !(definition.include_links && e.event_type == LINK_EVENT_TYPE);
    if stream.starts_with('$') || system_type {
        return false;
    }
    match &definition.source {
        Source::All => {}
        Source::Categories(cs) => {
            if !e
                .stream
                .category()
                .is_some_and(|c| cs.iter().any(|x| x == c))
            {
                return false;
            }
        }
        Source::Streams(ss) => {
            let named = |s: &String| {
                if let Some(c) = s.strip_prefix("$ce-") {
                    e.stream.category() == Some(c)
                } else if let Some(t) = s.strip_prefix("$et-") {
                    e.event_type == t
                } else {
                    s == stream
                }
            };
            if !ss.iter().any(named) {
                return false;
            }
        }
    }
    if !definition.handles(&e.event_type) {
        return false;
    }
    // KurrentDB passes over JSON events with empty data.
    !(e.content_type == ContentType::Json && e.data.iter().all(u8::is_ascii_whitespace))
}

/// A deterministic id for the `index`th event emitted at `position`: a
/// replay after a crash writes the same ids.
fn emitted_id(name: &str, epoch: u64, position: u64, index: usize) -> Uuid {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(epoch.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let lo = position.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64).rotate_left(32);
    uuid::Builder::from_custom_bytes((((h as u128) << 64) | lo as u128).to_be_bytes()).into_uuid()
}

/// An input as the runner hands it to the sandbox: the recorded event
/// and, for a deletion, the stream deleted. Its text is borrowed from the
/// event when it is UTF-8 (what JSON is), copied lossily only otherwise.
struct Owned {
    event: RecordedEvent,
    deleted: Option<StreamName>,
    /// Lossy copies of the body and metadata, made only if one is not UTF-8.
    body_lossy: OnceLock<String>,
    metadata_lossy: OnceLock<String>,
    /// The event id, hyphenated.
    id: [u8; 36],
}

impl Owned {
    fn new(event: RecordedEvent, deleted: Option<StreamName>) -> Owned {
        let mut id = [0u8; 36];
        event.id.hyphenated().encode_lower(&mut id);
        Owned {
            body_lossy: OnceLock::new(),
            metadata_lossy: OnceLock::new(),
            event,
            deleted,
            id,
        }
    }

    /// The event's stream, or the stream a deletion deletes.
    fn stream(&self) -> &str {
        self.deleted.as_ref().unwrap_or(&self.event.stream).as_str()
    }

    /// The input it is in `partition` (`created`: the partition's first).
    fn input_in<'a>(&'a self, partition: &'a str, created: bool) -> Input<'a> {
        if self.deleted.is_some() {
            Input::Deleted {
                partition,
                position: self.event.position.0,
                created_micros: self.event.created.as_micros(),
            }
        } else {
            Input::Event {
                partition,
                created,
                event: self.input(),
            }
        }
    }

    fn input(&self) -> InputEvent<'_> {
        InputEvent {
            position: self.event.position.0,
            created_micros: self.event.created.as_micros(),
            stream: self.stream(),
            sequence_number: self.event.revision.0,
            event_type: &self.event.event_type,
            body: text(&self.event.data, &self.body_lossy),
            metadata: text(&self.event.metadata, &self.metadata_lossy),
            link_metadata: None,
            is_json: self.event.content_type == ContentType::Json,
            category: self.event.stream.category().unwrap_or(""),
            event_id: std::str::from_utf8(&self.id).unwrap_or_default(),
        }
    }
}

/// An event's text: borrowed when it is UTF-8 (what JSON is), else a lossy
/// copy made once.
fn text<'a>(bytes: &'a [u8], lossy: &'a OnceLock<String>) -> &'a str {
    std::str::from_utf8(bytes)
        .unwrap_or_else(|_| lossy.get_or_init(|| String::from_utf8_lossy(bytes).into_owned()))
}

/// A category is read through `$ce-<c>`'s links: as every link reader
/// (ADR 31), the projection sees an event only when the user it runs as
/// may read the event's own stream; the others are passed over.
async fn readable_only<S: EventStore>(
    run: &Run<S>,
    events: Vec<Owned>,
) -> Result<Vec<Owned>, RunError> {
    let Some(access) = &run.access else {
        return Ok(events);
    };
    let run_as = run.settings.run_as();
    let mut decided: HashMap<StreamName, bool> = HashMap::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        // A deletion is seen when its stream could be read.
        let stream = e.deleted.as_ref().unwrap_or(&e.event.stream);
        let readable = match decided.get(stream) {
            Some(r) => *r,
            None => {
                let r = access.may(&run_as, stream, Right::Read).await?;
                decided.insert(stream.clone(), r);
                r
            }
        };
        if readable {
            out.push(e);
        }
    }
    Ok(out)
}

async fn handle_batch<S: EventStore>(
    work: &mut Work,
    run: &Run<S>,
    events: &mut Vec<RecordedEvent>,
) -> Result<(), RunError> {
    let last = events.last().map(|e| e.position.0).unwrap_or(work.position);
    // Each event the projection takes, with the stream it deletes when it
    // is a deletion (moved once: events are large).
    let mut owned: Vec<Owned> = std::mem::take(&mut work.spare);
    owned.reserve(events.len());
    for e in events.drain(..) {
        if e.position.0 <= work.position {
            continue;
        }
        let deleted = match classify(&work.definition, &e) {
            Wanted::No => continue,
            Wanted::Event => None,
            Wanted::Deleted(stream) => match StreamName::new(stream) {
                Ok(s) => Some(s),
                Err(_) => continue,
            },
        };
        owned.push(Owned::new(e, deleted));
    }
    if run.access.is_some() && !owned.is_empty() {
        check_source(run, &work.definition).await?;
        if reads_links(&work.definition.source) {
            owned = readable_only(run, owned).await?;
        }
    }
    if owned.is_empty() {
        work.position = work.position.max(last);
        work.spare = owned;
        return Ok(());
    }
    let owned = Arc::new(owned);
    // The partitions (unpartitioned: none, every event is in ""), and the
    // states to load for those not in memory.
    let partitions: Option<Vec<Option<String>>> = if work.definition.is_partitioned() {
        let o = owned.clone();
        Some(
            blocking(work, move |p| {
                // `foreachStream()` partitions by stream, a deletion's included.
                let inputs: Vec<InputEvent<'_>> = o.iter().map(Owned::input).collect();
                p.partitions_of(&inputs)
            })
            .await?,
        )
    } else {
        None
    };
    let root = [Some(String::new())];
    // Unpartitioned, every event is in "": one look-up, not one per event.
    let distinct: &[Option<String>] = partitions.as_deref().unwrap_or(&root);
    work.batches += 1;
    if work.definition.is_partitioned() {
        let mut previous: Option<&String> = None;
        for p in distinct.iter().flatten() {
            // Runs of one partition touch it once.
            if previous == Some(p) {
                continue;
            }
            previous = Some(p);
            match work.last_used.get_mut(p) {
                Some(at) => *at = work.batches,
                None => {
                    work.last_used.insert(p.clone(), work.batches);
                }
            }
        }
    }
    let mut to_load: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut previous: Option<&String> = None;
    for p in distinct.iter().flatten() {
        // Runs of one partition are looked up once.
        if previous == Some(p) {
            continue;
        }
        previous = Some(p);
        if !work.loaded.contains(p) && !to_load.contains_key(p) {
            let state = if work.persist && work.known_partitions.contains(p) {
                load_partition_state(
                    &*run.store,
                    &work.names.partition_checkpoint(p)?,
                    run.settings.epoch,
                )
                .await?
            } else {
                None
            };
            to_load.insert(p.clone(), state);
        }
    }
    let emit_enabled = run.settings.emit_enabled && run.settings.mode != Mode::Transient;
    let o = owned.clone();
    let loads: Vec<(String, Option<String>)> = to_load.into_iter().collect();
    let loading: Vec<String> = loads.iter().map(|(p, _)| p.clone()).collect();
    let emitted = blocking(work, move |p| {
        let mut created = HashSet::new();
        for (partition, state) in &loads {
            if state.is_none() && !partition.is_empty() {
                created.insert(partition.clone());
            }
            p.load_partition(partition, state.as_deref())?;
        }
        // Each input's position, by its index in what was handled.
        let (emitted, positions) = match &partitions {
            // Unpartitioned: every event, in "", none the partition's first.
            None => (
                p.handle_many(o.iter().map(|e| e.input_in("", false)))?,
                None,
            ),
            Some(partitions) => {
                let mut firsts = Vec::new();
                let mut handled = Vec::new();
                for (e, partition) in o.iter().zip(partitions) {
                    let Some(partition) = partition else { continue };
                    firsts.push(!created.is_empty() && created.remove(partition));
                    handled.push((e, partition.as_str()));
                }
                let emitted = p.handle_many(
                    handled
                        .iter()
                        .zip(&firsts)
                        .map(|((e, partition), first)| e.input_in(partition, *first)),
                )?;
                let positions: Vec<u64> = handled.iter().map(|(e, _)| e.event.position.0).collect();
                (emitted, Some(positions))
            }
        };
        if !emitted.is_empty() && !emit_enabled {
            return Err(Fault::Script(
                "'emit' is not allowed by the projection/configuration/mode".into(),
            ));
        }
        let out: Vec<(u64, Vec<Emitted>)> = emitted
            .into_iter()
            .map(|(i, emitted)| {
                let position = match &positions {
                    Some(positions) => positions[i],
                    None => o[i].event.position.0,
                };
                (position, emitted)
            })
            .collect();
        for line in p.take_logs()? {
            tracing::debug!(target: "factum_projections::log", "{line}");
        }
        Ok(out)
    })
    .await?;
    work.loaded.extend(loading);
    let mut checked = HashSet::new();
    for e in emitted {
        for x in &e.1 {
            let stream = StreamName::new(&x.stream)
                .map_err(|err| Fault::Script(format!("emit to {}: {err}", x.stream)))?;
            // Managed streams are refused, except a system projection's own
            // (`$streams`, `$category-…`, `$bc-…`).
            let own =
                run.settings.system && factum_core::managed::is_system_projection_stream(&stream);
            if !stream.is_writable()
                || (!own && factum_core::managed::check_client_write(&stream).is_err())
                || stream.as_str().starts_with(names::PREFIX)
            {
                return Err(
                    Fault::Script(format!("a projection may not write to {stream}")).into(),
                );
            }
            check_write(run, &stream, &mut checked).await?;
            work.pending_bytes +=
                x.data.len() + x.metadata.as_ref().map_or(0, String::len) + x.event_type.len();
        }
        work.pending_emits.push(e);
    }
    work.pending_events += owned.len() as u64;
    work.position = work.position.max(last);
    {
        let mut published = run.published.lock().expect("published");
        published.events_processed += owned.len() as u64;
        published.partitions_cached = work.loaded.len() as u64;
        if !work.persist {
            published.position = work.position;
        }
    }
    if !work.persist {
        // Transient: what is in memory is all there is.
        let dirty = blocking(work, |p| p.take_dirty()).await?;
        publish_states(work, run, &dirty).await?;
        work.pending_events = 0;
        work.pending_emits.clear();
        work.pending_bytes = 0;
    }
    // The blocking calls are over: the vector is this batch's alone again.
    if let Ok(mut spare) = Arc::try_unwrap(owned) {
        spare.clear();
        work.spare = spare;
    }
    Ok(())
}

/// Reads the states and results of `partitions` and publishes them.
async fn publish_states<S: EventStore>(
    work: &mut Work,
    run: &Run<S>,
    partitions: &[String],
) -> Result<Vec<(String, Option<String>, Option<String>)>, RunError> {
    let list = partitions.to_vec();
    let out = blocking(work, move |p| {
        let mut out = Vec::new();
        for partition in list {
            let state = p.state(&partition)?;
            let result = p.result(&partition)?;
            out.push((partition, state, result));
        }
        Ok(out)
    })
    .await?;
    let mut published = run.published.lock().expect("published");
    for (partition, state, result) in &out {
        if state.is_some() || partition.is_empty() {
            published
                .states
                .insert(partition.clone(), (state.clone(), result.clone()));
        }
    }
    Ok(out)
}

fn json_data(event_type: &str, data: String, metadata: Option<String>, id: Uuid) -> EventData {
    let mut e = EventData::new(event_type, ContentType::Json, data).with_id(id);
    if let Some(m) = metadata {
        e = e.with_metadata(m);
    }
    e
}

/// Commits everything handled since the last commit, atomically.
async fn commit<S: EventStore>(
    work: &mut Work,
    run: &Run<S>,
    completed: bool,
) -> Result<(), RunError> {
    let dirty = blocking(work, |p| p.take_dirty()).await?;
    let shared_dirty = if work.definition.bi_state {
        blocking(work, |p| p.take_shared_dirty()).await?
    } else {
        false
    };
    let states = publish_states(work, run, &dirty).await?;
    if !work.persist {
        return Ok(());
    }
    if work.position <= work.committed_position && dirty.is_empty() && !shared_dirty && !completed {
        return Ok(());
    }
    let shared = if work.definition.bi_state {
        blocking(work, |p| p.shared_state()).await?
    } else {
        None
    };
    let settings = &run.settings;
    let position = work.position;
    let position_meta = |shared: Option<&String>, completed: bool| {
        serde_json::to_string(&CheckpointMeta {
            v: format!("{}:-1:1:1", settings.epoch),
            commit: position,
            prepare: position,
            epoch: settings.epoch,
            shared: shared.and_then(|s| serde_json::from_str(s).ok()),
            completed,
        })
        .expect("checkpoint metadata serializes")
    };
    hide_older_epochs(work, run).await?;
    let mut request = MultiAppend::new();
    let mut new_tracked = Vec::new();
    for (source_position, emitted) in &work.pending_emits {
        for (i, x) in emitted.iter().enumerate() {
            let stream = StreamName::new(&x.stream)?;
            let id = emitted_id(&settings.name, settings.epoch, *source_position, i);
            let content = if x.is_json {
                ContentType::Json
            } else {
                ContentType::Binary
            };
            let data = EventData::new(x.event_type.clone(), content, x.data.clone())
                .with_id(id)
                .with_metadata(with_epoch(
                    x.metadata.as_deref(),
                    &settings.name,
                    settings.epoch,
                ));
            if settings.track_emitted_streams
                && !work.tracked.contains(&x.stream)
                && !new_tracked.contains(&x.stream)
            {
                new_tracked.push(x.stream.clone());
            }
            request = request.record(stream, data);
        }
    }
    let mut new_partitions = Vec::new();
    for (partition, state, result) in &states {
        if partition.is_empty() {
            continue;
        }
        if !work.known_partitions.contains(partition) {
            new_partitions.push(partition.clone());
        }
        let id = emitted_id(
            &format!("{}\u{0}{partition}", settings.name),
            settings.epoch,
            position,
            usize::MAX,
        );
        request = request.record(
            work.names.partition_checkpoint(partition)?,
            json_data(
                names::PARTITION_CHECKPOINT_EVENT,
                state.clone().unwrap_or_else(|| "null".into()),
                Some(position_meta(None, false)),
                id,
            ),
        );
        if work.definition.output_state {
            if let Some(r) = result {
                let id = emitted_id(
                    &format!("{}\u{1}{partition}", settings.name),
                    settings.epoch,
                    position,
                    usize::MAX,
                );
                request = request.record(
                    work.names.result(partition)?,
                    json_data(names::RESULT_EVENT, r.clone(), None, id),
                );
            }
        }
    }
    for partition in &new_partitions {
        let id = emitted_id(
            &format!("{}\u{2}{partition}", settings.name),
            settings.epoch,
            position,
            0,
        );
        request = request.record(
            work.names.partitions()?,
            json_data(
                names::PARTITION_EVENT,
                serde_json::to_string(partition).expect("a string"),
                None,
                id,
            ),
        );
    }
    let root = states.iter().find(|(p, _, _)| p.is_empty());
    if work.definition.output_state && !work.definition.is_partitioned() {
        if let Some((_, _, Some(r))) = root {
            let id = emitted_id(
                &format!("{}\u{1}", settings.name),
                settings.epoch,
                position,
                usize::MAX,
            );
            request = request.record(
                work.names.result("")?,
                json_data(names::RESULT_EVENT, r.clone(), None, id),
            );
        }
    }
    for stream in &new_tracked {
        let id = emitted_id(
            &format!("{}\u{3}{stream}", settings.name),
            settings.epoch,
            position,
            0,
        );
        request = request.record(
            work.names.emitted_streams()?,
            json_data(
                names::STREAM_TRACKED_EVENT,
                serde_json::to_string(stream).expect("a string"),
                None,
                id,
            ),
        );
    }
    let root_state = if work.definition.is_partitioned() {
        None
    } else {
        match root {
            Some((_, s, _)) => s.clone(),
            None => blocking(work, |p| p.state("")).await?,
        }
    };
    let checkpoint_id = emitted_id(
        &format!("{}\u{4}", settings.name),
        settings.epoch,
        position,
        usize::MAX,
    );
    request = request.record(
        work.names.checkpoint()?,
        json_data(
            names::CHECKPOINT_EVENT,
            root_state.unwrap_or_else(|| "null".into()),
            Some(position_meta(shared.as_ref(), completed)),
            checkpoint_id,
        ),
    );
    let condition = match work.checkpoint_revision {
        Some(r) => StreamCondition::Revision(r),
        None => StreamCondition::NoStream,
    };
    request = request.check(work.names.checkpoint()?, condition);
    run.published.lock().expect("published").writes_in_progress = 1;
    let result = append_with_retries(&*run.store, request, &work.names, position).await;
    run.published.lock().expect("published").writes_in_progress = 0;
    work.checkpoint_revision = Some(result?);
    work.committed_position = position;
    work.pending_emits.clear();
    work.pending_bytes = 0;
    work.pending_events = 0;
    work.since = Instant::now();
    work.known_partitions.extend(new_partitions);
    work.tracked.extend(new_tracked);
    for (partition, _, _) in &states {
        work.loaded.insert(partition.clone());
    }
    run.published.lock().expect("published").position = position;
    evict_partitions(work, run).await
}

/// A projection's emitted streams after a reset (KurrentDB's
/// `EmittedStream`): the first time a run writes to a stream, its last
/// event is read; written by an older epoch of this projection, the stream
/// is truncated after it (`$tb`, other metadata kept), so readers see only
/// the new epoch's events — tracked or not. A stream last written by
/// anyone else (a client, another projection, this projection before its
/// emitted events carried their writer) is left alone and appended to.
/// The truncation goes before the commit (a stream and its `$$` stream
/// cannot share one multi-stream append): after a crash between the two,
/// the stream's old events are hidden and the replay writes the new ones.
async fn hide_older_epochs<S: EventStore>(work: &mut Work, run: &Run<S>) -> Result<(), RunError> {
    let epoch = run.settings.epoch;
    if epoch == 0 {
        return Ok(());
    }
    let mut streams: Vec<&str> = work
        .pending_emits
        .iter()
        .flat_map(|(_, emitted)| emitted.iter().map(|x| x.stream.as_str()))
        .filter(|s| !work.epoch_checked.contains(*s))
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let streams: Vec<String> = streams.into_iter().map(str::to_owned).collect();
    if work.epoch_checked.len() + streams.len() > EPOCH_CHECKED_STREAMS {
        work.epoch_checked.clear();
    }
    for stream in streams {
        let name = StreamName::new(&stream)?;
        let last = match last_event(&*run.store, &name).await {
            Ok(last) => last,
            // The commit's append answers for a deleted stream, as before.
            Err(Error::StreamDeleted { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(last) = last {
            if written_by_older_epoch(&last.metadata, &run.settings, epoch) {
                truncate_through(&*run.store, name, last.revision).await?;
            }
        }
        work.epoch_checked.insert(stream);
    }
    Ok(())
}

/// Whether an event's metadata says this projection wrote it in an epoch
/// older than `epoch`. A user projection's own events name it
/// ([`PROJECTION_KEY`]) and their epoch; anything else is someone else's.
/// A system projection's streams are its own (managed: no client writes
/// them), and its links written before they named their writer carry only
/// the epoch, or nothing (epoch 0's).
fn written_by_older_epoch(metadata: &[u8], settings: &Settings, epoch: u64) -> bool {
    let m = serde_json::from_slice::<serde_json::Value>(metadata).ok();
    let field = |key: &str| m.as_ref().and_then(|m| m.get(key));
    let writer = field(PROJECTION_KEY).and_then(serde_json::Value::as_str);
    let written = field(EPOCH_KEY).and_then(serde_json::Value::as_u64);
    let ours = match writer {
        Some(w) => w == settings.name,
        None => settings.system,
    };
    match written {
        Some(e) => ours && e < epoch,
        None => ours && settings.system,
    }
}

/// An emitted event's metadata with its writer and epoch added
/// ([`PROJECTION_KEY`], [`EPOCH_KEY`]; values the handler gave under
/// those keys are replaced). Metadata that is not a JSON object (`copyTo`
/// of an event with binary metadata) is kept as it is, unmarked.
fn with_epoch(metadata: Option<&str>, projection: &str, epoch: u64) -> String {
    let mut m = match metadata.map(str::trim) {
        None | Some("") => serde_json::Map::new(),
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(serde_json::Value::Null) => serde_json::Map::new(),
            _ => return metadata.unwrap_or_default().to_owned(),
        },
    };
    m.insert(PROJECTION_KEY.into(), projection.into());
    m.insert(EPOCH_KEY.into(), epoch.into());
    serde_json::Value::Object(m).to_string()
}

/// Hides a stream's events up to `last` from readers: `$tb` = `last` + 1,
/// its other metadata kept.
pub(crate) async fn truncate_through<S: EventStore>(
    store: &S,
    stream: StreamName,
    last: StreamRevision,
) -> Result<(), Error> {
    let current = store.stream_metadata(stream.clone()).await?;
    let mut metadata = current.metadata;
    metadata.truncate_before = Some(last.0 + 1);
    let expected = match current.revision {
        Some(r) => ExpectedRevision::Exact(r),
        None => ExpectedRevision::NoStream,
    };
    store
        .set_stream_metadata(stream, expected, metadata)
        .await?;
    Ok(())
}

/// Drops the least recently used half of the partition states once more
/// than the policy's `cached_partitions` are loaded. Called right after a
/// commit: every state is then stored, so nothing is lost; a dropped
/// partition is read back from its checkpoint stream when next needed.
async fn evict_partitions<S: EventStore>(work: &mut Work, run: &Run<S>) -> Result<(), RunError> {
    let limit = run.policy.cached_partitions.max(1);
    if !work.persist || !work.definition.is_partitioned() || work.loaded.len() <= limit {
        return Ok(());
    }
    let mut by_age: Vec<(u64, String)> = work
        .loaded
        .iter()
        .map(|p| (work.last_used.get(p).copied().unwrap_or(0), p.clone()))
        .collect();
    by_age.sort_unstable();
    let keep = limit / 2;
    let evicted: Vec<String> = by_age
        .into_iter()
        .take(work.loaded.len() - keep)
        .map(|(_, p)| p)
        .collect();
    let list = evicted.clone();
    blocking(work, move |p| p.forget(&list)).await?;
    let mut published = run.published.lock().expect("published");
    for p in &evicted {
        work.loaded.remove(p);
        work.last_used.remove(p);
        published.states.remove(p);
    }
    published.partitions_cached = work.loaded.len() as u64;
    Ok(())
}

/// Appends a commit; after an outcome it cannot know, retries with the
/// same ids and, if the checkpoint moved, reads it back. Returns the
/// checkpoint stream's new revision.
async fn append_with_retries<S: EventStore>(
    store: &S,
    request: MultiAppend,
    names: &Names,
    position: u64,
) -> Result<StreamRevision, RunError> {
    let checkpoint = names.checkpoint()?;
    let mut delay = Duration::from_millis(50);
    for attempt in 0.. {
        match store.append_multi(request.clone()).await {
            Ok(r) => {
                let revision = r
                    .streams
                    .iter()
                    .find(|s| s.stream == checkpoint)
                    .map(|s| s.revision)
                    .ok_or_else(|| RunError::Other("the commit wrote no checkpoint".into()))?;
                return Ok(revision);
            }
            Err(Error::ConsistencyViolation { .. }) => {
                // Ours, from an attempt whose answer was lost? Or another writer.
                let read = store
                    .read_stream(ReadStream {
                        max_count: 1,
                        ..ReadStream::backwards(checkpoint.clone())
                    })
                    .await?;
                if let Some(last) = read.first() {
                    let meta: CheckpointMeta =
                        serde_json::from_slice(&last.metadata).unwrap_or_default();
                    if attempt > 0 && meta.commit >= position {
                        return Ok(last.revision);
                    }
                }
                return Err(RunError::Other(format!(
                    "the checkpoint stream {checkpoint} moved: another writer runs this projection"
                )));
            }
            Err(e) if e.is_transient() && attempt < 20 => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

async fn last_event<S: EventStore>(
    store: &S,
    stream: &StreamName,
) -> Result<Option<RecordedEvent>, Error> {
    match store
        .read_stream(ReadStream {
            max_count: 1,
            ..ReadStream::backwards(stream.clone())
        })
        .await
    {
        Ok(mut events) => Ok(events.pop()),
        Err(Error::StreamNotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn last_revision<S: EventStore>(
    store: &S,
    stream: &StreamName,
) -> Result<Option<StreamRevision>, Error> {
    Ok(last_event(store, stream).await?.map(|e| e.revision))
}

async fn load_checkpoint<S: EventStore>(
    store: &S,
    names: &Names,
    epoch: u64,
) -> Result<Option<Checkpoint>, RunError> {
    let Some(event) = last_event(store, &names.checkpoint()?).await? else {
        return Ok(None);
    };
    let meta: CheckpointMeta = serde_json::from_slice(&event.metadata).map_err(|e| {
        RunError::Other(format!(
            "the checkpoint {}@{} is not readable: {e}",
            event.revision, event.stream
        ))
    })?;
    if meta.epoch != epoch {
        return Ok(None);
    }
    let state = String::from_utf8_lossy(&event.data).into_owned();
    Ok(Some(Checkpoint {
        revision: Some(event.revision),
        position: meta.commit,
        state: (state != "null").then_some(state),
        shared: meta.shared.map(|v| v.to_string()),
        completed: meta.completed,
    }))
}

async fn load_partition_state<S: EventStore>(
    store: &S,
    stream: &StreamName,
    epoch: u64,
) -> Result<Option<String>, RunError> {
    let Some(event) = last_event(store, stream).await? else {
        return Ok(None);
    };
    let meta: CheckpointMeta = serde_json::from_slice(&event.metadata).unwrap_or_default();
    if meta.epoch != epoch {
        return Ok(None);
    }
    let state = String::from_utf8_lossy(&event.data).into_owned();
    Ok((state != "null").then_some(state))
}

/// The JSON strings of a stream's events of one type (a catalog).
pub(crate) async fn read_strings<S: EventStore>(
    store: &S,
    stream: &StreamName,
    event_type: &str,
) -> Result<HashSet<String>, Error> {
    let mut out = HashSet::new();
    let mut from = StreamStart::Start;
    loop {
        let page = match store
            .read_stream(ReadStream {
                from,
                max_count: 1000,
                direction: Direction::Forwards,
                ..ReadStream::forwards(stream.clone())
            })
            .await
        {
            Ok(p) => p,
            Err(Error::StreamNotFound { .. }) => return Ok(out),
            Err(e) => return Err(e),
        };
        let Some(last) = page.last() else {
            return Ok(out);
        };
        from = StreamStart::Revision(StreamRevision(last.revision.0 + 1));
        let n = page.len();
        for e in page {
            if e.event_type == event_type {
                if let Ok(s) = serde_json::from_slice::<String>(&e.data) {
                    out.insert(s);
                }
            }
        }
        if n < 1000 {
            return Ok(out);
        }
    }
}
