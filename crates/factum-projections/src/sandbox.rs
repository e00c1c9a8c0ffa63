//! One projection's JavaScript: a QuickJS runtime of its own with a memory
//! limit, a stack limit and a CPU-time limit per call enforced by the
//! engine's interrupt handler (ADR 35). The context has the language's
//! built-ins only: no module loader, no timers, no I/O; the prelude makes
//! the clock and `Math.random` deterministic and takes `eval` away.
//!
//! A [`Projection`] is compiled from source ([`Projection::compile`]),
//! then driven a batch of inputs at a time, one call into the engine per
//! batch ([`Projection::partitions_of`], [`Projection::handle_many`]; ADR
//! 44), each input under its own CPU-time limit. Any limit exceeded or exception thrown is a
//! [`Fault`]; after a fault the projection must not be used again (a
//! QuickJS heap that ran out of memory is not trusted), the runner drops it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::function::Args;
use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Object, Runtime};

use crate::definition::Definition;

const PRELUDE: &str = include_str!("prelude.js");

/// The global the prelude leaves its interface in.
const API: &str = "__factum";

/// The global the per-input counter of the CPU-time limit is handed to the
/// prelude in ([`input_counter`]).
const COUNTER: &str = "__factum_input";

fn api<'js>(ctx: &Ctx<'js>) -> Result<Object<'js>, Fault> {
    ctx.globals().get(API).map_err(engine)
}

/// What one projection may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The JavaScript heap, in bytes (state, partitions, temporaries).
    pub memory_bytes: usize,
    /// The native stack the interpreter may use, in bytes.
    pub stack_bytes: usize,
    /// CPU time one handler call may take (KurrentDB's execution timeout).
    pub handler_time: Duration,
    /// Time the source may take to run once (KurrentDB's compilation timeout).
    pub compile_time: Duration,
    /// Events one handler call may emit.
    pub emits_per_event: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            stack_bytes: 512 << 10,
            handler_time: Duration::from_millis(250),
            compile_time: Duration::from_millis(500),
            emits_per_event: 4096,
        }
    }
}

/// Why a projection stopped: KurrentDB's "faulted" reasons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// The source did not compile or its definition is invalid.
    #[error("invalid projection: {0}")]
    Invalid(String),
    /// A handler threw.
    #[error("the projection threw: {0}")]
    Script(String),
    /// A call ran past its CPU-time limit.
    #[error("the projection took too long to {what} (allowed: {allowed:?})")]
    TimeLimit {
        /// `compile` or `execute`.
        what: &'static str,
        /// The limit.
        allowed: Duration,
    },
    /// The heap limit was reached.
    #[error("the projection ran out of memory (limit: {limit} bytes)")]
    MemoryLimit {
        /// The limit.
        limit: usize,
    },
    /// One event emitted more events than allowed.
    #[error("the projection emitted more than {limit} events for one event")]
    TooManyEmits {
        /// The limit.
        limit: usize,
    },
    /// A feature the projection uses is not implemented yet.
    #[error("not implemented yet: {0}")]
    NotImplemented(String),
    /// The JavaScript engine itself failed.
    #[error("the JavaScript engine failed: {0}")]
    Engine(String),
}

/// An event as handed to a projection.
#[derive(Clone, Copy, Debug)]
pub struct InputEvent<'a> {
    /// Its position in `$all` (seeds `Math.random`).
    pub position: u64,
    /// Its commit time in microseconds since the epoch (the clock).
    pub created_micros: i64,
    /// `streamId`.
    pub stream: &'a str,
    /// `sequenceNumber`: its revision in that stream.
    pub sequence_number: u64,
    /// `eventType`.
    pub event_type: &'a str,
    /// `bodyRaw` (UTF-8; binary data is passed lossily).
    pub body: &'a str,
    /// `metadataRaw`.
    pub metadata: &'a str,
    /// `linkMetadataRaw`: the link's metadata when read through a link.
    pub link_metadata: Option<&'a str>,
    /// `isJson`.
    pub is_json: bool,
    /// `category`: the stream's category, or "".
    pub category: &'a str,
    /// `eventId`.
    pub event_id: &'a str,
}

/// One thing a projection handles: an event in a partition, or the
/// deletion of a stream (its partition, `foreachStream()` only).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// An event in `partition` (loaded before); `created` runs the
    /// `$created` handlers first (the partition's first event).
    Event {
        /// The partition ("" for an unpartitioned projection).
        partition: &'a str,
        /// The partition's first event.
        created: bool,
        /// The event.
        event: InputEvent<'a>,
    },
    /// The stream `partition` was deleted (soft delete or tombstone): the
    /// `$deleted` handler runs on its state (loaded before).
    Deleted {
        /// The deleted stream, which is its partition.
        partition: &'a str,
        /// The deletion record's position in `$all` (seeds `Math.random`).
        position: u64,
        /// The deletion's commit time in microseconds (the clock).
        created_micros: i64,
    },
}

/// An event a handler emitted (`emit`, `linkTo`, `linkStreamTo`, `copyTo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The stream to write it to.
    pub stream: String,
    /// Its type (`$>` for links, `$@` for stream links).
    pub event_type: String,
    /// Its data.
    pub data: String,
    /// Its metadata (JSON), if any.
    pub metadata: Option<String>,
    /// Whether the data is JSON.
    pub is_json: bool,
}

/// The CPU-time watchdog the interrupt handler reads.
///
/// Batches re-arm it per input without calling the host: the prelude
/// writes the number of the input it starts (1, 2, …) into `input`, memory
/// it sees as an `Int32Array` (see [`input_counter`]), and the interrupt
/// handler, which QuickJS calls every few thousand steps, re-arms the
/// deadline when that number has moved since it last looked. An input's
/// time is thus counted from the first interrupt check inside it, at most
/// one check interval after it began (before ADR 44's follow-up, a host
/// call and a clock read per input armed it exactly at its start).
struct Watchdog {
    epoch: Instant,
    /// Nanoseconds since `epoch` after which the running call stops.
    deadline: AtomicU64,
    fired: AtomicBool,
    /// The time each input of the running call may take, in nanoseconds.
    allowed: AtomicU64,
    /// The number of the input the prelude runs (0: none yet in this call);
    /// written by JavaScript through an `Int32Array` over it, on the thread
    /// that runs the call, which is also the thread that reads it.
    input: AtomicI32,
    /// `input` when the deadline was last armed.
    seen: AtomicI32,
}

impl Watchdog {
    fn new() -> Watchdog {
        Watchdog {
            epoch: Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            fired: AtomicBool::new(false),
            allowed: AtomicU64::new(0),
            input: AtomicI32::new(0),
            seen: AtomicI32::new(0),
        }
    }
    fn nanos(d: Duration) -> u64 {
        d.as_nanos().min(u64::MAX as u128) as u64
    }
    fn arm(&self, allowed: Duration) {
        self.fired.store(false, Ordering::Relaxed);
        self.input.store(0, Ordering::Relaxed);
        self.seen.store(0, Ordering::Relaxed);
        self.allowed.store(Self::nanos(allowed), Ordering::Relaxed);
        let at = self.epoch.elapsed() + allowed;
        self.deadline.store(Self::nanos(at), Ordering::Relaxed);
    }
    fn disarm(&self) {
        self.deadline.store(u64::MAX, Ordering::Relaxed);
    }
    fn expired(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        if deadline == u64::MAX {
            return false;
        }
        let now = Self::nanos(self.epoch.elapsed());
        let input = self.input.load(Ordering::Relaxed);
        if input != self.seen.load(Ordering::Relaxed) {
            // Another input began since the last check: its own time.
            self.seen.store(input, Ordering::Relaxed);
            let allowed = self.allowed.load(Ordering::Relaxed);
            self.deadline
                .store(now.saturating_add(allowed), Ordering::Relaxed);
            return false;
        }
        if now > deadline {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// An `Int32Array` of one element over the watchdog's `input`: what the
/// prelude writes the number of each input it starts into. The memory is
/// the watchdog's; the array buffer holds a reference to the watchdog,
/// dropped when QuickJS frees the buffer, so it outlives every access.
fn input_counter<'js>(
    ctx: &Ctx<'js>,
    watchdog: &Arc<Watchdog>,
) -> Result<rquickjs::TypedArray<'js, i32>, Fault> {
    unsafe extern "C" fn release(
        _rt: *mut rquickjs::qjs::JSRuntime,
        opaque: *mut std::ffi::c_void,
        _ptr: *mut std::ffi::c_void,
    ) {
        // SAFETY: `opaque` is the `Arc::into_raw` below, released once
        // (QuickJS calls this once, when it frees the buffer).
        drop(unsafe { Arc::from_raw(opaque as *const Watchdog) });
    }
    let opaque = Arc::into_raw(watchdog.clone());
    // SAFETY: the buffer is the 4 bytes of an `AtomicI32` (an `i32` in an
    // `UnsafeCell`, aligned for an `Int32Array`) inside the `Arc` that
    // `opaque` keeps alive until QuickJS releases the buffer. JavaScript
    // writes it only while it runs on the thread that owns the projection,
    // the interrupt handler reads it on that same thread: no data race.
    let value = unsafe {
        let raw = rquickjs::qjs::JS_NewArrayBuffer(
            ctx.as_raw().as_ptr(),
            watchdog.input.as_ptr().cast::<u8>(),
            std::mem::size_of::<i32>() as _,
            Some(release),
            opaque as *mut std::ffi::c_void,
            false,
        );
        rquickjs::Value::from_raw(ctx.clone(), raw)
    };
    let buffer = rquickjs::ArrayBuffer::from_value(value)
        .ok_or_else(|| Fault::Engine("the input counter could not be made".into()))?;
    rquickjs::TypedArray::<i32>::from_arraybuffer(buffer).map_err(engine)
}

/// A compiled projection and its states.
pub struct Projection {
    // Field order: the context goes before the runtime it belongs to.
    context: Context,
    runtime: Runtime,
    watchdog: Arc<Watchdog>,
    limits: Limits,
    definition: Definition,
    /// The last batch's buffers, kept for the next one: a batch's few
    /// hundred kilobytes come from the allocator's warm memory instead of
    /// fresh pages the kernel zeroes each time.
    buffers: Buffers,
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("definition", &self.definition)
            .finish()
    }
}

impl Projection {
    /// Runs `source` once in a fresh sandbox and reads its definition.
    pub fn compile(source: &str, limits: Limits) -> Result<Projection, Fault> {
        let runtime = Runtime::new().map_err(|e| Fault::Engine(e.to_string()))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let watchdog = Arc::new(Watchdog::new());
        let dog = watchdog.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || dog.expired())));
        let context = Context::full(&runtime).map_err(|e| Fault::Engine(e.to_string()))?;
        watchdog.arm(limits.compile_time);
        let compiled = context.with(|ctx| {
            // Where batches count their inputs for the per-input CPU-time
            // limit (`inputCounter` in the prelude, which takes it out of
            // the global object before any source runs).
            let counter = input_counter(&ctx, &watchdog)?;
            ctx.globals().set(COUNTER, counter).map_err(engine)?;
            ctx.eval::<(), _>(PRELUDE)
                .catch(&ctx)
                .map_err(|e| Fault::Engine(format!("prelude: {}", describe(e))))?;
            let api = api(&ctx)?;
            ctx.eval::<(), _>(source)
                .catch(&ctx)
                .map_err(|e| classify(e, &watchdog, &limits, "compile"))?;
            let definition: Function = api.get("definition").map_err(engine)?;
            let json: String = definition
                .call(())
                .catch(&ctx)
                .map_err(|e| classify(e, &watchdog, &limits, "compile"))?;
            Definition::from_prelude_json(&json).map_err(Fault::Invalid)
        });
        watchdog.disarm();
        let definition = compiled.map_err(|f| match refine(&runtime, &limits, f) {
            Fault::Script(m) => Fault::Invalid(m),
            other => other,
        })?;
        if definition.handles_deleted && !definition.by_stream {
            // KurrentDB's rule: a deletion is a stream's, so its partition.
            return Err(Fault::Invalid(
                "Deleted stream notifications are only supported with foreachStream()".into(),
            ));
        }
        Ok(Projection {
            context,
            runtime,
            watchdog,
            limits,
            definition,
            buffers: Buffers::default(),
        })
    }

    /// The definition the source declared.
    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    /// Calls `api[name](args…)` under the handler time limit.
    fn call<R>(
        &self,
        name: &str,
        build: impl for<'js> FnOnce(&mut Args<'js>) -> rquickjs::Result<()>,
        read: impl for<'js> FnOnce(rquickjs::Value<'js>) -> Result<R, Fault>,
    ) -> Result<R, Fault> {
        self.watchdog.arm(self.limits.handler_time);
        let out = self.context.with(|ctx| {
            let f: Function = api(&ctx)?.get(name).map_err(engine)?;
            let mut args = Args::new(ctx.clone(), 16);
            build(&mut args).map_err(engine)?;
            let v: rquickjs::Value = f
                .call_arg(args)
                .catch(&ctx)
                .map_err(|e| classify(e, &self.watchdog, &self.limits, "execute"))?;
            read(v)
        });
        self.watchdog.disarm();
        out.map_err(|f| refine(&self.runtime, &self.limits, f))
    }

    /// The partition an event belongs to: "" for an unpartitioned
    /// projection, the stream for `foreachStream`, what `partitionBy`
    /// returns (a string or number); `None` when it returns anything else
    /// (the event is skipped, as in KurrentDB).
    pub fn partition_of(&mut self, event: &InputEvent<'_>) -> Result<Option<String>, Fault> {
        Ok(self
            .partitions_of(std::slice::from_ref(event))?
            .pop()
            .flatten())
    }

    /// [`partition_of`](Self::partition_of) for each of a batch of events,
    /// in one call into the engine (each `partitionBy` call under its own
    /// time limit).
    pub fn partitions_of(
        &mut self,
        events: &[InputEvent<'_>],
    ) -> Result<Vec<Option<String>>, Fault> {
        if self.definition.by_stream {
            return Ok(events.iter().map(|e| Some(e.stream.to_owned())).collect());
        }
        if !self.definition.partitioned {
            return Ok(vec![Some(String::new()); events.len()]);
        }
        let buffers = std::mem::take(&mut self.buffers);
        let batch = Batch::of(
            buffers,
            events.iter().map(|e| Input::Event {
                partition: "",
                created: false,
                event: *e,
            }),
        );
        self.call_batch("partitionBatch", batch, |v| {
            let list: Vec<Option<String>> = v.get().map_err(engine)?;
            Ok(list)
        })
    }

    /// Whether a partition's state is loaded.
    pub fn has_partition(&self, partition: &str) -> Result<bool, Fault> {
        self.call(
            "has",
            |a| a.push_arg(partition),
            |v| v.get().map_err(engine),
        )
    }

    /// Loads a partition's stored state (JSON), or runs `$init` for it (`None`).
    pub fn load_partition(&mut self, partition: &str, state: Option<&str>) -> Result<(), Fault> {
        self.call(
            "load",
            |a| {
                a.push_arg(partition)?;
                a.push_arg(state)
            },
            |_| Ok(()),
        )
    }

    /// Loads the shared state of a bi-state projection, or runs `$initShared`.
    pub fn load_shared(&mut self, state: Option<&str>) -> Result<(), Fault> {
        self.call("loadShared", |a| a.push_arg(state), |_| Ok(()))
    }

    /// Handles one event in `partition` (loaded before); `created` runs the
    /// `$created` handlers first (the partition's first event). Returns
    /// what it emitted.
    pub fn handle(
        &mut self,
        partition: &str,
        created: bool,
        event: &InputEvent<'_>,
    ) -> Result<Vec<Emitted>, Fault> {
        let mut out = self.handle_many([Input::Event {
            partition,
            created,
            event: *event,
        }])?;
        Ok(out.pop().map(|(_, e)| e).unwrap_or_default())
    }

    /// Handles inputs in order, as [`handle`](Self::handle) does one event,
    /// in one call into the engine: each input runs under its own CPU-time
    /// limit (the prelude counts its inputs where the interrupt handler
    /// reads them, [`Watchdog`]).
    /// Returns, for each input that emitted, its index and what it emitted.
    pub fn handle_many<'e>(
        &mut self,
        inputs: impl IntoIterator<Item = Input<'e>>,
    ) -> Result<Vec<(usize, Vec<Emitted>)>, Fault> {
        let batch = Batch::of(std::mem::take(&mut self.buffers), inputs);
        if batch.count == 0 {
            self.buffers = batch.buffers;
            return Ok(Vec::new());
        }
        let limit = self.limits.emits_per_event;
        self.call_batch("run", batch, |v| {
            if v.is_null() || v.is_undefined() {
                return Ok(Vec::new());
            }
            let list: rquickjs::Array = v.get().map_err(engine)?;
            let mut all = Vec::new();
            let mut items = list.iter::<rquickjs::Value>();
            while let Some(index) = items.next() {
                let index: usize = index.and_then(|i| i.get::<f64>()).map_err(engine)? as usize;
                let out: rquickjs::Array = items
                    .next()
                    .ok_or_else(|| Fault::Engine("a batch's output ends early".into()))?
                    .and_then(|o| o.get())
                    .map_err(engine)?;
                if out.len() > limit {
                    return Err(Fault::TooManyEmits { limit });
                }
                let mut emitted = Vec::with_capacity(out.len());
                for item in out.iter::<rquickjs::Array>() {
                    let item = item.map_err(engine)?;
                    emitted.push(Emitted {
                        stream: item.get(0).map_err(engine)?,
                        event_type: item.get(1).map_err(engine)?,
                        data: item.get(2).map_err(engine)?,
                        metadata: item.get(3).map_err(engine)?,
                        is_json: item.get(4).map_err(engine)?,
                    });
                }
                all.push((index, emitted));
            }
            Ok(all)
        })
    }

    /// Calls `api[name](strings, text, nums, count)` with a batch; the
    /// prelude arms the time limit per input.
    fn call_batch<R>(
        &mut self,
        name: &str,
        batch: Batch<'_>,
        read: impl for<'js> FnOnce(rquickjs::Value<'js>) -> Result<R, Fault>,
    ) -> Result<R, Fault> {
        self.watchdog.arm(self.limits.handler_time);
        let out = self.context.with(|ctx| {
            let f: Function = api(&ctx)?.get(name).map_err(engine)?;
            let Batch {
                strings,
                buffers,
                count,
            } = &batch;
            let strings = {
                let array = rquickjs::Array::new(ctx.clone()).map_err(engine)?;
                for (i, s) in strings.iter().enumerate() {
                    array.set(i, *s).map_err(engine)?;
                }
                array
            };
            let text = rquickjs::String::from_str(ctx.clone(), &buffers.text).map_err(engine)?;
            let ints = rquickjs::TypedArray::<i32>::new_copy(ctx.clone(), &buffers.ints)
                .map_err(engine)?;
            let numbers = rquickjs::TypedArray::<f64>::new_copy(ctx.clone(), &buffers.numbers)
                .map_err(engine)?;
            let v: rquickjs::Value = f
                .call((strings, text, ints, numbers, *count as i32))
                .catch(&ctx)
                .map_err(|e| classify(e, &self.watchdog, &self.limits, "execute"))?;
            read(v)
        });
        self.watchdog.disarm();
        self.buffers = batch.buffers;
        if self.buffers.text.capacity() > KEPT_TEXT {
            // A batch of large events: its text is not kept.
            self.buffers.text = String::new();
        }
        out.map_err(|f| refine(&self.runtime, &self.limits, f))
    }

    /// The state of a partition ("" for the root) as JSON; `None` when not
    /// loaded or null.
    pub fn state(&self, partition: &str) -> Result<Option<String>, Fault> {
        self.call(
            "state",
            |a| a.push_arg(partition),
            |v| v.get().map_err(engine),
        )
    }

    /// The shared state of a bi-state projection as JSON.
    pub fn shared_state(&self) -> Result<Option<String>, Fault> {
        self.call("shared", |_| Ok(()), |v| v.get().map_err(engine))
    }

    /// The result of a partition: its state through `transformBy` /
    /// `filterBy`; `None` when filtered out or not loaded.
    pub fn result(&self, partition: &str) -> Result<Option<String>, Fault> {
        self.call(
            "result",
            |a| a.push_arg(partition),
            |v| v.get().map_err(engine),
        )
    }

    /// Partitions whose state changed since the last call.
    pub fn take_dirty(&mut self) -> Result<Vec<String>, Fault> {
        self.call("takeDirty", |_| Ok(()), |v| v.get().map_err(engine))
    }

    /// Whether the shared state changed since the last call.
    pub fn take_shared_dirty(&mut self) -> Result<bool, Fault> {
        self.call("takeSharedDirty", |_| Ok(()), |v| v.get().map_err(engine))
    }

    /// Lines `log()` wrote since the last call (at most 100 per call).
    pub fn take_logs(&mut self) -> Result<Vec<String>, Fault> {
        self.call("takeLogs", |_| Ok(()), |v| v.get().map_err(engine))
    }

    /// Drops partitions' states from memory (stored before: the caller
    /// loads them again when an event needs them).
    pub fn forget(&mut self, partitions: &[String]) -> Result<(), Fault> {
        for partition in partitions {
            self.call("forget", |a| a.push_arg(partition.as_str()), |_| Ok(()))?;
        }
        Ok(())
    }

    /// The partitions loaded.
    pub fn partitions(&self) -> Result<Vec<String>, Fault> {
        self.call("partitions", |_| Ok(()), |v| v.get().map_err(engine))
    }
}

/// A batch of inputs as the prelude's `run`/`partitionBatch` take it: the
/// distinct short strings (partitions, streams, types, categories; "" at
/// 0), the long ones (bodies, metadata, event ids) end to end in one text,
/// and per input [`INTS`] integers (kind, `isJson`, string indexes) and
/// [`NUMS`] numbers (position, commit time, revision, then where each long
/// string is in the text, in UTF-16 code units as JavaScript's `substring`
/// counts). The layout is documented once more in the prelude, which reads
/// it. One conversion per batch instead of a dozen per event.
struct Batch<'a> {
    strings: Vec<&'a str>,
    buffers: Buffers,
    count: usize,
}

/// A [`Batch`]'s text, integers and numbers (copied into the engine).
#[derive(Default)]
struct Buffers {
    text: String,
    ints: Vec<i32>,
    numbers: Vec<f64>,
}

/// The most text capacity a projection keeps between batches, in bytes
/// (its integers and numbers, under half a megabyte at most, are kept).
const KEPT_TEXT: usize = 1 << 20;

/// Integers per input in a [`Batch`].
const INTS: usize = 6;
/// Numbers per input in a [`Batch`].
const NUMS: usize = 11;
const KIND_EVENT: i32 = 0;
const KIND_CREATED: i32 = 1;
const KIND_DELETED: i32 = 2;

impl<'a> Batch<'a> {
    fn of(mut buffers: Buffers, inputs: impl IntoIterator<Item = Input<'a>>) -> Batch<'a> {
        let inputs = inputs.into_iter();
        let hint = inputs.size_hint().0;
        buffers.text.clear();
        buffers.ints.clear();
        buffers.ints.reserve(hint * INTS);
        buffers.numbers.clear();
        buffers.numbers.reserve(hint * NUMS);
        let mut batch = Batch {
            strings: vec![""],
            buffers,
            count: 0,
        };
        let mut index: HashMap<&'a str, i32> = HashMap::new();
        index.insert("", 0);
        // Consecutive events mostly share their partition, stream, type
        // and category: the previous one is checked before the map.
        let mut last: [(&'a str, i32); 4] = [("", 0); 4];
        let mut units = 0usize;
        for input in inputs {
            batch.count += 1;
            let mut short = |slot: usize, s: &'a str, strings: &mut Vec<&'a str>| -> i32 {
                let (previous, i) = last[slot];
                // The same text (a partition or category borrowed from one
                // place) compares by address first.
                if (previous.as_ptr() == s.as_ptr() && previous.len() == s.len()) || previous == s {
                    return i;
                }
                let i = *index.entry(s).or_insert_with(|| {
                    strings.push(s);
                    (strings.len() - 1) as i32
                });
                last[slot] = (s, i);
                i
            };
            let mut long = |s: Option<&str>, text: &mut String| -> [f64; 2] {
                let Some(s) = s else {
                    return [0.0, -1.0];
                };
                let start = units;
                text.push_str(s);
                units += if s.is_ascii() {
                    s.len()
                } else {
                    s.encode_utf16().count()
                };
                [start as f64, (units - start) as f64]
            };
            match input {
                Input::Event {
                    partition,
                    created,
                    event: e,
                } => {
                    let ints = [
                        if created { KIND_CREATED } else { KIND_EVENT },
                        i32::from(e.is_json),
                        short(0, partition, &mut batch.strings),
                        short(1, e.stream, &mut batch.strings),
                        short(2, e.event_type, &mut batch.strings),
                        short(3, e.category, &mut batch.strings),
                    ];
                    batch.buffers.ints.extend_from_slice(&ints);
                    // As f64: JavaScript's numbers; revisions beyond 2^53
                    // lose precision as in KurrentDB's runtime.
                    batch.buffers.numbers.extend_from_slice(&[
                        e.position as f64,
                        e.created_micros as f64,
                        e.sequence_number as f64,
                    ]);
                    for s in [
                        Some(e.body),
                        Some(e.metadata),
                        Some(e.event_id),
                        e.link_metadata,
                    ] {
                        let at = long(s, &mut batch.buffers.text);
                        batch.buffers.numbers.extend_from_slice(&at);
                    }
                }
                Input::Deleted {
                    partition,
                    position,
                    created_micros,
                } => {
                    let p = short(0, partition, &mut batch.strings);
                    batch
                        .buffers
                        .ints
                        .extend_from_slice(&[KIND_DELETED, 0, p, p, 0, 0]);
                    batch.buffers.numbers.extend_from_slice(&[
                        position as f64,
                        created_micros as f64,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        -1.0,
                    ]);
                }
            }
        }
        batch
    }
}

/// QuickJS throws `null` when it cannot even allocate its "out of memory"
/// error: a `null` thrown while the heap is past half its limit is that.
fn refine(runtime: &Runtime, limits: &Limits, fault: Fault) -> Fault {
    match fault {
        Fault::Script(m) | Fault::Invalid(m) if m == "null" => {
            let used = runtime.memory_usage().malloc_size.max(0) as usize;
            if used >= limits.memory_bytes / 2 {
                Fault::MemoryLimit {
                    limit: limits.memory_bytes,
                }
            } else {
                Fault::Script(m)
            }
        }
        other => other,
    }
}

fn engine(e: rquickjs::Error) -> Fault {
    Fault::Engine(e.to_string())
}

fn describe(e: CaughtError<'_>) -> String {
    match e {
        CaughtError::Exception(ex) => {
            let message = ex.message().unwrap_or_default();
            match ex.stack() {
                Some(stack) if !stack.is_empty() => format!("{message}\n{stack}"),
                _ => message,
            }
        }
        CaughtError::Value(v) if v.is_null() => "null".into(),
        CaughtError::Value(v) => match v.as_string().and_then(|s| s.to_string().ok()) {
            Some(s) => s,
            None => format!("{v:?}"),
        },
        CaughtError::Error(e) => e.to_string(),
    }
}

fn classify(e: CaughtError<'_>, dog: &Watchdog, limits: &Limits, what: &'static str) -> Fault {
    if dog.fired.load(Ordering::Relaxed) {
        let allowed = if what == "compile" {
            limits.compile_time
        } else {
            limits.handler_time
        };
        return Fault::TimeLimit { what, allowed };
    }
    let text = describe(e);
    if text.contains("out of memory") || text.contains("Allocation") {
        return Fault::MemoryLimit {
            limit: limits.memory_bytes,
        };
    }
    Fault::Script(text)
}
