// Drives a running `factum serve` with KurrentDB's Node clients
// (@eventstore/db-client 6.x or @kurrent/kurrentdb-client, from npm; see
// harness.js): the client decides what is right.
// Usage: node node_client.js HOST:PORT [PACKAGE]   (server runs with --max-append-bytes 1048576)
"use strict";
const {
  lib, CA, READ_FILTERS, assert, crypto, connect, name, rejects, collect, knownGap, row, run, appendAt, actual,
} = require("./harness");
const {
  jsonEvent, binaryEvent, ANY, NO_STREAM, STREAM_EXISTS, START, END,
  FORWARDS, BACKWARDS, eventTypeFilter, streamNameFilter, excludeSystemEvents,
  WrongExpectedVersionError, StreamNotFoundError, StreamDeletedError, MaxAppendSizeExceededError,
  persistentSubscriptionToAllSettingsFromDefaults,
} = lib;

const client = connect();
const ev = (type, data = {}) => jsonEvent({ type, data });

// The events `iterable` yields up to and including the one with id
// `lastId`; a missing event fails after `ms` instead of hanging.
async function takeUntil(iterable, lastId, ms = 10000) {
  const got = [];
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${lastId} not delivered within ${ms} ms; got ${JSON.stringify(got)}`)), ms);
  });
  const read = (async () => {
    for await (const e of iterable) {
      got.push(e);
      if (e.event.id === lastId) return got;
    }
    throw new Error(`the subscription ended; got ${JSON.stringify(got)}`);
  })();
  try {
    return await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const ids = (events) => events.map((e) => e.event.id);

const tests = {
  // First, while the store is empty (the tests run in this order). The
  // first event of a store is at commit position 1: this client takes 0
  // for "before everything", so "the current position, then subscribe
  // from it" and "from the stored checkpoint, 0 at first" must deliver
  // the first event (issue 13.1); the same for a $all group started at 0.
  async positionsOnAnEmptyStore() {
    // A secure store is never empty: its first start writes the users.
    if (CA) return;
    const head = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 1 }));
    assert.equal(head.length, 0, "the store is empty");
    const zero = { commit: 0n, prepare: 0n };
    const fromZero = client.subscribeToAll({ fromPosition: zero });
    const fromStart = client.subscribeToAll({ fromPosition: START });
    const s = name("first");
    await client.appendToStream(s, [0, 1, 2].map((i) => ev(`First${i}`)), appendAt(NO_STREAM));
    const written = await collect(client.readAll({ fromPosition: START }));
    assert.deepEqual(written.map((e) => e.event.streamId), [s, s, s]);
    assert.deepEqual(written.map((e) => e.event.position.commit), [1n, 2n, 3n]);
    const want = ids(written);
    for (const [what, sub] of [["from commit position 0", fromZero], ["from START", fromStart]]) {
      const got = await takeUntil(sub, want[2]);
      await sub.unsubscribe();
      assert.deepEqual(ids(got), want, what);
    }
    assert.deepEqual(ids(await collect(client.readAll({ fromPosition: zero }))), want, "readAll from 0");
    const group = name("from0");
    await client.createPersistentSubscriptionToAll(group,
      persistentSubscriptionToAllSettingsFromDefaults({ startFrom: zero }));
    const sub = client.subscribeToPersistentSubscriptionToAll(group);
    const got = await takeUntil(sub, want[2]);
    await sub.ack(...got);
    await sub.unsubscribe();
    assert.deepEqual(ids(got), want, "$all group from 0");
  },

  // A subscriber stores the position of the last event it handled and
  // resumes from it: every event exactly once.
  async resumeFromACheckpointTakenMidStream() {
    const tag = crypto.randomUUID().slice(0, 8);
    const s = name("mid");
    await client.appendToStream(s, [...Array(10).keys()].map((i) => ev(`Mid${tag}`, { i })), appendAt(NO_STREAM));
    const want = ids(await collect(client.readStream(s)));
    const filter = eventTypeFilter({ prefixes: [`Mid${tag}`] });
    let sub = client.subscribeToAll({ fromPosition: START, filter });
    const first = await takeUntil(sub, want[4]);
    await sub.unsubscribe();
    const checkpoint = first[first.length - 1].event.position;
    sub = client.subscribeToAll({ fromPosition: checkpoint, filter });
    const rest = await takeUntil(sub, want[9]);
    await sub.unsubscribe();
    assert.deepEqual([...ids(first), ...ids(rest)], want);
  },

  async expectedRevisionFormsAndConflicts() {
    const s = name("acct");
    let r = await client.appendToStream(s, ev("Opened"), appendAt(NO_STREAM));
    assert.equal(r.nextExpectedRevision, 0n);
    const e = await rejects(client.appendToStream(s, ev("X"), appendAt(NO_STREAM)), WrongExpectedVersionError);
    assert.equal(actual(e), 0n);
    r = await client.appendToStream(s, [ev("D"), ev("D")], appendAt(0n));
    assert.equal(r.nextExpectedRevision, 2n);
    await rejects(client.appendToStream(s, ev("X"), appendAt(0n)), WrongExpectedVersionError);
    await client.appendToStream(s, ev("W"), appendAt(STREAM_EXISTS));
    await rejects(client.appendToStream(name("none"), ev("X"), appendAt(STREAM_EXISTS)), WrongExpectedVersionError);
    r = await client.appendToStream(s, ev("C"), appendAt(ANY));
    assert.equal(r.nextExpectedRevision, 4n);
    assert.ok(r.position.commit >= 4n);
    const wrong = await rejects(client.appendToStream(s, ev("X"), appendAt(1n)), WrongExpectedVersionError);
    assert.equal(actual(wrong), 4n);
        // The same check guards deletes, tombstones and metadata.
    await rejects(client.deleteStream(s, { expectedRevision: 3n }), WrongExpectedVersionError);
    await rejects(client.tombstoneStream(s, { expectedRevision: NO_STREAM }), WrongExpectedVersionError);
    await rejects(client.setStreamMetadata(s, {}, appendAt(0n)), WrongExpectedVersionError);
    assert.equal((await collect(client.readStream(s))).length, 5);
  },

  async readForwardsAndBackwards() {
    const s = name("rd");
    await client.appendToStream(s, [...Array(10).keys()].map((i) => ev(`E${i}`, { i })));
    const fwd = await collect(client.readStream(s));
    assert.deepEqual(fwd.map((e) => e.event.revision), [...Array(10).keys()].map(BigInt));
    assert.equal(fwd[3].event.data.i, 3);
    assert.ok(fwd[3].event.created instanceof Date || typeof fwd[3].event.created === "number");
    const bwd = await collect(client.readStream(s, { direction: BACKWARDS, fromRevision: END, maxCount: 3 }));
    assert.deepEqual(bwd.map((e) => e.event.type), ["E9", "E8", "E7"]);
    const from = await collect(client.readStream(s, { fromRevision: 5n, maxCount: 2 }));
    assert.deepEqual(from.map((e) => e.event.type), ["E5", "E6"]);
    await rejects(collect(client.readStream(name("unknown"))), StreamNotFoundError);
  },

  async readAllAndFilteredSubscriptions() {
    // This client version sends no filter on reads (readAll ignores
    // `filter`), so server-side filters are exercised through subscriptions.
    const tag = crypto.randomUUID().slice(0, 8);
    const from = (await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 1 })))[0].event.position;
    await client.appendToStream(`flt${tag}-1`, [ev(`Alpha${tag}`), ev(`Beta${tag}`)]);
    await client.appendToStream(`other${tag}-1`, ev(`Alpha${tag}`));
    const fwd = await collect(client.readAll({ fromPosition: from, maxCount: 4 }));
    assert.deepEqual(fwd.slice(1).map((e) => e.event.type), [`Alpha${tag}`, `Beta${tag}`, `Alpha${tag}`]);
    const back = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 2 }));
    assert.ok(back[0].event.position.commit > back[1].event.position.commit);
    const take = async (filter, n) => {
      const sub = client.subscribeToAll({ fromPosition: from, filter });
      const got = [];
      for await (const e of sub) {
        got.push(`${e.event.streamId}/${e.event.type}`);
        if (got.length === n) break;
      }
      await sub.unsubscribe();
      return got;
    };
    assert.deepEqual(await take(eventTypeFilter({ prefixes: [`Alpha${tag}`] }), 2),
      [`flt${tag}-1/Alpha${tag}`, `other${tag}-1/Alpha${tag}`]);
    assert.deepEqual(await take(streamNameFilter({ regex: `^other${tag}` }), 1), [`other${tag}-1/Alpha${tag}`]);
    assert.deepEqual(await take(eventTypeFilter({ regex: `^(Al|Be)[a-z]+${tag}$` }), 3),
      [`flt${tag}-1/Alpha${tag}`, `flt${tag}-1/Beta${tag}`, `other${tag}-1/Alpha${tag}`]);
    assert.deepEqual(await take(streamNameFilter({ prefixes: [`flt${tag}`] }), 2),
      [`flt${tag}-1/Alpha${tag}`, `flt${tag}-1/Beta${tag}`]);
    const noSystem = await take(excludeSystemEvents(), 3);
    assert.ok(noSystem.every((x) => !x.split("/")[1].startsWith("$")));
    if (READ_FILTERS) {
      const read = async (filter, maxCount) => (await collect(client.readAll({ fromPosition: from, filter, maxCount })))
        .map((e) => `${e.event.streamId}/${e.event.type}`);
      assert.deepEqual(await read(eventTypeFilter({ regex: `^Al.ha${tag}$` })),
        [`flt${tag}-1/Alpha${tag}`, `other${tag}-1/Alpha${tag}`]);
      assert.deepEqual(await read(streamNameFilter({ prefixes: [`flt${tag}`] })),
        [`flt${tag}-1/Alpha${tag}`, `flt${tag}-1/Beta${tag}`]);
      assert.deepEqual(await read(streamNameFilter({ regex: `^other${tag}` })), [`other${tag}-1/Alpha${tag}`]);
      assert.deepEqual(await read(eventTypeFilter({ prefixes: [`Alpha${tag}`, `Beta${tag}`] }), 1), [`flt${tag}-1/Alpha${tag}`]);
    }
  },

  async catchUpThenLiveWithCheckpoints() {
    const tag = crypto.randomUUID().slice(0, 8);
    const s = name("sub");
    await client.appendToStream(s, ev("Before"));
    const sub = client.subscribeToStream(s, { fromRevision: START });
    const seen = [];
    // Appended once the subscription has caught up, so it arrives live.
    const caughtUp = new Promise((resolve) => sub.once("caughtUp", resolve));
    for await (const e of sub) {
      seen.push(e.event.type);
      if (seen.length === 1) {
        await caughtUp;
        await client.appendToStream(s, ev("After"), appendAt(0n));
      }
      if (seen.length === 2) break;
    }
    assert.deepEqual(seen, ["Before", "After"]);

    const checkpoints = [];
    await client.appendToStream(name("noise"), [...Array(40).keys()].map(() => ev("Noise")));
    const all = client.subscribeToAll({
      fromPosition: START,
      filter: eventTypeFilter({ prefixes: [`Hit${tag}`], checkpointInterval: 2, maxSearchWindow: 5,
        checkpointReached: (_s, p) => { checkpoints.push(p); } }),
    });
    await client.appendToStream(name("hit"), ev(`Hit${tag}`));
    for await (const e of all) {
      assert.equal(e.event.type, `Hit${tag}`);
      break;
    }
    await all.unsubscribe();
    assert.ok(checkpoints.length >= 1, `checkpoints: ${checkpoints.length}`);
  },

  async catchUpFromTheStartAndFromACheckpoint() {
    const s = name("ckpt");
    await client.appendToStream(s, [...Array(5).keys()].map((i) => ev(`E${i}`)), appendAt(NO_STREAM));
    const recorded = await collect(client.readStream(s));
    // The next n events of a subscription; `then` runs after the first.
    const take = async (sub, n, then) => {
      const got = [];
      for await (const e of sub) {
        got.push(e);
        if (got.length === 1 && then) await then();
        if (got.length === n) break;
      }
      await sub.unsubscribe();
      return got;
    };
    // From a checkpoint in $all (exclusive): the events after it, each
    // once, then a live one.
    const sub = client.subscribeToAll({ fromPosition: recorded[2].event.position, filter: streamNameFilter({ prefixes: [s] }) });
    const got = await take(sub, 3, () => client.appendToStream(s, ev("E5"), appendAt(4n)));
    assert.deepEqual(got.map((e) => e.event.type), ["E3", "E4", "E5"]);
    // From a checkpoint in the stream (exclusive).
    const inStream = await take(client.subscribeToStream(s, { fromRevision: 2n }), 3);
    assert.deepEqual(inStream.map((e) => e.event.revision), [3n, 4n, 5n]);
    // From the start of $all: the store's first event first.
    const [first] = await collect(client.readAll({ maxCount: 1 }));
    const [fromStart] = await take(client.subscribeToAll({ fromPosition: START }), 1);
    assert.equal(fromStart.event.id, first.event.id);
    // From commit position 0, the checkpoint clients store before they have
    // seen anything: in KurrentDB no event is at 0, so the first comes too.
    await row("position-0: subscribeToAll from { commit: 0, prepare: 0 } delivers the first event", async () => {
      const [fromZero] = await take(client.subscribeToAll({ fromPosition: { commit: 0n, prepare: 0n } }), 1);
      assert.equal(fromZero.event.id, first.event.id,
        `first event at ${first.event.position.commit}, got ${fromZero.event.position.commit}`);
    });
  },

  async softDeleteAndRecreateAsKurrentDB() {
    // A stream with revisions 0..1, soft-deleted with expected revision 1;
    // each row of KurrentDB's rules on a stream of its own.
    const deleted = async () => {
      const s = name("soft");
      await client.appendToStream(s, [ev("A"), ev("B")], appendAt(NO_STREAM));
      await client.deleteStream(s, { expectedRevision: 1n });
      return s;
    };
    const revisions = async (s) => (await collect(client.readStream(s))).map((e) => e.event.revision);
    let s = await deleted();
    await rejects(collect(client.readStream(s)), StreamNotFoundError);
    await client.appendToStream(s, ev("C"), appendAt(NO_STREAM));
    assert.deepEqual(await revisions(s), [2n]);
    s = await deleted();
    await client.appendToStream(s, ev("C"), appendAt(ANY));
    assert.deepEqual(await revisions(s), [2n]);

    const MAX = 9223372036854775807; // i64::MAX as JSON.parse reads it
    await row("soft-delete: metadata right after the delete is $tb = i64::MAX", async () => {
      const md = await client.getStreamMetadata(await deleted());
      assert.equal(md.metadata?.truncateBefore, MAX);
    });
    await row("soft-delete: deleting again with the last revision succeeds", async () => {
      await client.deleteStream(await deleted(), { expectedRevision: 1n });
    });
    await row("soft-delete: deleting again with an older revision is WrongExpectedVersion", async () => {
      const e = await rejects(client.deleteStream(await deleted(), { expectedRevision: 0n }), WrongExpectedVersionError);
      assert.equal(actual(e), 1n);
    });
    // Deleting with STREAM_EXISTS is checked from Python only: both Node
    // clients fail to serialize that request ("Cannot read properties of
    // null (reading 'lo')") before it leaves.
    await row("soft-delete: appending with 'exists' is StreamDeleted", async () => {
      await rejects(client.appendToStream(await deleted(), ev("C"), appendAt(STREAM_EXISTS)), StreamDeletedError);
    });
    await row("soft-delete: appending with the last revision recreates the stream, $tb moves", async () => {
      const d = await deleted();
      await client.appendToStream(d, ev("C"), appendAt(1n));
      assert.deepEqual(await revisions(d), [2n]);
      assert.equal((await client.getStreamMetadata(d)).metadata?.truncateBefore, 2);
    });
    // A user's own $tb = i64::MAX is checked from Python only: JavaScript
    // numbers cannot write i64::MAX exactly.
  },

  async deleteTombstoneAndMetadata() {
    const s = name("del");
    await client.appendToStream(s, [ev("A"), ev("B")]);
    await rejects(client.deleteStream(s, { expectedRevision: 0n }), WrongExpectedVersionError);
    await client.deleteStream(s, { expectedRevision: 1n });
    await rejects(collect(client.readStream(s)), StreamNotFoundError);
    await client.appendToStream(s, ev("C"), appendAt(NO_STREAM));
    await client.tombstoneStream(s);
    await rejects(collect(client.readStream(s)), StreamDeletedError);
    await rejects(client.appendToStream(s, ev("D")), StreamDeletedError);

    const m = name("meta");
    await client.appendToStream(m, [...Array(5).keys()].map((i) => ev(`E${i}`)));
    await client.setStreamMetadata(m, { maxCount: 2, owner: "ops" });
    const md = await client.getStreamMetadata(m);
    assert.equal(md.metadata.maxCount, 2);
    assert.equal(md.metadata.owner, "ops");
    const left = await collect(client.readStream(m));
    assert.deepEqual(left.map((e) => e.event.type), ["E3", "E4"]);
  },

  async softDeleteVersionsAllOrderAndEmptyAppendRecreate() {
    // KurrentDB's answers around a soft delete (ADR 26): metadata versions,
    // the server's own $metadata event in $all, an empty append recreating.
    const s = name("sdel");
    await client.appendToStream(s, [ev("A"), ev("B")]);
    await client.deleteStream(s, { expectedRevision: 1n });
    let md = await client.getStreamMetadata(s);
    // This client parses metadata JSON into JavaScript numbers (doubles).
    assert.equal(Number(md.metadata.truncateBefore), Number(2n ** 63n - 1n));
    // (`metastreamRevision` is the commit position in this client: the
    // revisions of `$$<stream>` are read below.)
    await client.deleteStream(s, { expectedRevision: 1n });
    const e = await rejects(client.deleteStream(s, { expectedRevision: 0n }), WrongExpectedVersionError);
    assert.equal(actual(e), 1n);
    // (This client cannot send a delete with STREAM_EXISTS; Python's does.)
    await rejects(client.appendToStream(s, ev("X"), appendAt(STREAM_EXISTS)), StreamDeletedError);
    const r = await client.appendToStream(s, ev("C"), appendAt(1n));
    assert.equal(r.nextExpectedRevision, 2n);
    md = await client.getStreamMetadata(s);
    assert.equal(Number(md.metadata.truncateBefore), 2);
    const metas = await collect(client.readStream(`$$${s}`));
    assert.deepEqual(metas.map((x) => x.event.revision), [0n, 1n, 2n]);
    const tail = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 2 }));
    assert.deepEqual(tail.reverse().map((x) => [x.event.streamId, x.event.type]), [[s, "C"], [`$$${s}`, "$metadata"]]);

    // An empty append recreates too.
    const n = name("sdel");
    await client.appendToStream(n, [ev("A"), ev("B")]);
    await client.deleteStream(n);
    await client.appendToStream(n, [], appendAt(ANY));
    md = await client.getStreamMetadata(n);
    assert.equal(Number(md.metadata.truncateBefore), 2);
    assert.deepEqual(await collect(client.readStream(n)), []);
  },

  async linkStreams() {
    const cat = "cat" + crypto.randomUUID().slice(0, 8).replace(/-/g, "");
    await client.appendToStream(`${cat}-1`, ev("One"));
    await client.appendToStream(`${cat}-2`, ev("Two"));
    const raw = await collect(client.readStream(`$ce-${cat}`));
    assert.deepEqual(raw.map((e) => e.event.type), ["$>", "$>"]);
    const resolved = await collect(client.readStream(`$ce-${cat}`, { resolveLinkTos: true }));
    assert.deepEqual(resolved.map((e) => e.event.streamId), [`${cat}-1`, `${cat}-2`]);
    assert.equal(resolved[1].link.streamId, `$ce-${cat}`);
    assert.equal(resolved[1].link.revision, 1n);
    const et = await collect(client.readStream(`$et-Two`, { resolveLinkTos: true, direction: BACKWARDS, fromRevision: END, maxCount: 1 }));
    assert.equal(et[0].event.streamId, `${cat}-2`);
  },

  async badInputKeepsServing() {
    // Over the server's append limit (1 MiB), in two events or one (which
    // the server refuses unread): KurrentDB's error, the client's own type.
    const big = (kib) => binaryEvent({ type: "Big", data: Buffer.alloc(kib * 1024) });
    for (const events of [[big(700), big(700)], [big(1536)], [big(3072)]]) {
      const s = name("big");
      await rejects(client.appendToStream(s, events), MaxAppendSizeExceededError);
      await rejects(collect(client.readStream(s)), StreamNotFoundError);
    }
    // Invalid names: the server answers INVALID_ARGUMENT with a reason.
    for (const bad of ["bad\u0000name", ""]) {
      await assert.rejects(client.appendToStream(bad, ev("X")), /stream name|control character/);
    }
    const s = name("after");
    await client.appendToStream(s, ev("Fine"), appendAt(NO_STREAM));
    assert.equal((await collect(client.readStream(s))).length, 1);
  },

  async discover() {
    const c = connect(true);
    const s = name("disc");
    await c.appendToStream(s, ev("Found"), appendAt(NO_STREAM));
    assert.equal((await collect(c.readStream(s))).length, 1);
    await c.dispose();
  },
};

run("client", tests, client);
