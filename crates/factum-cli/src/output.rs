//! How events are printed by `read` and `tail`.
//!
//! Human form, one line per event, tab-separated:
//! `position  stream  revision  type  created(RFC 3339)  data`
//! where data is compact JSON when it is JSON, else `base64:<…>`.
//!
//! JSON form (`--json`), one object per line:
//! `{"id","stream","revision","position","type","content_type","created",
//!   "data","data_encoding","metadata","metadata_encoding","link"?}`.
//! * `data` is the JSON value itself when the content type is JSON and the
//!   bytes parse (`data_encoding: "json"`; insignificant whitespace removed,
//!   everything else byte-for-byte as stored); otherwise a base64 string
//!   (RFC 4648, standard alphabet, padded; `data_encoding: "base64"`), which
//!   is lossless for any bytes.
//! * `metadata` likewise: the JSON value when it parses (`"json"`), base64
//!   otherwise (`"base64"`), or `null` when empty (`"none"`).
//! * `link` (`{"stream","revision"}`) appears for events read through
//!   `$ce-…` / `$et-…`.

use std::io::{self, Write};

use factum_core::{ContentType, RecordedEvent};

/// Writes events in human or JSON form.
pub struct EventPrinter<W: Write> {
    out: W,
    json: bool,
    line: String,
}

impl<W: Write> EventPrinter<W> {
    /// A printer writing to `out`.
    pub fn new(out: W, json: bool) -> Self {
        EventPrinter {
            out,
            json,
            line: String::with_capacity(1024),
        }
    }

    /// Prints one event as one line.
    pub fn print(&mut self, e: &RecordedEvent) -> io::Result<()> {
        self.line.clear();
        if self.json {
            json_line(e, &mut self.line);
        } else {
            human_line(e, &mut self.line);
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn human_line(e: &RecordedEvent, s: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(
        s,
        "{}\t{}\t{}\t{}\t{}\t",
        e.position,
        e.stream,
        e.revision,
        printable(&e.event_type),
        e.created.to_rfc3339()
    );
    match json_text(e.content_type, &e.data) {
        Some(j) => s.push_str(&j),
        None => {
            s.push_str("base64:");
            base64_into(&e.data, s);
        }
    }
}

fn json_line(e: &RecordedEvent, s: &mut String) {
    use std::fmt::Write as _;
    let q = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let _ = write!(
        s,
        "{{\"id\":\"{}\",\"stream\":{},\"revision\":{},\"position\":{},\"type\":{},\"content_type\":\"{}\",\"created\":\"{}\",\"data\":",
        e.id,
        q(e.stream.as_str()),
        e.revision,
        e.position,
        q(&e.event_type),
        e.content_type.mime(),
        e.created.to_rfc3339(),
    );
    match json_text(e.content_type, &e.data) {
        Some(j) => {
            s.push_str(&j);
            s.push_str(",\"data_encoding\":\"json\"");
        }
        None => {
            s.push('"');
            base64_into(&e.data, s);
            s.push_str("\",\"data_encoding\":\"base64\"");
        }
    }
    s.push_str(",\"metadata\":");
    if e.metadata.is_empty() {
        s.push_str("null,\"metadata_encoding\":\"none\"");
    } else {
        match json_text(ContentType::Json, &e.metadata) {
            Some(j) => {
                s.push_str(&j);
                s.push_str(",\"metadata_encoding\":\"json\"");
            }
            None => {
                s.push('"');
                base64_into(&e.metadata, s);
                s.push_str("\",\"metadata_encoding\":\"base64\"");
            }
        }
    }
    if let Some(link) = &e.link {
        let _ = write!(
            s,
            ",\"link\":{{\"stream\":{},\"revision\":{}}}",
            q(link.stream.as_str()),
            link.revision
        );
    }
    s.push('}');
}

/// The bytes as compact JSON text, when they are JSON of the given content type.
fn json_text(content_type: ContentType, bytes: &[u8]) -> Option<String> {
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

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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

/// Escapes control characters so a value stays on its line.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        std::borrow::Cow::Owned(s.escape_default().to_string())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            json_text(ContentType::Json, b"{\"a\":1}").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(json_text(ContentType::Json, b"{nope"), None);
        assert_eq!(json_text(ContentType::Binary, b"{}"), None);
    }
}
