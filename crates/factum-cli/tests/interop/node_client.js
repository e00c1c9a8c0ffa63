// Drives a running `factum serve` with KurrentDB's Node client
// (@eventstore/db-client, from npm): the client decides what is right.
// Usage: node node_client.js HOST:PORT   (server runs with --max-append-bytes 1048576)
"use strict";
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const {
  EventStoreDBClient, jsonEvent, binaryEvent, ANY, NO_STREAM, STREAM_EXISTS, START, END,
  FORWARDS, BACKWARDS, eventTypeFilter, streamNameFilter, excludeSystemEvents,
  WrongExpectedVersionError, StreamNotFoundError, StreamDeletedError, MaxAppendSizeExceededError,
  persistentSubscriptionToAllSettingsFromDefaults,
} = require("@eventstore/db-client");

const ADDR = process.argv[2];
const client = EventStoreDBClient.connectionString(`esdb://${ADDR}?tls=false`);
const name = (p) => `${p}-${crypto.randomUUID().slice(0, 10)}`;
const ev = (type, data = {}) => jsonEvent({ type, data });

async function rejects(promise, cls) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    return e;
  }
  assert.fail(`expected ${cls.name}`);
}

async function collect(iterable) {
  const out = [];
  for await (const e of iterable) out.push(e);
  return out;
}

/// The events `iterable` yields up to and including the one with id
/// `lastId`; a missing event fails after `ms` instead of hanging.
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
    const head = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 1 }));
    assert.equal(head.length, 0, "the store is empty");
    const zero = { commit: 0n, prepare: 0n };
    const fromZero = client.subscribeToAll({ fromPosition: zero });
    const fromStart = client.subscribeToAll({ fromPosition: START });
    const s = name("first");
    await client.appendToStream(s, [0, 1, 2].map((i) => ev(`First${i}`)), { expectedRevision: NO_STREAM });
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
    await client.appendToStream(s, [...Array(10).keys()].map((i) => ev(`Mid${tag}`, { i })), { expectedRevision: NO_STREAM });
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
    let r = await client.appendToStream(s, ev("Opened"), { expectedRevision: NO_STREAM });
    assert.equal(r.nextExpectedRevision, 0n);
    const e = await rejects(client.appendToStream(s, ev("X"), { expectedRevision: NO_STREAM }), WrongExpectedVersionError);
    assert.equal(e.actualVersion, 0n);
    r = await client.appendToStream(s, [ev("D"), ev("D")], { expectedRevision: 0n });
    assert.equal(r.nextExpectedRevision, 2n);
    await rejects(client.appendToStream(s, ev("X"), { expectedRevision: 0n }), WrongExpectedVersionError);
    await client.appendToStream(s, ev("W"), { expectedRevision: STREAM_EXISTS });
    await rejects(client.appendToStream(name("none"), ev("X"), { expectedRevision: STREAM_EXISTS }), WrongExpectedVersionError);
    r = await client.appendToStream(s, ev("C"), { expectedRevision: ANY });
    assert.equal(r.nextExpectedRevision, 4n);
    assert.ok(r.position.commit >= 4n);
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
    const noSystem = await take(excludeSystemEvents(), 3);
    assert.ok(noSystem.every((x) => !x.split("/")[1].startsWith("$")));
  },

  async catchUpThenLiveWithCheckpoints() {
    const tag = crypto.randomUUID().slice(0, 8);
    const s = name("sub");
    await client.appendToStream(s, ev("Before"));
    const sub = client.subscribeToStream(s, { fromRevision: START });
    const seen = [];
    let caughtUp = false;
    sub.on("caughtUp", () => { caughtUp = true; });
    for await (const e of sub) {
      seen.push(e.event.type);
      if (seen.length === 1) await client.appendToStream(s, ev("After"), { expectedRevision: 0n });
      if (seen.length === 2) break;
    }
    assert.deepEqual(seen, ["Before", "After"]);
    assert.ok(caughtUp, "caughtUp was emitted");

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

  async deleteTombstoneAndMetadata() {
    const s = name("del");
    await client.appendToStream(s, [ev("A"), ev("B")]);
    await rejects(client.deleteStream(s, { expectedRevision: 0n }), WrongExpectedVersionError);
    await client.deleteStream(s, { expectedRevision: 1n });
    await rejects(collect(client.readStream(s)), StreamNotFoundError);
    await client.appendToStream(s, ev("C"), { expectedRevision: NO_STREAM });
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
    await rejects(client.appendToStream(name("big"), binaryEvent({ type: "Big", data: Buffer.alloc(1536 * 1024) })), MaxAppendSizeExceededError);
    await assert.rejects(client.appendToStream("bad\u0000name", ev("X")));
    const s = name("after");
    await client.appendToStream(s, ev("Fine"), { expectedRevision: NO_STREAM });
    assert.equal((await collect(client.readStream(s))).length, 1);
  },

  async discover() {
    const c = EventStoreDBClient.connectionString(`esdb+discover://${ADDR}?tls=false`);
    const s = name("disc");
    await c.appendToStream(s, ev("Found"), { expectedRevision: NO_STREAM });
    assert.equal((await collect(c.readStream(s))).length, 1);
    await c.dispose();
  },
};

(async () => {
  let passed = 0, failed = 0;
  for (const [n, f] of Object.entries(tests)) {
    const t0 = Date.now();
    try {
      await f();
      passed++;
      console.log(`node ok   ${n} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`node FAIL ${n}: ${e?.stack ?? e}`);
    }
  }
  console.log(`node client: ${passed} passed, ${failed} failed`);
  await client.dispose();
  process.exit(failed ? 1 : 0);
})();
