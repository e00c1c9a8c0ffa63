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

const tests = {
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

  async softDeleteRecreateAsKurrentDB() {
    // KurrentDB's answers around a soft delete (ADR 26).
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
    assert.equal(e.actualVersion, 1n);
    // (This client cannot send a delete with STREAM_EXISTS; Python's does.)
    await rejects(client.appendToStream(s, ev("X"), { expectedRevision: STREAM_EXISTS }), StreamDeletedError);
    const r = await client.appendToStream(s, ev("C"), { expectedRevision: 1n });
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
    await client.appendToStream(n, [], { expectedRevision: ANY });
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
