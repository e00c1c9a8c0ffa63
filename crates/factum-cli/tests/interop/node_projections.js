// Server-side projections of a running `factum serve`, driven by KurrentDB's
// Node clients (@kurrent/kurrentdb-client or @eventstore/db-client 6.x, from
// npm; see harness.js): create (emitting, tracked), state and result with
// partitions, statistics and the list, update, disable/enable/abort, reset,
// restart the subsystem, the system projections, delete, and the errors
// for unknown names and invalid queries (ADR 35, 39).
// Usage: node node_projections.js HOST:PORT [PACKAGE]
"use strict";
const { lib, assert, connect, name, run } = require("./harness");
const { jsonEvent } = lib;

const client = connect();
const WAIT = 10000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deposit = (stream, amount) => client.appendToStream(stream, [jsonEvent({ type: "Deposited", data: { amount } })]);

// Calls fn until it returns something truthy (errors count as not yet).
async function poll(what, fn) {
  const deadline = Date.now() + WAIT;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what} (last: ${last?.message ?? JSON.stringify(last)})`);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const stateIs = (p, want, partition) =>
  poll(`${p} ${partition ?? ""} = ${JSON.stringify(want)}`, async () =>
    same(await client.getProjectionState(p, partition ? { partition } : {}), want));
const status = async (p) => (await client.getProjectionStatus(p)).projectionStatus;

// Enabling answers before the runner has started (KurrentDB too: the
// projection passes through Preparing): wait up to 10 s for the status.
async function becomes(p, want) {
  let now;
  for (let i = 0; i < 200; i++) {
    now = await status(p);
    if (now === want) return now;
    await new Promise((r) => setTimeout(r, 50));
  }
  return now;
}

async function failsWith(promise, what) {
  try {
    await promise;
  } catch (e) {
    assert.ok(what.test(`${e?.constructor?.name}: ${e?.message}`), `expected ${what}, got ${e?.constructor?.name}: ${e?.message}`);
    return;
  }
  assert.fail(`expected a failure matching ${what}`);
}

const tests = {
  async partitionedLifecycle() {
    const category = name("acct").replace(/-/g, "");
    const [a, b] = [`${category}-a`, `${category}-b`];
    await deposit(a, 5);
    await deposit(b, 7);
    await deposit(a, 1);
    const p = name("balances");
    const query = `fromCategory('${category}').foreachStream().when({
      $init: () => ({ total: 0 }),
      Deposited: (s, e) => { s.total += e.body.amount; emit('${category}audit-' + e.sequenceNumber, 'Seen', {}); return s }
    }).transformBy((s) => ({ doubled: s.total * 2 })).outputState()`;
    await client.createProjection(p, query, { emitEnabled: true, trackEmittedStreams: true });
    await stateIs(p, { total: 6 }, a);
    await stateIs(p, { total: 7 }, b);
    assert.deepEqual(await client.getProjectionResult(p, { partition: a }), { doubled: 12 });

    const details = await client.getProjectionStatus(p);
    assert.equal(details.projectionStatus, "Running");
    assert.ok(details.eventsProcessedAfterRestart >= 3n, details.eventsProcessedAfterRestart);
    const listed = (await client.listProjections()).map((x) => x.name);
    assert.ok(listed.includes(p), listed);
    assert.ok(listed.includes("$by_category"), listed);

    await client.disableProjection(p);
    assert.equal(await becomes(p, "Stopped"), "Stopped");
    await deposit(a, 10);
    await client.enableProjection(p);
    await stateIs(p, { total: 16 }, a);
    await client.abortProjection(p);
    assert.equal(await becomes(p, "Stopped"), "Stopped");
    await client.resetProjection(p);
    await client.enableProjection(p);
    await stateIs(p, { total: 16 }, a);

    const counting = `fromCategory('${category}').when({ $init: () => ({ n: 0 }), $any: (s, e) => { s.n += 1; return s } })`;
    await client.updateProjection(p, counting, { emitEnabled: true });
    await client.resetProjection(p);
    await stateIs(p, { n: 4 });
    await client.restartSubsystem();
    await stateIs(p, { n: 4 });

    await client.disableProjection(p);
    await client.deleteProjection(p, { deleteEmittedStreams: true, deleteStateStream: true, deleteCheckpointStream: true });
    await failsWith(client.getProjectionStatus(p), /not ?found/i);
  },

  async systemProjections() {
    assert.equal(await status("$by_category"), "Running");
    await client.enableProjection("$by_correlation_id");
    assert.equal(await becomes("$by_correlation_id", "Running"), "Running");
    await client.disableProjection("$by_correlation_id");
    assert.equal(await becomes("$by_correlation_id", "Stopped"), "Stopped");
  },

  async errors() {
    await failsWith(client.getProjectionState(name("nope")), /not ?found/i);
    await failsWith(client.enableProjection(name("nope")), /not ?found/i);
    await failsWith(client.createProjection(name("bad"), "fromAll("), /invalid|argument|error/i);
    const p = name("taken");
    await client.createProjection(p, "fromAll().when({})");
    await failsWith(client.createProjection(p, "fromAll().when({})"), /exist|conflict/i);
    await client.disableProjection(p);
    await client.deleteProjection(p);
  },
};

run("projections", tests, client);
