// Factum's projection runtime: evaluated in a fresh QuickJS context before a
// projection's source. It defines KurrentDB's projection language (the
// definition functions, `emit`/`linkTo`/…, the event object) and returns
// the functions through which Rust drives the projection. Written from the
// documented behaviour of KurrentDB's runtime; see ADR 35.
//
// Nothing here reaches outside the context: no I/O, no timers, no modules.
// The clock and `Math.random` are made deterministic (`Date.now()` and
// `new Date()` are the commit time of the event being handled, 0 outside
// a handler; `Math.random` is a generator seeded by the event's position),
// so replaying the same events gives the same state.
(function (global) {
  "use strict";

  // Where the per-input CPU-time limit is counted (see `run` below): the
  // number of the input being handled (1, 2, …; the host resets it to 0
  // per call), which the host's interrupt handler reads. Taken out of reach.
  const inputCounter = global.__factum_input;
  delete global.__factum_input;

  const RealDate = Date;
  // Taken before any projection source runs (which may replace them).
  const fnToString = Function.prototype.toString;
  const reflectApply = Reflect.apply;
  const jsonParse = JSON.parse;
  const jsonStringify = JSON.stringify;
  const isArray = Array.isArray;

  // The definition the source builds.
  const def = {
    source: null, // {all: true} | {streams: [...]} | {categories: [...]}
    byStream: false,
    partitionBy: null,
    handlers: Object.create(null),
    // Whether each handler can reach its event (`reachesEvent`), set by
    // `definition()`.
    reaches: Object.create(null),
    any: null,
    anyReaches: true,
    init: null,
    initShared: null,
    created: [],
    deleted: null,
    transforms: [],
    outputState: false,
    definesStateTransform: false,
    resultStreamName: null,
    partitionResultStreamNamePattern: null,
    includeLinks: false,
    reorderEvents: false,
    processingLag: null,
    biState: false,
  };

  function fail(message) {
    throw new Error(message);
  }

  // ---- determinism -------------------------------------------------------
  // The commit time of the event being handled, in µs (the clock reads it
  // in ms when asked, not at every event).
  let clockMicros = 0;
  function clock() {
    return Math.floor(clockMicros / 1000);
  }
  function FactumDate(...args) {
    if (!new.target) return new RealDate(clock()).toString();
    return args.length === 0 ? new RealDate(clock()) : new RealDate(...args);
  }
  FactumDate.prototype = RealDate.prototype;
  FactumDate.now = function () {
    return clock();
  };
  FactumDate.parse = RealDate.parse;
  FactumDate.UTC = RealDate.UTC;
  Object.defineProperty(RealDate.prototype, "constructor", {
    value: FactumDate,
    writable: true,
    configurable: true,
  });
  global.Date = FactumDate;

  let seed = 0x9e3779b9;
  // The position of the event being handled until its first
  // `Math.random()` seeds the generator from it (-1: seeded).
  let seedPosition = -1;
  Math.random = function () {
    // xorshift32: deterministic per event (seeded from its position).
    if (seedPosition >= 0) {
      seed = (seedPosition ^ 0x9e3779b9) | 0 || 1;
      seedPosition = -1;
    }
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 4294967296;
  };
  // Evaluating strings is not needed by projections; take it away.
  global.eval = undefined;
  const FunctionCtor = Function;
  const refuse = function () {
    fail("compiling code from strings is not allowed in a projection");
  };
  Object.defineProperty(FunctionCtor.prototype, "constructor", {
    value: refuse,
    writable: false,
    configurable: false,
  });
  global.Function = refuse;

  // ---- the definition language -------------------------------------------
  const next = {
    fromStream: ["when", "partitionBy", "outputState", "foreachStream"],
    fromAll: ["when", "partitionBy", "outputState", "foreachStream"],
    fromStreams: ["when", "partitionBy", "outputState", "foreachStream"],
    fromCategory: ["when", "partitionBy", "outputState", "foreachStream"],
    when: ["transformBy", "filterBy", "outputState", "outputTo", "$defines_state_transform"],
    foreachStream: ["when"],
    outputState: ["transformBy", "filterBy", "outputTo"],
    partitionBy: ["when"],
    transformBy: ["transformBy", "filterBy", "outputState", "outputTo"],
    filterBy: ["transformBy", "filterBy", "outputState", "outputTo"],
    outputTo: [],
  };

  function chain(step) {
    const o = {};
    for (const m of next[step]) o[m] = methods[m];
    return o;
  }

  function addHandler(name, fn) {
    if (typeof fn !== "function") fail("the handler for " + name + " is not a function");
    switch (name) {
      case "$init":
        def.init = fn;
        break;
      case "$initShared":
        def.biState = true;
        def.initShared = fn;
        break;
      case "$any":
        def.any = fn;
        break;
      case "$created":
        def.created.push(fn);
        break;
      case "$deleted":
        if (def.biState) fail("Cannot handle deletes in bi-state projections");
        def.deleted = fn;
        break;
      default:
        def.handlers[name] = fn;
    }
  }

  const methods = {
    when(handlers) {
      if (handlers === null || typeof handlers !== "object") fail("when() takes an object of handlers");
      for (const key of Object.keys(handlers)) {
        if (typeof handlers[key] === "function") addHandler(key, handlers[key]);
      }
      return chain("when");
    },
    partitionBy(fn) {
      if (typeof fn !== "function") fail("partitionBy() takes a function");
      def.partitionBy = fn;
      return chain("partitionBy");
    },
    foreachStream(handlers) {
      def.byStream = true;
      // KurrentDB's documentation also passes the handlers here.
      if (handlers !== undefined) return methods.when(handlers);
      return chain("foreachStream");
    },
    outputState() {
      def.outputState = true;
      return chain("outputState");
    },
    transformBy(fn) {
      if (typeof fn !== "function") fail("transformBy() takes a function");
      def.definesStateTransform = true;
      def.outputState = true;
      def.transforms.push([false, fn]);
      return chain("transformBy");
    },
    filterBy(fn) {
      if (typeof fn !== "function") fail("filterBy() takes a function");
      def.definesStateTransform = true;
      def.outputState = true;
      def.transforms.push([true, fn]);
      return chain("filterBy");
    },
    outputTo(resultStream, partitionPattern) {
      if (typeof resultStream !== "string") fail("outputTo() takes the result stream's name");
      if (partitionPattern !== undefined && typeof partitionPattern !== "string")
        fail("outputTo()'s partition result stream pattern must be a string");
      def.resultStreamName = resultStream;
      if (partitionPattern !== undefined) def.partitionResultStreamNamePattern = partitionPattern;
      def.outputState = true;
      return chain("outputTo");
    },
    $defines_state_transform() {
      def.definesStateTransform = true;
      def.outputState = true;
    },
  };

  function source(s) {
    if (def.source !== null) fail("a projection has one source: fromAll, fromStream, fromStreams or fromCategory, once");
    def.source = s;
  }

  function strings(args, what) {
    const list = args.length === 1 && isArray(args[0]) ? args[0] : Array.prototype.slice.call(args);
    if (list.length === 0) fail(what + " needs at least one name");
    for (const s of list) if (typeof s !== "string" || s === "") fail(what + " takes stream or category names (strings)");
    return list;
  }

  const optionSetters = {
    resultstreamname(v) {
      if (typeof v !== "string") fail("Invalid value for option resultStreamName");
      def.resultStreamName = v;
    },
    $includelinks(v) {
      if (typeof v !== "boolean") fail("Invalid value for option $includeLinks");
      def.includeLinks = v;
    },
    reorderevents(v) {
      if (typeof v !== "boolean") fail("Invalid value for option reorderEvents");
      def.reorderEvents = v;
    },
    processinglag(v) {
      if (typeof v !== "number") fail("Invalid value for option processingLag");
      def.processingLag = v | 0;
    },
    bistate(v) {
      if (typeof v !== "boolean") fail("Invalid value for option biState");
      def.biState = v;
    },
  };

  const definitionFunctions = {
    options(o) {
      if (o === null || typeof o !== "object") return;
      for (const key of Object.keys(o)) {
        const set = optionSetters[key.toLowerCase()];
        if (!set) fail("Unrecognized option: " + key);
        set(o[key]);
      }
    },
    fromAll() {
      source({ all: true });
      return chain("fromAll");
    },
    fromStream(stream) {
      if (typeof stream !== "string" || stream === "") fail("fromStream() takes a stream name");
      source({ streams: [stream] });
      return chain("fromStream");
    },
    fromStreams() {
      source({ streams: strings(arguments, "fromStreams()") });
      return chain("fromStreams");
    },
    fromCategory() {
      source({ categories: strings(arguments, "fromCategory()") });
      return chain("fromCategory");
    },
    fromCategories() {
      source({ categories: strings(arguments, "fromCategories()") });
      return chain("fromCategory");
    },
    on_event(name, fn) {
      if (typeof name !== "string") fail("on_event() takes an event type");
      addHandler(name, fn);
    },
    on_any(fn) {
      addHandler("$any", fn);
    },
  };
  for (const name of Object.keys(definitionFunctions)) global[name] = definitionFunctions[name];

  // ---- what handlers call -------------------------------------------------
  let running = false;
  // What the event being handled emitted: null until it emits.
  let emitted = null;
  let logs = [];
  // The event being handled ($causedBy of what it emits): its object, or
  // its batch and index when no object was made for it (see `reachesEvent`).
  let currentEvent = null;
  let currentBatch = null;
  let currentIndex = 0;
  function hasCurrentEvent() {
    return currentEvent !== null || currentBatch !== null;
  }
  function currentEventId() {
    if (currentEvent !== null) return currentEvent.eventId;
    const n = currentIndex * NUMS;
    return currentBatch.text.substring(currentBatch.nums[n + 7], currentBatch.nums[n + 7] + currentBatch.nums[n + 8]);
  }
  const MAX_LOG_LINES = 100;
  const MAX_LOG_CHARS = 4096;

  function output(x) {
    if (emitted === null) emitted = [];
    emitted.push(x);
  }

  function handlerOnly(name) {
    if (!running) fail(name + "() may only be called from an event handler");
  }

  function streamArg(v, name) {
    if (typeof v !== "string" || v.trim() === "") fail(name + " must be a non-empty string");
    return v;
  }

  function metadataOf(metadata, name) {
    if (metadata === undefined || metadata === null) {
      return hasCurrentEvent() ? jsonStringify({ $causedBy: currentEventId() }) : null;
    }
    if (typeof metadata !== "object") fail(name + "(): metadata must be an object");
    const m = {};
    for (const k of Object.keys(metadata)) if (metadata[k] !== undefined) m[k] = metadata[k];
    if (hasCurrentEvent() && m.$causedBy === undefined) m.$causedBy = currentEventId();
    return jsonStringify(m);
  }

  global.emit = function (stream, eventType, body, metadata) {
    handlerOnly("emit");
    streamArg(stream, "emit(): streamId");
    streamArg(eventType, "emit(): eventName");
    if (body === null || typeof body !== "object") fail("emit(): eventBody must be an object");
    output([stream, eventType, jsonStringify(body), metadataOf(metadata, "emit"), true]);
  };
  global.linkTo = function (stream, event, metadata) {
    handlerOnly("linkTo");
    streamArg(stream, "linkTo(): streamId");
    if (event === null || typeof event !== "object") fail("linkTo(): event must be an event object");
    if (typeof event.sequenceNumber !== "number" || typeof event.streamId !== "string")
      fail("Invalid link to event " + event.sequenceNumber + "@" + event.streamId);
    output([stream, "$>", event.sequenceNumber + "@" + event.streamId, metadataOf(metadata, "linkTo"), false]);
  };
  global.linkStreamTo = function (stream, linkedStreamId, metadata) {
    handlerOnly("linkStreamTo");
    streamArg(stream, "linkStreamTo(): streamId");
    streamArg(linkedStreamId, "linkStreamTo(): linkedStreamId");
    output([stream, "$@", linkedStreamId, metadataOf(metadata, "linkStreamTo"), false]);
  };
  global.copyTo = function (stream, event, metadata) {
    handlerOnly("copyTo");
    streamArg(stream, "copyTo(): streamId");
    if (event === null || typeof event !== "object" || typeof event.eventType !== "string")
      fail("copyTo(): event must be an event object");
    const m = metadata === undefined ? event.metadataRaw || null : metadataOf(metadata, "copyTo");
    output([stream, event.eventType, event.bodyRaw === null ? "" : event.bodyRaw, m, event.isJson]);
  };
  global.log = function () {
    if (logs.length >= MAX_LOG_LINES) return;
    const parts = [];
    for (const a of arguments) parts.push(a !== null && typeof a === "object" ? jsonStringify(a) : String(a));
    let line = parts.join(" ");
    if (line.length > MAX_LOG_CHARS) line = line.slice(0, MAX_LOG_CHARS) + "…";
    logs.push(line);
  };

  // ---- the event object ---------------------------------------------------
  // An event object reads its fields from its batch (see "batches" below)
  // when a handler asks, instead of copying ten of them into every event:
  // the fields are accessors on the prototype (enumerable, so `for…in`
  // lists them), `toJSON` gives KurrentDB's shape to `JSON.stringify`, and
  // assigning a field makes it an own property, as before. `body`/`data`,
  // `metadata` and `linkMetadata` are parsed once, when first read, and
  // kept as own properties. The batch is private to the prelude.
  const FIELDS = ["partition", "streamId", "sequenceNumber", "eventType", "bodyRaw", "metadataRaw", "linkMetadataRaw", "isJson", "category", "eventId"];
  function own(e, name, v) {
    Object.defineProperty(e, name, { value: v, enumerable: true, writable: true, configurable: true });
  }
  // `body` not parsed yet.
  const UNPARSED = {};
  // Where an event object finds its fields: its batch, its index in it,
  // and its parsed body once read. Symbol keys, which `for…in`,
  // `Object.keys` and `JSON.stringify` pass over.
  const BATCH = Symbol("batch");
  const INDEX = Symbol("index");
  const BODY = Symbol("body");
  // The event objects' prototype. An event object is made by a literal,
  // `{ __proto__: EVENT, [BATCH]: batch, [INDEX]: i }` (written out where
  // events are made): in QuickJS a literal costs less than a constructor
  // call, and two slots less than three. Its body is not parsed until an
  // own BODY says otherwise: the prototype's BODY is UNPARSED.
  function Envelope() {}
  const EVENT = Envelope.prototype;
  EVENT[BODY] = UNPARSED;
  // QuickJS frees a shape no object has any more, and event objects die
  // with their event: kept objects at each step of the literal (and with
  // a parsed body) keep the shapes, so each event object finds them
  // instead of building them.
  const shapeKeepers = [
    { __proto__: EVENT },
    { __proto__: EVENT, [BATCH]: null },
    { __proto__: EVENT, [BATCH]: null, [INDEX]: 0 },
  ];
  shapeKeepers[2][BODY] = null;
  shapeKeepers.push({ __proto__: EVENT, [BATCH]: null, [INDEX]: 0 });
  const envelopeMethods = {
    toJSON() {
      const o = {};
      for (const name of FIELDS) o[name] = this[name];
      if (this[BODY] !== UNPARSED) {
        o.body = this[BODY];
        o.data = this[BODY];
      }
      for (const name of Object.keys(this)) o[name] = this[name];
      return o;
    },
    // Parsed once, when first read (JSON events only); `data` is the same.
    get body() {
      let v = this[BODY];
      if (v === UNPARSED) {
        const b = this[BATCH];
        const i = this[INDEX];
        const n = i * NUMS;
        v = b.ints[i * INTS + 1] === 1 ? jsonParse(b.text.substring(b.nums[n + 3], b.nums[n + 3] + b.nums[n + 4])) : undefined;
        this[BODY] = v;
      }
      return v;
    },
    set body(v) {
      this[BODY] = v;
    },
    get data() {
      return this.body;
    },
    set data(v) {
      own(this, "data", v);
    },
    get partition() {
      const b = this[BATCH];
      return b.strings[b.ints[this[INDEX] * INTS + 2]];
    },
    set partition(v) {
      own(this, "partition", v);
    },
    get streamId() {
      const b = this[BATCH];
      return b.strings[b.ints[this[INDEX] * INTS + 3]];
    },
    set streamId(v) {
      own(this, "streamId", v);
    },
    get sequenceNumber() {
      return this[BATCH].nums[this[INDEX] * NUMS + 2];
    },
    set sequenceNumber(v) {
      own(this, "sequenceNumber", v);
    },
    get eventType() {
      const b = this[BATCH];
      return b.strings[b.ints[this[INDEX] * INTS + 4]];
    },
    set eventType(v) {
      own(this, "eventType", v);
    },
    get bodyRaw() {
      const b = this[BATCH];
      const n = this[INDEX] * NUMS;
      return b.text.substring(b.nums[n + 3], b.nums[n + 3] + b.nums[n + 4]);
    },
    set bodyRaw(v) {
      own(this, "bodyRaw", v);
    },
    get metadataRaw() {
      const b = this[BATCH];
      const n = this[INDEX] * NUMS;
      return b.text.substring(b.nums[n + 5], b.nums[n + 5] + b.nums[n + 6]);
    },
    set metadataRaw(v) {
      own(this, "metadataRaw", v);
    },
    get linkMetadataRaw() {
      const b = this[BATCH];
      const n = this[INDEX] * NUMS;
      return b.nums[n + 10] < 0 ? null : b.text.substring(b.nums[n + 9], b.nums[n + 9] + b.nums[n + 10]);
    },
    set linkMetadataRaw(v) {
      own(this, "linkMetadataRaw", v);
    },
    get isJson() {
      return this[BATCH].ints[this[INDEX] * INTS + 1] === 1;
    },
    set isJson(v) {
      own(this, "isJson", v);
    },
    get category() {
      const b = this[BATCH];
      return b.strings[b.ints[this[INDEX] * INTS + 5]];
    },
    set category(v) {
      own(this, "category", v);
    },
    get eventId() {
      const b = this[BATCH];
      const n = this[INDEX] * NUMS;
      return b.text.substring(b.nums[n + 7], b.nums[n + 7] + b.nums[n + 8]);
    },
    set eventId(v) {
      own(this, "eventId", v);
    },
  };
  for (const name of Object.getOwnPropertyNames(envelopeMethods)) {
    const d = Object.getOwnPropertyDescriptor(envelopeMethods, name);
    // The fields enumerable, as own fields were (`for…in` lists them).
    d.enumerable = FIELDS.includes(name);
    Object.defineProperty(Envelope.prototype, name, d);
  }
  function lazy(name, compute) {
    Object.defineProperty(Envelope.prototype, name, {
      get() {
        const v = compute(this);
        own(this, name, v);
        return v;
      },
      set(v) {
        own(this, name, v);
      },
      configurable: true,
    });
  }
  function parseOrUndefined(raw) {
    if (raw === null || raw === undefined || raw === "") return undefined;
    try {
      return jsonParse(raw);
    } catch (e) {
      return undefined;
    }
  }
  lazy("metadata", (e) => parseOrUndefined(e.metadataRaw));
  lazy("linkMetadata", (e) => parseOrUndefined(e.linkMetadataRaw));

  // ---- handlers that cannot reach their event ------------------------------
  // Whether a handler can reach the event it is called with. When it
  // cannot, no event object is made for it (the object is most of what an
  // event costs a counting projection): nothing observes the difference.
  // Decided from the handler's source text, conservatively — any doubt
  // answers true: a plain function, arrow or method whose parameters are
  // plain names (no defaults, patterns or rest) and whose body names
  // neither its second parameter nor `arguments`, anywhere (strings and
  // comments included), nor contains a `\u` escape (an identifier may be
  // spelled with one). `eval` and `Function` are gone, and QuickJS refuses
  // `f.arguments`, so a body that names neither cannot reach it. Built-in
  // and bound functions ("[native code]") always get it. Written with
  // string indexing only: the source may have replaced String's methods.
  function identChar(c) {
    return (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c === "_" || c === "$";
  }
  function isName(t) {
    if (t.length === 0 || (t[0] >= "0" && t[0] <= "9")) return false;
    for (let i = 0; i < t.length; i++) if (!identChar(t[i])) return false;
    return true;
  }
  function trim(t) {
    let a = 0;
    let b = t.length;
    while (a < b && (t[a] === " " || t[a] === "\t" || t[a] === "\n" || t[a] === "\r")) a++;
    while (b > a && (t[b - 1] === " " || t[b - 1] === "\t" || t[b - 1] === "\n" || t[b - 1] === "\r")) b--;
    let o = "";
    for (let i = a; i < b; i++) o += t[i];
    return o;
  }
  function slice(t, a, b) {
    let o = "";
    for (let i = a; i < b; i++) o += t[i];
    return o;
  }
  // Whether `word` occurs in `t` between non-identifier characters.
  function names(t, word) {
    const n = word.length;
    for (let i = 0; i + n <= t.length; i++) {
      let k = 0;
      while (k < n && t[i + k] === word[k]) k++;
      if (k < n) continue;
      if (i > 0 && identChar(t[i - 1])) continue;
      if (i + n < t.length && identChar(t[i + n])) continue;
      return true;
    }
    return false;
  }
  function reachesEvent(fn) {
    let src;
    try {
      src = reflectApply(fnToString, fn, []);
    } catch (x) {
      return true;
    }
    if (typeof src !== "string") return true;
    let open = -1;
    let arrow = -1;
    for (let i = 0; i < src.length; i++) {
      if (src[i] === "(") {
        open = i;
        break;
      }
      if (src[i] === "=" && src[i + 1] === ">") {
        arrow = i;
        break;
      }
    }
    let params;
    let body;
    if (arrow >= 0) {
      // `x => …` (or `async x => …`).
      let head = trim(slice(src, 0, arrow));
      if (head.length > 6 && slice(head, 0, 6) === "async ") head = trim(slice(head, 6, head.length));
      params = [head];
      body = slice(src, arrow + 2, src.length);
    } else {
      if (open < 0) return true;
      // What comes before the parameters: `function`, `function name`,
      // `function*`, `async …`, a method's name, or nothing (an arrow).
      const head = trim(slice(src, 0, open));
      let rest = head;
      if (rest.length >= 5 && slice(rest, 0, 5) === "async" && (rest.length === 5 || !identChar(rest[5]))) rest = trim(slice(rest, 5, rest.length));
      if (rest.length >= 8 && slice(rest, 0, 8) === "function" && (rest.length === 8 || !identChar(rest[8]))) {
        rest = trim(slice(rest, 8, rest.length));
        if (rest.length > 0 && rest[0] === "*") rest = trim(slice(rest, 1, rest.length));
      }
      if (rest.length > 0 && !isName(rest)) return true;
      let close = -1;
      for (let i = open + 1; i < src.length; i++) {
        if (src[i] === ")") {
          close = i;
          break;
        }
      }
      if (close < 0) return true;
      params = [];
      let from = open + 1;
      for (let i = open + 1; i <= close; i++) {
        if (i === close || src[i] === ",") {
          params.push(trim(slice(src, from, i)));
          from = i + 1;
        }
      }
      if (params.length === 1 && params[0] === "") params = [];
      body = slice(src, close + 1, src.length);
    }
    for (const p of params) if (!isName(p)) return true;
    if (params.length >= 2 && names(body, params[1])) return true;
    if (names(body, "arguments") || names(body, "native")) return true;
    for (let i = 0; i + 1 < body.length; i++) if (body[i] === "\\" && body[i + 1] === "u") return true;
    return false;
  }

  // ---- state ---------------------------------------------------------------
  const states = new Map();
  let shared; // bi-state projections' shared state
  let dirty = new Set();
  let sharedDirty = false;

  function initState() {
    return def.init === null ? {} : def.init();
  }
  function initShared() {
    return def.initShared === null ? {} : def.initShared();
  }
  function toJson(v) {
    return v === null || v === undefined ? null : jsonStringify(v);
  }

  function begin(position, createdMicros) {
    emitted = null;
    clockMicros = createdMicros;
    seedPosition = position;
    running = true;
  }
  function end() {
    running = false;
    currentEvent = null;
    currentBatch = null;
    clockMicros = 0;
  }

  // A stream of a `foreachStream()` projection was deleted (soft delete or
  // tombstone): KurrentDB calls `$deleted(state, null, partition,
  // isSoftDeleted)` (always false there) on the partition's state and
  // keeps that state (mutated in place; what the handler returns is not
  // used, as in KurrentDB's runtime).
  function deleted(partition) {
    if (def.deleted !== null) def.deleted.call(undefined, states.get(partition), null, partition, false);
    dirty.add(partition);
  }

  // ---- batches ---------------------------------------------------------------
  // A batch of inputs as Rust hands it over (`sandbox.rs`'s `Batch`):
  // `strings`, the batch's distinct short strings ("" first); `text`, its
  // bodies, metadata and event ids end to end; per input INTS small
  // integers in `ints` (an Int32Array: kind, isJson, then indexes into
  // `strings` of the partition, streamId, eventType and category) and
  // NUMS numbers in `nums` (a Float64Array: position, commit time in µs,
  // sequenceNumber, then (start, length) in `text` of bodyRaw, metadataRaw,
  // eventId and linkMetadataRaw, length -1 for null). Integers index
  // arrays as integers (a double index is a property-name look-up).
  const INTS = 6;
  const NUMS = 11;
  const KIND_CREATED = 1;
  const KIND_DELETED = 2;
  // ---- the interface Rust drives -------------------------------------------
  // Frozen, and out of reach of enumeration: a projection that tampers with
  // it can only break itself.
  const api = {
    definition() {
      if (def.source === null)
        fail("the projection names no source: call fromAll(), fromStream(), fromStreams() or fromCategory()");
      // Definition functions are gone once the projection runs.
      for (const name of Object.keys(definitionFunctions)) delete global[name];
      const events = Object.keys(def.handlers);
      for (const name of events) def.reaches[name] = reachesEvent(def.handlers[name]);
      def.anyReaches = def.any === null || reachesEvent(def.any);
      return jsonStringify({
        source: def.source,
        byStream: def.byStream,
        partitioned: def.partitionBy !== null,
        allEvents: def.any !== null || events.length === 0,
        events: events,
        handlesCreated: def.created.length > 0,
        handlesDeleted: def.deleted !== null,
        biState: def.biState,
        outputState: def.outputState,
        definesStateTransform: def.definesStateTransform,
        resultStreamName: def.resultStreamName,
        partitionResultStreamNamePattern: def.partitionResultStreamNamePattern,
        includeLinks: def.includeLinks,
        reorderEvents: def.reorderEvents,
        processingLag: def.processingLag,
      });
    },
    // The partitions of a batch's events (see `run`): "" unpartitioned,
    // null to skip an event.
    partitionBatch(strings, text, ints, nums, count) {
      const batch = { strings, text, ints, nums };
      const out = new Array(count);
      for (let i = 0; i < count; i++) {
        if (def.byStream) {
          out[i] = strings[ints[i * INTS + 3]];
          continue;
        }
        if (def.partitionBy === null) {
          out[i] = "";
          continue;
        }
        inputCounter[0] = i + 1;
        begin(nums[i * NUMS], nums[i * NUMS + 1]);
        const p = def.partitionBy({ __proto__: EVENT, [BATCH]: batch, [INDEX]: i });
        end();
        out[i] = typeof p === "string" ? p : typeof p === "number" ? String(p) : null;
      }
      return out;
    },
    has(partition) {
      return states.has(partition);
    },
    // Loads a partition's stored state, or initializes it (null).
    load(partition, json) {
      let s;
      if (json === null || json === undefined) {
        begin(0, 0);
        try {
          s = initState();
        } finally {
          end();
        }
      } else {
        s = jsonParse(json);
      }
      states.set(partition, s);
    },
    loadShared(json) {
      if (json === null || json === undefined) {
        begin(0, 0);
        try {
          shared = initShared();
        } finally {
          end();
        }
      } else {
        shared = jsonParse(json);
      }
    },
    // Handles a batch of inputs in order (see "batches" above), each under
    // its own CPU-time limit (counted in `inputCounter`). Returns null when nothing
    // was emitted, else [index, emitted, index, emitted, …].
    run(strings, text, ints, nums, count) {
      // Referenced here, the shape keepers live as long as this interface.
      if (shapeKeepers.length === 0) fail("the event shapes are gone");
      const batch = { strings, text, ints, nums };
      let out = null;
      // The handler of each event type of the batch (by its index in
      // `strings`; null: none), looked up once, and whether it can reach
      // its event (`reachesEvent`).
      const handlers = [];
      const reach = [];
      // The partition of the events handled last and its state, stored
      // back into `states` when another partition comes (a run of events
      // of one stream touches the map once).
      let current = null;
      let state;
      const biState = def.biState;
      const hasCreated = def.created.length > 0;
      // begin(), inlined: what stays for the whole batch once, the clock
      // and the seed per input.
      emitted = null;
      currentEvent = null;
      currentBatch = null;
      running = true;
      try {
        for (let i = 0; i < count; i++) {
          inputCounter[0] = i + 1;
          const a = i * INTS;
          const n = i * NUMS;
          const kind = ints[a];
          const partition = strings[ints[a + 2]];
          seedPosition = nums[n];
          clockMicros = nums[n + 1];
          if (kind === KIND_DELETED) {
            if (current !== null) {
              states.set(current, state);
              current = null;
            }
            deleted(partition);
          } else {
            if (partition !== current) {
              if (current !== null) states.set(current, state);
              current = partition;
              state = states.get(partition);
              dirty.add(partition);
            }
            const t = ints[a + 4];
            let h = handlers[t];
            if (h === undefined) {
              const eventType = strings[t];
              h = def.handlers[eventType];
              let reaches;
              if (h === undefined) {
                h = def.any;
                reaches = def.anyReaches;
              } else {
                reaches = def.reaches[eventType];
              }
              handlers[t] = h;
              reach[t] = h === null || reaches !== false;
            }
            const created = hasCreated && kind === KIND_CREATED;
            // An event object only for handlers that can reach it.
            let e;
            if (created || reach[t]) {
              e = { __proto__: EVENT, [BATCH]: batch, [INDEX]: i };
              currentEvent = e;
            } else {
              currentBatch = batch;
              currentIndex = i;
            }
            if (created) {
              for (const c of def.created) c(biState ? [state, shared] : state, e);
            }
            if (biState) {
              const pair = [state, shared];
              let r = h ? h(pair, e) : e.bodyRaw;
              if (r === undefined) r = pair;
              if (isArray(r)) {
                state = r[0];
                shared = r[1];
              } else {
                state = r;
              }
              sharedDirty = true;
            } else {
              const r = h ? h(state, e) : e.bodyRaw;
              if (r !== undefined) state = r;
            }
            if (e !== undefined) currentEvent = null;
            else currentBatch = null;
          }
          if (emitted !== null) {
            if (out === null) out = [];
            out.push(i, emitted);
            emitted = null;
          }
        }
      } finally {
        if (current !== null) states.set(current, state);
        end();
      }
      return out;
    },
    takeLogs() {
      const l = logs;
      logs = [];
      return l;
    },
    // Partitions whose state changed since the last call.
    takeDirty() {
      const d = Array.from(dirty);
      dirty = new Set();
      return d;
    },
    takeSharedDirty() {
      const d = sharedDirty;
      sharedDirty = false;
      return d;
    },
    state(partition) {
      return states.has(partition) ? toJson(states.get(partition)) : null;
    },
    shared() {
      return toJson(shared);
    },
    result(partition) {
      if (!states.has(partition)) return null;
      let s = states.get(partition);
      begin(0, 0);
      try {
        for (const [isFilter, fn] of def.transforms) {
          if (isFilter) {
            if (fn(s) !== true) return null;
          } else {
            s = fn(s);
          }
          if (s === null || s === undefined) return null;
        }
      } finally {
        end();
      }
      return toJson(s);
    },
    partitions() {
      return Array.from(states.keys());
    },
    forget(partition) {
      states.delete(partition);
      dirty.delete(partition);
    },
  };
  Object.defineProperty(global, "__factum", { value: Object.freeze(api), enumerable: false, writable: false, configurable: false });
})(globalThis);
