// What the Node interop scripts share: which official client they drive, the
// few names in which its releases differ, and how results are reported.
//
// Usage of a script: node SCRIPT.js HOST:PORT [PACKAGE]
// PACKAGE is `@eventstore/db-client` (6.x, the default) or
// `@kurrent/kurrentdb-client` (the current SDK); one script serves both.
//
// A check that fails because of a known server gap is wrapped in
// `knownGap("label: what", async () => …)`: it still runs, prints GAP instead
// of failing, and prints FIXED once the server behaves (then drop the
// wrapper). Labels in use: "position-0" (the first event is at commit
// position 0, which clients treat as "before everything") and "soft-delete"
// (KurrentDB's soft-delete rules); both are fixed (ADR 25, 26) and run as rows.
"use strict";
const assert = require("node:assert/strict");
const crypto = require("node:crypto");

const ADDR = process.argv[2];
const PACKAGE = process.argv[3] ?? "@eventstore/db-client";
const lib = require(PACKAGE);
// The client class was renamed with the package; the rest is the same API.
const Client = lib.KurrentDBClient ?? lib.EventStoreDBClient;
// The current SDK reads through its Rust core, which sends read filters;
// 6.x's readAll drops them.
const READ_FILTERS = Boolean(lib.KurrentDBClient);
const LABEL = PACKAGE.split("/")[1];
// The current SDK renamed what it could: its scheme (esdb:// still works,
// with a warning), the append's expectation (`streamState`; deletes keep
// `expectedRevision`) and the conflict's fields (`actualState`).
const SCHEME = lib.KurrentDBClient ? "kurrentdb" : "esdb";
const appendAt = (expected) => (lib.KurrentDBClient ? { streamState: expected } : { expectedRevision: expected });
const actual = (wrongExpectedVersion) => wrongExpectedVersion.actualState ?? wrongExpectedVersion.actualVersion;

// Set for a secure server (`factum serve --dev`): the development CA;
// scripts then connect over TLS trusting it, as admin.
const CA = process.env.FACTUM_INTEROP_CA;
const connect = (discover = false) =>
  Client.connectionString(
    CA
      ? `${SCHEME}${discover ? "+discover" : ""}://admin:changeit@${ADDR}?tls=true&tlsCAFile=${CA}`
      : `${SCHEME}${discover ? "+discover" : ""}://${ADDR}?tls=false`,
  );
const name = (p) => `${p}-${crypto.randomUUID().slice(0, 10)}`;
const gaps = [];

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

// A named check that must pass: a failure names the row.
async function row(label, check) {
  try {
    await check();
  } catch (e) {
    throw new Error(`${label}: ${e?.constructor?.name}: ${e?.message}`, { cause: e });
  }
}

async function knownGap(reason, check) {
  try {
    await check();
  } catch (e) {
    gaps.push(reason);
    console.log(`${LABEL} GAP  ${reason}: ${e?.constructor?.name}: ${String(e?.message).split("\n").slice(0, 3).join(" | ")}`);
    return;
  }
  console.log(`${LABEL} FIXED known gap now passes, remove the marker: ${reason}`);
}

// Runs every test in order, prints a summary and exits.
async function run(what, tests, client) {
  let passed = 0, failed = 0;
  for (const [n, f] of Object.entries(tests)) {
    const t0 = Date.now();
    try {
      await f();
      passed++;
      console.log(`${LABEL} ok   ${n} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`${LABEL} FAIL ${n}: ${e?.stack ?? e}`);
    }
  }
  for (const g of gaps) console.log(`${LABEL} known gap: ${g}`);
  console.log(`${LABEL} ${what}: ${passed} passed, ${failed} failed, ${gaps.length} known gaps`);
  await client.dispose();
  process.exit(failed ? 1 : 0);
}

module.exports = {
  lib, ADDR, CA, PACKAGE, READ_FILTERS, assert, crypto, connect, name, rejects, collect, knownGap, row, run, appendAt, actual,
};
