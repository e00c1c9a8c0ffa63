//! How events are printed by `read` and `tail`.
//!
//! Human form, one line per event, tab-separated:
//! `position  stream  revision  type  created(RFC 3339)  data`
//! where data is compact JSON when it is JSON, else `base64:<…>`.
//!
//! JSON form (`--json`), one object per line: the event's JSON form,
//! the same shape the HTTP API answers (`factum_core::json`).

use std::io::{self, Write};

use factum_core::json::{base64_into, compact_json};
use factum_core::RecordedEvent;

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
            factum_core::json::write_event(e, &mut self.line);
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
    match compact_json(e.content_type, &e.data) {
        Some(j) => s.push_str(&j),
        None => {
            s.push_str("base64:");
            base64_into(&e.data, s);
        }
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
