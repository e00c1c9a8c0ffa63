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

  const RealDate = Date;
  const jsonParse = JSON.parse;
  const jsonStringify = JSON.stringify;
  const isArray = Array.isArray;

  // The definition the source builds.
  const def = {
    source: null, // {all: true} | {streams: [...]} | {categories: [...]}
    byStream: false,
    partitionBy: null,
    handlers: Object.create(null),
    any: null,
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
  let clock = 0;
  function FactumDate(...args) {
    if (!new.target) return new RealDate(clock).toString();
    return args.length === 0 ? new RealDate(clock) : new RealDate(...args);
  }
  FactumDate.prototype = RealDate.prototype;
  FactumDate.now = function () {
    return clock;
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
  Math.random = function () {
    // xorshift32: deterministic per event (seeded from its position).
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
  let emitted = [];
  let logs = [];
  let currentEventId = null;
  const MAX_LOG_LINES = 100;
  const MAX_LOG_CHARS = 4096;

  function handlerOnly(name) {
    if (!running) fail(name + "() may only be called from an event handler");
  }

  function streamArg(v, name) {
    if (typeof v !== "string" || v.trim() === "") fail(name + " must be a non-empty string");
    return v;
  }

  function metadataOf(metadata, name) {
    if (metadata === undefined || metadata === null) {
      return currentEventId === null ? null : jsonStringify({ $causedBy: currentEventId });
    }
    if (typeof metadata !== "object") fail(name + "(): metadata must be an object");
    const m = {};
    for (const k of Object.keys(metadata)) if (metadata[k] !== undefined) m[k] = metadata[k];
    if (currentEventId !== null && m.$causedBy === undefined) m.$causedBy = currentEventId;
    return jsonStringify(m);
  }

  global.emit = function (stream, eventType, body, metadata) {
    handlerOnly("emit");
    streamArg(stream, "emit(): streamId");
    streamArg(eventType, "emit(): eventName");
    if (body === null || typeof body !== "object") fail("emit(): eventBody must be an object");
    emitted.push([stream, eventType, jsonStringify(body), metadataOf(metadata, "emit"), true]);
  };
  global.linkTo = function (stream, event, metadata) {
    handlerOnly("linkTo");
    streamArg(stream, "linkTo(): streamId");
    if (event === null || typeof event !== "object") fail("linkTo(): event must be an event object");
    if (typeof event.sequenceNumber !== "number" || typeof event.streamId !== "string")
      fail("Invalid link to event " + event.sequenceNumber + "@" + event.streamId);
    emitted.push([stream, "$>", event.sequenceNumber + "@" + event.streamId, metadataOf(metadata, "linkTo"), false]);
  };
  global.linkStreamTo = function (stream, linkedStreamId, metadata) {
    handlerOnly("linkStreamTo");
    streamArg(stream, "linkStreamTo(): streamId");
    streamArg(linkedStreamId, "linkStreamTo(): linkedStreamId");
    emitted.push([stream, "$@", linkedStreamId, metadataOf(metadata, "linkStreamTo"), false]);
  };
  global.copyTo = function (stream, event, metadata) {
    handlerOnly("copyTo");
    streamArg(stream, "copyTo(): streamId");
    if (event === null || typeof event !== "object" || typeof event.eventType !== "string")
      fail("copyTo(): event must be an event object");
    const m = metadata === undefined ? event.metadataRaw || null : metadataOf(metadata, "copyTo");
    emitted.push([stream, event.eventType, event.bodyRaw === null ? "" : event.bodyRaw, m, event.isJson]);
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
  function Envelope(partition, streamId, sequenceNumber, eventType, bodyRaw, metadataRaw, linkMetadataRaw, isJson, category, eventId) {
    this.partition = partition;
    this.streamId = streamId;
    this.sequenceNumber = sequenceNumber;
    this.eventType = eventType;
    this.bodyRaw = bodyRaw;
    this.metadataRaw = metadataRaw;
    this.linkMetadataRaw = linkMetadataRaw;
    this.isJson = isJson;
    this.category = category;
    this.eventId = eventId;
  }
  function lazy(name, compute) {
    Object.defineProperty(Envelope.prototype, name, {
      get() {
        const v = compute(this);
        Object.defineProperty(this, name, { value: v, enumerable: true, writable: true, configurable: true });
        return v;
      },
      set(v) {
        Object.defineProperty(this, name, { value: v, enumerable: true, writable: true, configurable: true });
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
  function body(e) {
    return e.isJson && e.bodyRaw !== null ? jsonParse(e.bodyRaw) : undefined;
  }
  lazy("body", body);
  lazy("data", (e) => e.body);
  lazy("metadata", (e) => parseOrUndefined(e.metadataRaw));
  lazy("linkMetadata", (e) => parseOrUndefined(e.linkMetadataRaw));

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
    emitted = [];
    logs = [];
    clock = Math.floor(createdMicros / 1000);
    seed = (position ^ 0x9e3779b9) | 0 || 1;
    running = true;
  }
  function end() {
    running = false;
    currentEventId = null;
    clock = 0;
  }

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
    // The partition of an event: "" unpartitioned, null to skip it.
    partition(position, createdMicros, streamId, sequenceNumber, eventType, bodyRaw, metadataRaw, linkMetadataRaw, isJson, category, eventId) {
      if (def.byStream) return streamId;
      if (def.partitionBy === null) return "";
      begin(position, createdMicros);
      try {
        const e = new Envelope("", streamId, sequenceNumber, eventType, bodyRaw, metadataRaw, linkMetadataRaw, isJson, category, eventId);
        const p = def.partitionBy(e);
        if (typeof p === "string") return p;
        if (typeof p === "number") return String(p);
        return null;
      } finally {
        end();
      }
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
    // Handles one event; returns the events it emitted.
    handle(partition, created, position, createdMicros, streamId, sequenceNumber, eventType, bodyRaw, metadataRaw, linkMetadataRaw, isJson, category, eventId) {
      begin(position, createdMicros);
      currentEventId = eventId;
      try {
        const e = new Envelope(partition, streamId, sequenceNumber, eventType, bodyRaw, metadataRaw, linkMetadataRaw, isJson, category, eventId);
        let state = states.get(partition);
        if (created) {
          for (const h of def.created) h(def.biState ? [state, shared] : state, e);
        }
        let h = def.handlers[eventType];
        if (h === undefined) h = def.any;
        if (def.biState) {
          const pair = [state, shared];
          let r = h ? h(pair, e) : bodyRaw;
          if (r === undefined) r = pair;
          if (isArray(r)) {
            state = r[0];
            shared = r[1];
          } else {
            state = r;
          }
          sharedDirty = true;
        } else {
          const r = h ? h(state, e) : bodyRaw;
          if (r !== undefined) state = r;
        }
        states.set(partition, state);
        dirty.add(partition);
        const out = emitted;
        emitted = [];
        return out;
      } finally {
        end();
      }
    },
    // A stream of a `foreachStream()` projection was deleted (soft delete
    // or tombstone): KurrentDB calls `$deleted(state, null, partition,
    // isSoftDeleted)` (always false there) on the partition's state and
    // keeps that state (mutated in place; what the handler returns is not
    // used, as in KurrentDB's runtime).
    deleted(partition, position, createdMicros) {
      begin(position, createdMicros);
      try {
        if (def.deleted !== null) def.deleted.call(undefined, states.get(partition), null, partition, false);
        dirty.add(partition);
        const out = emitted;
        emitted = [];
        return out;
      } finally {
        end();
      }
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
