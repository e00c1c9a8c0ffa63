// Persistent subscriptions (consumer groups) of a running `factum serve`,
// driven by KurrentDB's Node clients (@eventstore/db-client 6.x or
// @kurrent/kurrentdb-client, from npm; see harness.js): the client decides
// what is right.
// Usage: node node_persistent.js HOST:PORT [PACKAGE]
"use strict";
const { lib, assert, crypto, connect, name, rejects, collect, run } = require("./harness");
const {
  jsonEvent, START, END, ROUND_ROBIN, DISPATCH_TO_SINGLE, PINNED, UNBOUNDED,
  streamNameFilter, excludeSystemEvents,
  persistentSubscriptionToStreamSettingsFromDefaults, persistentSubscriptionToAllSettingsFromDefaults,
  PersistentSubscriptionExistsError, PersistentSubscriptionDoesNotExistError,
  PersistentSubscriptionMaximumSubscribersReachedError,
} = lib;

const client = connect();

const FAST = { checkPointAfter: 100, checkPointLowerBound: 1, checkPointUpperBound: 1000 };
const WAIT = 10000;
const ev = (type = "Happened") => jsonEvent({ type, data: {} });
const append = (s, n, type) => client.appendToStream(s, [...Array(n)].map(() => ev(type)));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const streamSettings = (changes) => persistentSubscriptionToStreamSettingsFromDefaults({ ...FAST, ...changes });
const allSettings = (changes) => persistentSubscriptionToAllSettingsFromDefaults({ ...FAST, ...changes });

// Calls fn until it returns something truthy.
async function poll(what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what} (last: ${inspect(last)})`);
}

const inspect = (x) => JSON.stringify(x, (_k, v) => (typeof v === "bigint" ? `${v}n` : v));

// A subscription whose events are queued, so reads can time out.
class Consumer {
  constructor(sub) {
    this.sub = sub;
    this.items = [];
    this.waiters = [];
    sub.on("data", (e) => this.push({ event: e }));
    sub.on("error", (error) => this.push({ error }));
    sub.on("end", () => this.push({ end: true }));
  }

  static stream(s, group, bufferSize = 10) {
    return new Consumer(client.subscribeToPersistentSubscriptionToStream(s, group, { bufferSize }));
  }

  static all(group, bufferSize = 10) {
    return new Consumer(client.subscribeToPersistentSubscriptionToAll(group, { bufferSize }));
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  take(timeout) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(done), 1);
        resolve(undefined);
      }, timeout);
      const done = (item) => { clearTimeout(timer); resolve(item); };
      this.waiters.push(done);
    });
  }

  async next(timeout = WAIT) {
    const item = await this.take(timeout);
    if (!item) assert.fail(`no event within ${timeout} ms`);
    if (!item.event) assert.fail(`the subscription ended: ${item.error?.constructor?.name}: ${item.error?.message ?? "end"}`);
    return item.event;
  }

  async nothingFor(ms) {
    const item = await this.take(ms);
    if (item) assert.fail(`unexpected ${item.event ? `event ${item.event.event?.revision}` : item.error?.message ?? "end"}`);
  }

  // Waits for the call to end; returns the error, if one ended it.
  async ended(timeout = WAIT) {
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
      const item = await this.take(deadline - Date.now());
      if (item && !item.event) return item.error;
    }
    assert.fail("the subscription did not end");
  }
}

const revision = (e) => e.event.revision;
const streamInfo = (s, g) => client.getPersistentSubscriptionToStreamInfo(s, g);
const allInfo = (g) => client.getPersistentSubscriptionToAllInfo(g);

// Acks travel asynchronously: wait until the group has nothing in flight.
const settled = (get) => poll("no events in flight", async () => {
  const i = await get();
  return i.stats.totalInFlightMessages === 0 && i;
});

const tests = {
  async createErrorsUpdateListDelete() {
    const s = name("orders");
    await append(s, 3);
    await client.createPersistentSubscriptionToStream(s, "g",
      streamSettings({ startFrom: START, consumerStrategyName: ROUND_ROBIN, maxSubscriberCount: 2 }));
    await rejects(client.createPersistentSubscriptionToStream(s, "g", streamSettings()), PersistentSubscriptionExistsError);
    const missing = await rejects(client.deletePersistentSubscriptionToStream(s, "nope"), PersistentSubscriptionDoesNotExistError);
    assert.equal(missing.groupName, "nope");
    await rejects(streamInfo(s, "nope"), PersistentSubscriptionDoesNotExistError);
    let i = await streamInfo(s, "g");
    assert.equal(i.groupName, "g");
    assert.equal(i.eventSource, s);
    assert.equal(i.settings.startFrom, START);
    assert.equal(i.settings.consumerStrategyName, ROUND_ROBIN);
    assert.equal(i.settings.maxSubscriberCount, 2);
    assert.equal(i.settings.checkPointAfter, 100);
    assert.equal(i.settings.checkPointLowerBound, 1);

    // Update: the client sends every setting (and the start in the
    // deprecated `revision` field, as for create).
    await client.updatePersistentSubscriptionToStream(s, "g",
      streamSettings({ startFrom: START, consumerStrategyName: PINNED, maxSubscriberCount: UNBOUNDED, messageTimeout: 5000, maxRetryCount: 4 }));
    i = await streamInfo(s, "g");
    assert.equal(i.settings.maxSubscriberCount, UNBOUNDED);
    assert.equal(i.settings.messageTimeout, 5000);
    assert.equal(i.settings.maxRetryCount, 4);
    assert.equal(i.settings.consumerStrategyName, PINNED);
    // DispatchToSingle travels as the enum's 0: it must not read as "unset".
    await client.updatePersistentSubscriptionToStream(s, "g", streamSettings({ startFrom: START, consumerStrategyName: DISPATCH_TO_SINGLE }));
    assert.equal((await streamInfo(s, "g")).settings.consumerStrategyName, DISPATCH_TO_SINGLE);
    await rejects(client.updatePersistentSubscriptionToStream(s, "nope", streamSettings()), PersistentSubscriptionDoesNotExistError);

    // List: all, and per stream.
    const other = name("other");
    await client.createPersistentSubscriptionToStream(other, "g2", streamSettings({ startFrom: END }));
    const everything = (await client.listAllPersistentSubscriptions()).map((x) => `${x.eventSource}/${x.groupName}`);
    assert.ok(everything.includes(`${s}/g`) && everything.includes(`${other}/g2`), inspect(everything));
    const mine = await client.listPersistentSubscriptionsToStream(s);
    assert.deepEqual(mine.map((x) => `${x.eventSource}/${x.groupName}`), [`${s}/g`]);
    assert.equal((await streamInfo(other, "g2")).settings.startFrom, END);

    // Delete; the group is gone everywhere.
    await client.deletePersistentSubscriptionToStream(s, "g");
    await client.deletePersistentSubscriptionToStream(other, "g2");
    await rejects(streamInfo(s, "g"), PersistentSubscriptionDoesNotExistError);
    await rejects(client.deletePersistentSubscriptionToStream(s, "g"), PersistentSubscriptionDoesNotExistError);
    await rejects(client.listPersistentSubscriptionsToStream(s), PersistentSubscriptionDoesNotExistError);
    const left = (await client.listAllPersistentSubscriptions()).map((x) => `${x.eventSource}/${x.groupName}`);
    assert.ok(!left.includes(`${s}/g`) && !left.includes(`${other}/g2`), inspect(left));
    // Reading a deleted group fails.
    const gone = Consumer.stream(s, "g");
    const err = await gone.ended();
    assert.ok(err instanceof PersistentSubscriptionDoesNotExistError, `${err?.constructor?.name}: ${err?.message}`);
  },

  async roundRobinTwoConsumersAndMaximum() {
    const s = name("jobs");
    await append(s, 20);
    await client.createPersistentSubscriptionToStream(s, "g",
      streamSettings({ startFrom: START, consumerStrategyName: ROUND_ROBIN, maxSubscriberCount: 2 }));
    const a = Consumer.stream(s, "g", 10);
    const b = Consumer.stream(s, "g", 10);
    // Each holds at most 10 unacked: the 20 events are shared, none twice.
    const got = { a: [], b: [] };
    for (let n = 0; n < 10; n++) got.a.push(await a.next());
    for (let n = 0; n < 10; n++) got.b.push(await b.next());
    const revs = [...got.a, ...got.b].map(revision).sort((x, y) => (x < y ? -1 : 1));
    assert.deepEqual(revs, [...Array(20).keys()].map(BigInt), "missing or duplicated events");
    await a.sub.ack(...got.a);
    await b.sub.ack(...got.b);
    let i = await settled(() => streamInfo(s, "g"));
    assert.equal(i.connections.length, 2);
    assert.ok(i.connections.every((c) => c.from), inspect(i.connections));

    // A third consumer is over the maximum of two.
    const third = Consumer.stream(s, "g");
    const refused = await third.ended();
    assert.ok(refused instanceof PersistentSubscriptionMaximumSubscribersReachedError,
      `${refused?.constructor?.name}: ${refused?.message}`);
    assert.equal(refused.groupName, "g");
    assert.equal(refused.streamName, s);

    // Live events go round robin: with both idle, 10 new ones split 5/5.
    await append(s, 10);
    const live = { a: [], b: [] };
    for (let n = 0; n < 5; n++) live.a.push(await a.next());
    for (let n = 0; n < 5; n++) live.b.push(await b.next());
    await a.nothingFor(300);
    await b.nothingFor(100);
    const liveRevs = [...live.a, ...live.b].map(revision).sort((x, y) => (x < y ? -1 : 1));
    assert.deepEqual(liveRevs, [...Array(10).keys()].map((n) => BigInt(n + 20)));
    await a.sub.ack(...live.a);
    await b.sub.ack(...live.b);
    await settled(() => streamInfo(s, "g"));
    await poll("checkpoint at 29", async () => (await streamInfo(s, "g")).stats.lastCheckpointedEventRevision === 29n);
    await a.sub.unsubscribe();
    await b.sub.unsubscribe();
    await poll("no connections after unsubscribe", async () => (await streamInfo(s, "g")).connections.length === 0);
    await client.deletePersistentSubscriptionToStream(s, "g");
  },

  async nackParkRetrySkipReplayAndStop() {
    const s = name("work");
    await append(s, 4);
    await client.createPersistentSubscriptionToStream(s, "g", streamSettings({ startFrom: START }));
    const a = Consumer.stream(s, "g", 10);
    const first = [];
    for (let n = 0; n < 4; n++) first.push(await a.next());
    assert.deepEqual(first.map(revision), [0n, 1n, 2n, 3n]);
    assert.deepEqual(first.map((e) => e.retryCount), [0, 0, 0, 0]);
    await a.sub.nack("park", "poison", first[0]);
    await a.sub.nack("retry", "later", first[1]);
    await a.sub.nack("skip", "not mine", first[2]);
    await a.sub.ack(first[3]);
    const again = await a.next();
    assert.equal(revision(again), 1n);
    assert.equal(again.retryCount, 1);
    assert.equal(again.event.id, first[1].event.id);
    await a.sub.ack(again);
    await a.nothingFor(300); // parked and skipped events do not come back by themselves

    // Info: one parked, the checkpoint past everything handled, our connection.
    const i = await poll("one parked event and the checkpoint at 3", async () => {
      const i = await streamInfo(s, "g");
      return i.stats.parkedMessageCount === 1n && i.stats.lastCheckpointedEventRevision === 3n && i;
    });
    assert.equal(i.connections.length, 1);
    assert.equal(i.stats.totalInFlightMessages, 0);
    assert.equal(i.stats.lastKnownEventRevision, 3n);

    // Replay the parked event: it is delivered again.
    await client.replayParkedMessagesToStream(s, "g");
    const replayed = await a.next();
    assert.equal(revision(replayed), 0n);
    assert.equal(replayed.event.id, first[0].event.id);
    await a.sub.ack(replayed);
    await poll("no parked events after the replay", async () => (await streamInfo(s, "g")).stats.parkedMessageCount === 0n);
    await rejects(client.replayParkedMessagesToStream(s, "nope"), PersistentSubscriptionDoesNotExistError);

    // Stop: the server ends the consumer's call; the event goes to the next.
    await append(s, 1);
    const e = await a.next();
    assert.equal(revision(e), 4n);
    await a.sub.nack("stop", "bye", e);
    await a.ended();
    await poll("no connections after a stop nack", async () => (await streamInfo(s, "g")).connections.length === 0);
    const b = Consumer.stream(s, "g");
    const redelivered = await b.next();
    assert.equal(revision(redelivered), 4n);
    await b.sub.ack(redelivered);
    await settled(() => streamInfo(s, "g"));
    await b.sub.unsubscribe();
    await client.deletePersistentSubscriptionToStream(s, "g");
  },

  async allWithFilter() {
    const tag = crypto.randomUUID().slice(0, 8);
    const mine = `pick${tag}-1`, mine2 = `pick${tag}-2`, noise = `skip${tag}-1`;
    await append(mine, 5);
    await append(noise, 5);
    await append(mine2, 2, "Other");
    const group = name("all");
    const filter = streamNameFilter({ prefixes: [`pick${tag}-`] });
    await client.createPersistentSubscriptionToAll(group, allSettings({ startFrom: START }), { filter });
    await rejects(client.createPersistentSubscriptionToAll(group, allSettings({ startFrom: START }), { filter }),
      PersistentSubscriptionExistsError);
    const c = Consumer.all(group, 50);
    const seen = [];
    for (let n = 0; n < 7; n++) seen.push(await c.next());
    const key = (e) => `${e.event.streamId}@${e.event.revision}`;
    assert.deepEqual(seen.map(key).sort(),
      [...[0, 1, 2, 3, 4].map((r) => `${mine}@${r}`), `${mine2}@0`, `${mine2}@1`].sort());
    await c.nothingFor(300);
    await c.sub.ack(...seen);
    const i = await settled(() => allInfo(group));
    assert.equal(i.eventSource, "$all");
    assert.equal(i.groupName, group);
    assert.equal(i.settings.startFrom, START);
    const last = seen.map((e) => e.event.position.commit).reduce((x, y) => (x > y ? x : y));
    // The checkpoint covers every matching event handled (a filtered group
    // may checkpoint further, at what it scanned).
    await poll(`an $all checkpoint at or past ${last}`, async () =>
      ((await allInfo(group)).stats.lastCheckpointedEventPosition?.commit ?? -1n) >= last);

    // Live events through the filter; park and replay on $all.
    await append(noise, 1);
    await append(mine, 1);
    const e = await c.next();
    assert.equal(key(e), `${mine}@5`);
    await c.sub.nack("park", "poison", e);
    await poll("one parked event on $all", async () => (await allInfo(group)).stats.parkedMessageCount === 1n);
    await client.replayParkedMessagesToAll(group);
    const again = await c.next();
    assert.equal(again.event.id, e.event.id);
    await c.sub.ack(again);
    await settled(() => allInfo(group));

    const listed = (await client.listPersistentSubscriptionsToAll()).map((x) => x.groupName);
    assert.ok(listed.includes(group), inspect(listed));
    const everything = (await client.listAllPersistentSubscriptions()).map((x) => `${x.eventSource}/${x.groupName}`);
    assert.ok(everything.includes(`$all/${group}`), inspect(everything));
    await c.sub.unsubscribe();
    await client.updatePersistentSubscriptionToAll(group, allSettings({ startFrom: START, maxRetryCount: 3 }));
    assert.equal((await allInfo(group)).settings.maxRetryCount, 3);
    await client.deletePersistentSubscriptionToAll(group);
    await rejects(allInfo(group), PersistentSubscriptionDoesNotExistError);
    await rejects(client.deletePersistentSubscriptionToAll(group), PersistentSubscriptionDoesNotExistError);
  },

  async allFromCommitPositionZero() {
    // 0 is the checkpoint a consumer stores before it has seen anything; in
    // KurrentDB no event is at 0, so a group started there sees the store's
    // first event.
    const [first] = await collect(client.readAll({ maxCount: 1 }));
    const group = name("all-zero");
    await client.createPersistentSubscriptionToAll(group, allSettings({ startFrom: { commit: 0n, prepare: 0n } }));
    const c = Consumer.all(group);
    try {
      const e = await c.next();
      await c.sub.ack(e);
      assert.equal(e.event.id, first.event.id, `first event at ${first.event.position.commit}, got ${e.event.position.commit}`);
    } finally {
      await c.sub.unsubscribe();
      await client.deletePersistentSubscriptionToAll(group);
    }
  },

  async allWithRegexFilterAndNoFilter() {
    // excludeSystemEvents() is the regex ^[^$].* on event types.
    const group = name("all-nosys");
    await client.createPersistentSubscriptionToAll(group, allSettings({ startFrom: END }), { filter: excludeSystemEvents() });
    const plain = name("all-plain");
    await client.createPersistentSubscriptionToAll(plain, allSettings({ startFrom: END }));
    const c = Consumer.all(group);
    const p = Consumer.all(plain);
    await sleep(200); // let both groups settle at the end before appending
    const tag = crypto.randomUUID().slice(0, 8);
    await client.appendToStream(`sys${tag}`, jsonEvent({ type: "$System", data: {} }));
    await client.appendToStream(`user${tag}`, ev(`User${tag}`));
    // Other clients may append too: read until ours, no system event on the way.
    const filtered = [];
    while (!filtered.includes(`User${tag}`)) {
      const x = await c.next();
      filtered.push(x.event.type);
      await c.sub.ack(x);
    }
    assert.ok(filtered.every((t) => !t.startsWith("$")), `a system event came through: ${inspect(filtered)}`);
    // Without a filter the group sees both.
    const types = [];
    while (!types.includes(`User${tag}`)) {
      const x = await p.next();
      types.push(x.event.type);
      await p.sub.ack(x);
    }
    assert.ok(types.includes("$System"), inspect(types));
    await c.sub.unsubscribe();
    await p.sub.unsubscribe();
    await client.deletePersistentSubscriptionToAll(group);
    await client.deletePersistentSubscriptionToAll(plain);
  },

  async restartSubsystem() {
    const s = name("restart");
    await append(s, 1);
    await client.createPersistentSubscriptionToStream(s, "g", streamSettings({ startFrom: START }));
    const a = Consumer.stream(s, "g");
    const e = await a.next();
    await a.sub.ack(e);
    await settled(() => streamInfo(s, "g"));
    await client.restartPersistentSubscriptionSubsystem();
    // The group survives a restart; its consumers are dropped.
    await a.ended();
    const b = Consumer.stream(s, "g");
    await append(s, 1);
    assert.equal(revision(await b.next()), 1n);
    await b.sub.unsubscribe();
    await client.deletePersistentSubscriptionToStream(s, "g");
  },

  async serverFeaturesCoverEveryMethod() {
    // The client checks ServerFeatures for "stream"/"all" before each of
    // these and would fall back to KurrentDB's HTTP API without them.
    const s = name("features");
    await client.createPersistentSubscriptionToStream(s, "g", streamSettings({ startFrom: START }));
    const group = name("all-features");
    await client.createPersistentSubscriptionToAll(group, allSettings({ startFrom: END }));
    assert.equal((await client.getPersistentSubscriptionToStreamInfo(s, "g")).groupName, "g");
    assert.equal((await client.getPersistentSubscriptionToAllInfo(group)).groupName, group);
    assert.equal((await client.listPersistentSubscriptionsToStream(s)).length, 1);
    assert.ok((await client.listPersistentSubscriptionsToAll()).some((x) => x.groupName === group));
    await client.replayParkedMessagesToStream(s, "g");
    await client.replayParkedMessagesToAll(group);
    await client.deletePersistentSubscriptionToStream(s, "g");
    await client.deletePersistentSubscriptionToAll(group);
  },
};

run("persistent", tests, client);
