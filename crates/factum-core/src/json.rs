//! The JSON form of an event: one shape and one serializer for every place
//! that shows events as JSON (the CLI's `--json`, the HTTP API's pages and
//! its server-sent events; documented in the server's OpenAPI document as
//! `Event`).
//!
//! `{"id","stream","revision","position","type","content_type","created",
//!   "data","data_encoding","metadata","metadata_encoding","link"?}`
//!
//! * `data` is the JSON value itself when the content type is JSON and the
//!   bytes parse (`data_encoding: "json"`; insignificant whitespace removed,
//!   everything else — key order, number spellings, escapes — byte for byte
//!   as stored); otherwise a base64 string (RFC 4648, standard alphabet,
//!   padded; `data_encoding: "base64"`), which is lossless for any bytes.
//! * `metadata` likewise, whatever the content type: the JSON value when it
//!   parses (`"json"`), base64 otherwise (`"base64"`), or `null` when empty
//!   (`"none"`).
//! * `link` (`{"stream","revision"}`) appears for events read through
//!   `$ce-…` / `$et-…`.
//!
//! The data is copied as text rather than through a parsed value so that
//! what a reader gets is what was written (a parsed value would sort keys
//! and round numbers beyond 64 bits).

use std::fmt::Write as _;

use crate::model::{ContentType, RecordedEvent};

/// Appends the JSON object of `e` to `out` (no newline).
pub fn write_event(e: &RecordedEvent, out: &mut String) {
    let q = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let _ = write!(
        out,
        "{{\"id\":\"{}\",\"stream\":{},\"revision\":{},\"position\":{},\"type\":{},\"content_type\":\"{}\",\"created\":\"{}\",\"data\":",
        e.id,
        q(e.stream.as_str()),
        e.revision,
        e.position,
        q(&e.event_type),
        e.content_type.mime(),
        e.created.to_rfc3339(),
    );
    payload(compact_json(e.content_type, &e.data), &e.data, "data", out);
    out.push_str(",\"metadata\":");
    if e.metadata.is_empty() {
        out.push_str("null,\"metadata_encoding\":\"none\"");
    } else {
        let json = compact_json(ContentType::Json, &e.metadata);
        payload(json, &e.metadata, "metadata", out);
    }
    if let Some(link) = &e.link {
        let _ = write!(
            out,
            ",\"link\":{{\"stream\":{},\"revision\":{}}}",
            q(link.stream.as_str()),
            link.revision
        );
    }
    out.push('}');
}

/// The JSON object of `e` as a string.
pub fn event_json(e: &RecordedEvent) -> String {
    let mut out = String::with_capacity(256 + e.data.len() + e.metadata.len());
    write_event(e, &mut out);
    out
}

/// `"<key>"`'s value, then `"<key>_encoding"`.
fn payload(json: Option<String>, bytes: &[u8], key: &str, out: &mut String) {
    match json {
        Some(j) => {
            out.push_str(&j);
            let _ = write!(out, ",\"{key}_encoding\":\"json\"");
        }
        None => {
            out.push('"');
            base64_into(bytes, out);
            let _ = write!(out, "\",\"{key}_encoding\":\"base64\"");
        }
    }
}

/// The bytes as compact JSON text, when they are JSON of the given content
/// type (`None` for other content types and for bytes that do not parse).
pub fn compact_json(content_type: ContentType, bytes: &[u8]) -> Option<String> {
    if content_type != ContentType::Json {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str::<serde_json::Value>(text).ok()?;
    Some(minify(text))
}

/// Removes insignificant whitespace from valid JSON text, keeping every
/// other byte (number spellings, escapes, key order) as it is.
pub fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4), appended to `out`.
pub fn base64_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Link, Position, StreamName, StreamRevision, Timestamp};

    fn b64(b: &[u8]) -> String {
        let mut s = String::new();
        base64_into(b, &mut s);
        s
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foob"), "Zm9vYg==");
        assert_eq!(b64(b"fooba"), "Zm9vYmE=");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn minify_keeps_strings_and_numbers() {
        let src = "{ \"a b\" : [1.50, 2e3],\n \"c\":\"x\\\" y\" }";
        assert_eq!(minify(src), "{\"a b\":[1.50,2e3],\"c\":\"x\\\" y\"}");
        let v: serde_json::Value = serde_json::from_str(&minify(src)).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(src).unwrap());
    }

    #[test]
    fn non_json_data_is_base64() {
        assert_eq!(
            compact_json(ContentType::Json, b"{\"a\":1}").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(compact_json(ContentType::Json, b"{nope"), None);
        assert_eq!(compact_json(ContentType::Binary, b"{}"), None);
    }

    fn event(content_type: ContentType, data: &[u8], metadata: &[u8]) -> RecordedEvent {
        RecordedEvent {
            id: uuid::Uuid::nil(),
            stream: StreamName::new("order-1").unwrap(),
            revision: StreamRevision(2),
            position: Position(7),
            event_type: "Paid".into(),
            content_type,
            data: bytes::Bytes::copy_from_slice(data),
            metadata: bytes::Bytes::copy_from_slice(metadata),
            created: Timestamp(0),
            link: None,
        }
    }

    #[test]
    fn one_shape_for_json_binary_and_linked_events() {
        let e = event(ContentType::Json, b"{ \"b\": 1, \"a\": 1.50 }", b"");
        let v: serde_json::Value = serde_json::from_str(&event_json(&e)).unwrap();
        assert_eq!(v["data_encoding"], "json");
        assert_eq!(v["metadata"], serde_json::Value::Null);
        assert_eq!(v["metadata_encoding"], "none");
        assert_eq!(v["revision"], 2);
        assert_eq!(v["position"], 7);
        // Key order and number spelling as stored.
        assert!(event_json(&e).contains("\"data\":{\"b\":1,\"a\":1.50}"));

        let mut e = event(ContentType::Binary, b"raw \x01 bytes", b"not json");
        e.link = Some(Link {
            stream: StreamName::new("$ce-order").unwrap(),
            revision: StreamRevision(9),
        });
        let v: serde_json::Value = serde_json::from_str(&event_json(&e)).unwrap();
        assert_eq!(v["data"], "cmF3IAEgYnl0ZXM=");
        assert_eq!(v["data_encoding"], "base64");
        assert_eq!(v["metadata_encoding"], "base64");
        assert_eq!(v["link"]["stream"], "$ce-order");
        assert_eq!(v["link"]["revision"], 9);
    }
}
