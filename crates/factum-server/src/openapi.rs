//! The OpenAPI 3.1 document of the HTTP routes in `http.rs` (served at
//! `/openapi.json`; a test checks every documented path is routed).

use serde_json::{json, Value};

fn stream_param() -> Value {
    json!({ "name": "stream", "in": "path", "required": true,
            "description": "Stream name; `$all` for the global log (reads and subscriptions only).",
            "schema": { "type": "string" } })
}

fn expected_param() -> Value {
    json!({ "name": crate::http_headers::EXPECTED_HEADER, "in": "header", "required": false,
            "description": "Expected revision: `any` (default), `no-stream`, `exists` or a revision number.",
            "schema": { "type": "string" } })
}

fn error_response(description: &str) -> Value {
    json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

/// Why a write answers 403 (`factum_core::managed`).
const PROTECTED: &str = "A stream Factum manages (`$persistentSubscriptionConfig`, `$persistentsubscription-…` and their `$$` metadata): `error` is `access-denied`; it changes only through its subsystem's operations";

/// The document.
pub fn document() -> Value {
    let mut doc = paths_and_schemas();
    if let (Some(paths), Value::Object(more)) = (doc["paths"].as_object_mut(), scavenge_paths()) {
        paths.extend(more);
    }
    doc
}

/// The scavenge routes (ADR 33), apart: one `json!` of everything passes
/// the macro's recursion limit.
fn scavenge_paths() -> Value {
    json!({
        "/admin/scavenge": { "post": { "summary": "Starts a scavenge ($ops/$admins; ADR 33): removes events no read can see; progress and result in $scavenges-<id>",
            "parameters": [
                { "name": "throttlePercent", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 100 } },
                { "name": "threshold", "in": "query", "schema": { "type": "integer" }, "description": "rewrite a segment only when it frees at least this percentage" },
                { "name": "startFromChunk", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                { "name": "threads", "in": "query", "schema": { "type": "integer" }, "description": "accepted; one segment at a time" } ],
            "responses": { "200": { "description": "{scavengeId, scavengeLink}" }, "400": { "description": "Bad parameters, or one is running (scavengeId)" },
                           "501": { "description": "Not the embedded engine" } } } },
        "/admin/scavenge/current": { "get": { "summary": "The running scavenge",
            "responses": { "200": { "description": "scavengeId, result (InProgress), segments, eventsRemoved, spaceSaved, timeTakenMs" }, "404": { "description": "None runs" } } } },
        "/admin/scavenge/last": { "get": { "summary": "The running or last scavenge",
            "responses": { "200": { "description": "As /admin/scavenge/current; result Success, Stopped or Failed" }, "404": { "description": "None since the server started" } } } },
        "/admin/scavenge/{id}": { "delete": { "summary": "Stops the running scavenge",
            "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
            "responses": { "200": { "description": "Stopping" }, "400": { "description": "Not an id" }, "404": { "description": "Not running" } } } }
    })
}

fn paths_and_schemas() -> Value {
    json!({
      "openapi": "3.1.0",
      "info": { "title": "Factum HTTP API", "version": env!("CARGO_PKG_VERSION"),
                "description": "Streams, metadata, deletes and live tails over HTTP/JSON. The same port serves KurrentDB's gRPC protocol." },
      "paths": {
        "/health": { "get": { "summary": "Liveness and readiness",
            "responses": { "200": { "description": "Ready" }, "503": { "description": "Live but not ready" } } } },
        "/health/live": { "get": { "summary": "Liveness", "responses": { "200": { "description": "The process serves requests" } } } },
        "/health/ready": { "get": { "summary": "Readiness",
            "responses": { "200": { "description": "The store answers" }, "503": { "description": "Not ready or shutting down" } } } },
        "/admin/backup": { "post": { "summary": "Online backup into a directory on the server's machine (embedded engine): a consistent copy at the committed position, incremental into an earlier backup (ADR 32)",
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["to"], "properties": { "to": { "type": "string" } } } } } },
            "responses": { "200": { "description": "The report: position, files, files_copied, bytes_copied, bytes_total, index_bytes (the index snapshot), files_checked (same-length segments compared by checksum)" },
                           "400": { "description": "Bad request" }, "501": { "description": "Not the embedded engine" } } } },
        "/subjects/{subject}/forget": { "post": { "summary": "Forget a data subject (crypto-shredding, ADR 36; $admins only): its key is destroyed, its personal fields read as null with \"$erased\": true in the metadata from now on; an audit event goes to $subjects-forgotten",
            "parameters": [ { "name": "subject", "in": "path", "required": true, "schema": { "type": "string" }, "description": "The subject id, as events name it in `$subject` metadata." } ],
            "responses": { "200": { "description": "subject, had_key (false: it had none), audit_position" },
                           "403": error_response("Not an admin"), "501": error_response("The server has no master key (--encryption-key-file)") } } },
        "/metrics": { "get": { "summary": "Prometheus metrics",
            "responses": { "200": { "description": "Text exposition format", "content": { "text/plain": {} } } } } },
        "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1" } } } },
        "/streams/{stream}": {
          "get": { "summary": "Read a page of a stream or of $all",
            "parameters": [ stream_param(),
              { "name": "from", "in": "query", "schema": { "type": "string" }, "description": "`start`, `end`, or a revision ($all: a position; the first event is at 1), inclusive." },
              { "name": "direction", "in": "query", "schema": { "enum": ["forwards", "backwards"] } },
              { "name": "count", "in": "query", "schema": { "type": "integer", "maximum": 4096, "default": 100 } } ],
            "responses": { "200": { "description": "A page; `next` is where the following page starts (null at the end)",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Page" } } } },
              "404": error_response("Stream not found"), "410": error_response("Stream tombstoned") } },
          "post": { "summary": "Append events",
            "description": "The body lists events as JSON. With an `ES-EventType` header the body is instead one event's data, as KurrentDB takes it: JSON under `application/json`, bytes under any other content type (e.g. `application/octet-stream`).",
            "parameters": [ stream_param(), expected_param(),
              { "name": "ES-EventType", "in": "header", "required": false, "schema": { "type": "string" },
                "description": "The type of the single event the body is (required for a body that is not JSON)." },
              { "name": "ES-EventId", "in": "header", "required": false, "schema": { "type": "string", "format": "uuid" },
                "description": "The single event's id (a new one when absent; a retry with the same id is idempotent)." },
              { "name": "ES-ExpectedVersion", "in": "header", "required": false, "schema": { "type": "integer" },
                "description": "KurrentDB's form of the expected revision for a single event: -2 any, -1 no stream, -4 exists, or a revision." } ],
            "requestBody": { "required": true, "content": {
              "application/json": { "schema": { "oneOf": [ { "$ref": "#/components/schemas/AppendBody" },
                { "description": "With ES-EventType: the event's JSON data" } ] } },
              "application/octet-stream": { "schema": { "type": "string", "format": "binary" },
                "description": "With ES-EventType: the event's data, stored as binary" } } },
            "responses": { "201": { "description": "Appended", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/WriteResult" } } } },
              "400": error_response("Bad input"), "403": error_response(PROTECTED), "409": error_response("Wrong expected revision"),
              "410": error_response("Stream tombstoned"), "413": error_response("Append too large") } },
          "delete": { "summary": "Soft-delete (or, with tombstone=true, hard-delete) a stream",
            "parameters": [ stream_param(), expected_param(),
              { "name": "tombstone", "in": "query", "schema": { "type": "boolean" } } ],
            "responses": { "200": { "description": "Deleted" }, "403": error_response(PROTECTED), "404": error_response("Stream not found"),
              "409": error_response("Wrong expected revision"), "410": error_response("Stream tombstoned") } } },
        "/multi-append": {
          "post": { "summary": "Append to several streams atomically (ADR 29)",
            "description": "All events are written in one contiguous range of positions, in the order given, or none is. Each stream has an expected revision; `checks` put conditions (`no-stream`, `exists`, `deleted`, `tombstoned` or a revision) on streams not written.",
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
              "properties": {
                "streams": { "type": "array", "items": { "type": "object", "required": ["stream", "events"],
                  "properties": { "stream": { "type": "string" }, "expected_revision": { "type": "string" },
                    "events": { "type": "array", "items": { "$ref": "#/components/schemas/NewEvent" } } } } },
                "checks": { "type": "array", "items": { "type": "object", "required": ["stream", "expected"],
                  "properties": { "stream": { "type": "string" }, "expected": { "type": "string" } } } } } } } } },
            "responses": { "201": { "description": "Appended: `position` of the last event, per stream its `revision` and `position`" },
              "400": error_response("Bad input"), "403": error_response(PROTECTED),
              "409": { "description": "Conditions that did not hold (`violations`: index, stream, expected, actual); nothing was written" },
              "413": error_response("Append too large") } } },
        "/streams/{stream}/metadata": {
          "get": { "summary": "Stream metadata", "parameters": [ stream_param() ],
            "responses": { "200": { "description": "`revision` of $$stream (null when never set) and the metadata" },
              "410": error_response("Stream tombstoned") } },
          "put": { "summary": "Set stream metadata ($maxAge, $maxCount, $tb, $acl, custom keys)",
            "parameters": [ stream_param(), expected_param() ],
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object" } } } },
            "responses": { "200": { "description": "Written", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/WriteResult" } } } },
              "400": error_response("Bad metadata"), "403": error_response(PROTECTED), "409": error_response("Wrong expected revision") } } },
        "/streams/{stream}/subscribe": {
          "get": { "summary": "Live tail as server-sent events (`event`, `caught-up`, `fell-behind`, `checkpoint`, `error`, `shutdown`)",
            "parameters": [ stream_param(),
              { "name": "from", "in": "query", "schema": { "type": "string" }, "description": "`start`, `end` (default), or the revision/position to continue after ($all: 0 is before the first event, which is at 1)." } ],
            "responses": { "200": { "description": "An event stream", "content": { "text/event-stream": {} } } } } }
      },
      "components": { "schemas": {
        "Event": { "type": "object",
          "description": "An event's JSON form, the same in pages, server-sent events and the CLI's --json (factum_core::json). `data` is the JSON value itself when the content type is application/json and the bytes parse (`data_encoding`: `json`; insignificant whitespace removed, everything else as stored), else the bytes in base64 (RFC 4648, padded; `base64`). `metadata` likewise whatever the content type, or null when empty (`none`). `link` appears for events read through $ce-/$et- streams.",
          "required": ["id", "stream", "revision", "position", "type", "content_type", "created", "data", "data_encoding", "metadata", "metadata_encoding"],
          "properties": { "id": { "type": "string", "format": "uuid" }, "stream": { "type": "string" },
            "revision": { "type": "integer" }, "position": { "type": "integer" }, "type": { "type": "string" },
            "content_type": { "type": "string" }, "created": { "type": "string", "format": "date-time" },
            "data": {}, "data_encoding": { "type": "string", "enum": ["json", "base64"] },
            "metadata": {}, "metadata_encoding": { "type": "string", "enum": ["json", "base64", "none"] },
            "link": { "type": "object", "properties": { "stream": { "type": "string" }, "revision": { "type": "integer" } } } } },
        "Page": { "type": "object", "properties": { "stream": { "type": "string" },
            "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } },
            "next": { "type": ["integer", "null"] } } },
        "NewEvent": { "type": "object", "required": ["type"],
          "properties": { "id": { "type": "string", "format": "uuid" }, "type": { "type": "string" }, "data": {}, "metadata": {} } },
        "AppendBody": { "oneOf": [
            { "type": "array", "items": { "$ref": "#/components/schemas/NewEvent" } },
            { "type": "object", "required": ["events"], "properties": {
                "expected_revision": { "type": "string" },
                "events": { "type": "array", "items": { "$ref": "#/components/schemas/NewEvent" } } } } ] },
        "WriteResult": { "type": "object", "properties": { "revision": { "type": "integer" }, "position": { "type": "integer" } } },
        "Error": { "type": "object", "required": ["error", "message"],
          "description": "`error` is the kind (wrong-expected-version, stream-deleted, stream-not-found, invalid-input, limit-exceeded, io, corrupt, unavailable, locked, unsupported); the other fields are those of the kind",
          "properties": { "error": { "type": "string" }, "message": { "type": "string" },
            "stream": { "type": "string" }, "expected": { "type": "string" }, "actual": { "type": "string" },
            "limit_what": { "type": "string" }, "limit": { "type": "integer" }, "limit_actual": { "type": "integer" },
            "io_context": { "type": "string" }, "os_error": { "type": "integer" },
            "file": { "type": "string" }, "offset": { "type": "integer" }, "detail": { "type": "string" },
            "path": { "type": "string" } } }
      } }
    })
}
