// Multi-stream atomic appends (ADR 29) with the current Node SDK
// (@kurrent/kurrentdb-client 1.3): `multiStreamAppend` (AppendSession) and
// `appendRecords` (AppendRecords with consistency checks) of KurrentDB's v2
// StreamsService. The SDK uses them only when ServerFeatures lists them.
"use strict";
const { lib, assert, connect, name, rejects, collect, row, run } = require("./harness.js");
const { jsonEvent, WrongExpectedVersionError, StreamTombstonedError, AppendConsistencyViolationError } = lib;

const client = connect();
const ev = (type, data = {}) => jsonEvent({ type, data, metadata: { tenant: "acme" } });
const read = async (s) => collect(client.readStream(s));
const metadataOf = (e) => {
  const m = e.metadata;
  return m instanceof Uint8Array ? JSON.parse(Buffer.from(m).toString("utf8")) : m;
};

const tests = {
  async multiStreamAppendWritesAllStreams() {
    const [a, b] = [name("msa-a"), name("msa-b")];
    await client.appendToStream(a, ev("Seed"));
    const r = await client.multiStreamAppend([
      { streamName: a, expectedState: BigInt(0), events: [ev("A1", { n: 1 }), ev("A2", { n: 2 })] },
      { streamName: b, expectedState: "no_stream", events: [ev("B1", { n: 3 })] },
    ]);
    await row("answer: one revision per stream and the commit position", async () => {
      const revs = Object.fromEntries(r.responses.map((x) => [x.streamName, x.revision]));
      assert.deepEqual(revs, { [a]: 2n, [b]: 0n });
      assert.ok(r.position > 0n);
    });
    await row("v1 reads: events, types, data; properties and $schema.name as metadata", async () => {
      const ea = await read(a);
      assert.deepEqual(ea.map((e) => e.event.type), ["Seed", "A1", "A2"]);
      assert.deepEqual(ea[2].event.data, { n: 2 });
      const eb = await read(b);
      assert.equal(eb[0].event.revision, 0n);
      const m = metadataOf(eb[0].event);
      assert.equal(m.tenant, "acme");
      assert.equal(m["$schema.name"], "B1");
    });
    await row("one contiguous range in $all", async () => {
      const all = await collect(client.readAll({ direction: "backwards", fromPosition: "end", maxCount: 3 }));
      const mine = all.reverse().map((e) => e.event.streamId);
      assert.deepEqual(mine, [a, a, b]);
    });
  },

  async aConflictOnAnyStreamWritesNothing() {
    const [a, b] = [name("msc-a"), name("msc-b")];
    await client.appendToStream(a, ev("Seed"));
    const e = await rejects(
      client.multiStreamAppend([
        { streamName: b, expectedState: "no_stream", events: [ev("B1")] },
        { streamName: a, expectedState: BigInt(7), events: [ev("A1")] },
      ]),
      WrongExpectedVersionError,
    );
    await row("STREAM_REVISION_CONFLICT names the stream and its revisions", async () => {
      assert.equal(e.streamName, a);
      assert.equal(BigInt(e.expectedState ?? e.expectedVersion), 7n);
      assert.equal(BigInt(e.actualState ?? e.actualVersion), 0n);
    });
    await row("nothing written", async () => {
      assert.equal((await read(a)).length, 1);
      await assert.rejects(read(b));
    });
  },

  async tombstonedStreamInASession() {
    const t = name("mst");
    await client.appendToStream(t, ev("Seed"));
    await client.tombstoneStream(t);
    await rejects(
      client.multiStreamAppend([{ streamName: t, expectedState: "any", events: [ev("X")] }]),
      StreamTombstonedError,
    );
  },

  async appendRecordsWithChecks() {
    const [a, b, c] = [name("mar-a"), name("mar-b"), name("mar-c")];
    await client.appendToStream(c, ev("Decision"));
    const r = await client.appendRecords(
      [
        { streamName: a, record: ev("A1") },
        { streamName: b, record: ev("B1") },
        { streamName: a, record: ev("A2") },
      ],
      [{ streamName: c, expectedState: BigInt(0) }],
    );
    await row("interleaved records: revisions per stream", async () => {
      const revs = Object.fromEntries(r.responses.map((x) => [x.streamName, x.revision]));
      assert.deepEqual(revs, { [a]: 1n, [b]: 0n });
      assert.deepEqual((await read(a)).map((e) => e.event.type), ["A1", "A2"]);
    });
    const e = await rejects(
      client.appendRecords(
        [{ streamName: a, record: ev("A3") }],
        [
          { streamName: c, expectedState: BigInt(5) },
          { streamName: name("mar-none"), expectedState: "stream_exists" },
        ],
      ),
      AppendConsistencyViolationError,
    );
    await row("APPEND_CONSISTENCY_VIOLATION lists every failed check", async () => {
      const v = e.violations;
      assert.equal(v.length, 2);
      assert.deepEqual(v.map((x) => x.checkIndex), [0, 1]);
      assert.deepEqual(v.map((x) => x.actualState), [0n, "no_stream"]);
      assert.equal((await read(a)).length, 2);
    });
  },
};

run("multi-stream append", tests, client);
