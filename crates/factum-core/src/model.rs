//! The event model: names, revisions, positions, timestamps and events.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest stream name accepted, in UTF-8 bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 1024;
/// Longest event type accepted, in UTF-8 bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 1024;

/// The name of a stream, validated: 1..=1024 UTF-8 bytes, no control characters.
///
/// Names starting with `$` are system streams: `$all` (the global log),
/// `$ce-<category>` (every event of streams `<category>-…`), `$et-<type>`
/// (every event of one type) are read-only; `$$<stream>` holds the metadata
/// of `<stream>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// Validates and wraps a stream name.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(Error::InvalidInput("stream name is empty".into()));
        }
        if name.len() > MAX_STREAM_NAME_BYTES {
            return Err(Error::LimitExceeded {
                what: "stream name length in bytes".into(),
                limit: MAX_STREAM_NAME_BYTES as u64,
                actual: name.len() as u64,
            });
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(Error::InvalidInput(format!(
                "stream name {name:?} contains the control character {c:?}"
            )));
        }
        Ok(StreamName(Arc::from(name)))
    }

    /// Validates a stream name given as raw bytes (from a file or the network).
    pub fn from_utf8(bytes: &[u8]) -> Result<Self> {
        let s = std::str::from_utf8(bytes)
            .map_err(|e| Error::InvalidInput(format!("stream name is not valid UTF-8: {e}")))?;
        Self::new(s)
    }

    /// The global log, `$all`.
    pub fn all() -> Self {
        StreamName(Arc::from("$all"))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `$all`.
    pub fn is_all(&self) -> bool {
        &*self.0 == "$all"
    }

    /// True for names starting with `$` (system streams).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// For `$$<stream>`, the stream whose metadata this is.
    pub fn metadata_of(&self) -> Option<StreamName> {
        self.0
            .strip_prefix("$$")
            .filter(|s| !s.is_empty())
            .map(|s| StreamName(Arc::from(s)))
    }

    /// The metadata stream `$$<self>`.
    pub fn metadata_stream(&self) -> StreamName {
        StreamName(Arc::from(format!("$${}", self.0)))
    }

    /// For `$ce-<category>`, the category.
    pub fn category_stream_of(&self) -> Option<&str> {
        self.0.strip_prefix("$ce-").filter(|s| !s.is_empty())
    }

    /// For `$et-<type>`, the event type.
    pub fn event_type_stream_of(&self) -> Option<&str> {
        self.0.strip_prefix("$et-").filter(|s| !s.is_empty())
    }

    /// The category of a user stream: the part before the first `-`
    /// (KurrentDB's default). `None` for system streams and names without `-`.
    pub fn category(&self) -> Option<&str> {
        if self.is_system() {
            return None;
        }
        self.0
            .split_once('-')
            .map(|(c, _)| c)
            .filter(|c| !c.is_empty())
    }

    /// True when appends go to this stream directly (not `$all`, `$ce-…`, `$et-…`).
    pub fn is_writable(&self) -> bool {
        !(self.is_all()
            || self.category_stream_of().is_some()
            || self.event_type_stream_of().is_some())
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::str::FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The revision of an event within its stream: dense, from 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamRevision(pub u64);

impl fmt::Display for StreamRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The place of an event in the global log (`$all`), in commit order. The
/// first event of a store is at 1; 0 means "before the first event", as
/// KurrentDB's clients take it (ADR 25). Positions are dense today, but a
/// reader must accept gaps (a scavenge will remove events).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A point in time: microseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time from the system clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts from `SystemTime` (saturating).
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_micros().min(i64::MAX as u128) as i64),
            Err(e) => Timestamp(-(e.duration().as_micros().min(i64::MAX as u128) as i64)),
        }
    }

    /// Converts to `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This time minus a duration (saturating).
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(d.as_micros().min(i64::MAX as u128) as i64),
        )
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T09:36:20.123456Z`.
    pub fn to_rfc3339(self) -> String {
        let micros = self.0.rem_euclid(1_000_000);
        let secs = self.0.div_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod % 3600) / 60,
            sod % 60
        )
    }

    /// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) or plain microseconds.
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(n) = s.parse::<i64>() {
            return Ok(Timestamp(n));
        }
        parse_rfc3339(s).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{s:?} is not a timestamp (RFC 3339 such as 2026-01-31T00:00:00Z, or microseconds since the epoch)"
            ))
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

// Howard Hinnant's days <-> civil date algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut f = frac[..digits.min(6)].to_string();
        while f.len() < 6 {
            f.push('0');
        }
        micros = f.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(Timestamp(secs * 1_000_000 + micros))
}

/// How an event's data is encoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// `application/json`: the data is a JSON document.
    Json,
    /// `application/octet-stream`: opaque bytes.
    Binary,
}

impl ContentType {
    /// The MIME type, as KurrentDB's protocol names it.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Binary => "application/octet-stream",
        }
    }
}

/// An event to append.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EventData {
    /// Unique id; a retried append with the same ids is idempotent.
    pub id: Uuid,
    /// The event type, e.g. `OrderPaid`.
    pub event_type: String,
    /// Encoding of `data`.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// User metadata (correlation ids and the like), usually JSON.
    pub metadata: Bytes,
}

impl EventData {
    /// A JSON event from a serializable value, with a fresh random id.
    pub fn json<T: Serialize + ?Sized>(event_type: impl Into<String>, value: &T) -> Result<Self> {
        let data = serde_json::to_vec(value)
            .map_err(|e| Error::InvalidInput(format!("event data is not serializable: {e}")))?;
        Ok(Self::new(event_type, ContentType::Json, data))
    }

    /// A binary event with a fresh random id.
    pub fn binary(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self::new(event_type, ContentType::Binary, data)
    }

    /// An event with explicit content type and a fresh random id.
    pub fn new(
        event_type: impl Into<String>,
        content_type: ContentType,
        data: impl Into<Bytes>,
    ) -> Self {
        EventData {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            content_type,
            data: data.into(),
            metadata: Bytes::new(),
        }
    }

    /// Sets the event id (for idempotent retries).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata bytes.
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// Bytes this event counts against the maximum event size.
    pub fn size(&self) -> usize {
        self.data.len() + self.metadata.len() + self.event_type.len()
    }
}

/// Where a resolved event was found when it was read through a link stream
/// (`$ce-…`, `$et-…`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Link {
    /// The link stream, e.g. `$ce-order`.
    pub stream: StreamName,
    /// The revision within the link stream.
    pub revision: StreamRevision,
}

/// An event as stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordedEvent {
    /// The event id.
    pub id: Uuid,
    /// The stream it was appended to.
    pub stream: StreamName,
    /// Its revision in that stream.
    pub revision: StreamRevision,
    /// Its position in the global log.
    pub position: Position,
    /// The event type.
    pub event_type: String,
    /// Encoding of `data`.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// User metadata.
    pub metadata: Bytes,
    /// When the store committed it.
    pub created: Timestamp,
    /// Set when read through `$ce-…` or `$et-…`.
    pub link: Option<Link>,
}

impl RecordedEvent {
    /// Deserializes the JSON data.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.data).map_err(|e| {
            Error::InvalidInput(format!(
                "event {}@{} ({}) data is not the expected JSON: {e}",
                self.revision, self.stream, self.event_type
            ))
        })
    }

    /// Bytes this event counts against a page's `max_bytes` (its data,
    /// metadata and type: what it counted against the largest append).
    pub fn size(&self) -> usize {
        self.data.len() + self.metadata.len() + self.event_type.len()
    }

    /// The revision to continue from when paging the stream this event was read
    /// from: the link revision for `$ce-`/`$et-` reads, else the event's own.
    pub fn read_revision(&self) -> StreamRevision {
        self.link.as_ref().map_or(self.revision, |l| l.revision)
    }

    /// The id of the link event through which this event was read (from a
    /// `$ce-`/`$et-` stream), `None` when it was read directly. Factum
    /// stores no link records, so the id is derived: the same link reads
    /// with the same id every time, and the wire, consumers' acks and the
    /// persistent subscriptions all agree on it.
    pub fn link_id(&self) -> Option<Uuid> {
        let link = self.link.as_ref()?;
        // FNV-1a over the link stream name, folded into the target's id; the
        // version nibble marks it as a v8 (custom) UUID.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in link.stream.as_str().bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mixed = self.id.as_u128() ^ ((h as u128) << 64 | h.rotate_left(17) as u128);
        Some(uuid::Builder::from_custom_bytes(mixed.to_be_bytes()).into_uuid())
    }

    /// The id of what a reader received first: the link when read through
    /// one, else the event (KurrentDB's "original event"); consumers ack by it.
    pub fn original_id(&self) -> Uuid {
        self.link_id().unwrap_or(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_name_rules() {
        assert!(StreamName::new("").is_err());
        assert!(StreamName::new("a\u{0}b").is_err());
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME_BYTES + 1)).is_err());
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME_BYTES)).is_ok());
        assert!(StreamName::from_utf8(&[0xff, 0xfe]).is_err());
        let s = StreamName::new("order-12-a").unwrap();
        assert_eq!(s.category(), Some("order"));
        assert_eq!(s.metadata_stream().as_str(), "$$order-12-a");
        assert_eq!(s.metadata_stream().metadata_of(), Some(s.clone()));
        assert!(!StreamName::new("$ce-order").unwrap().is_writable());
        assert!(!StreamName::new("$all").unwrap().is_writable());
        assert_eq!(
            StreamName::new("$et-Paid").unwrap().event_type_stream_of(),
            Some("Paid")
        );
        assert_eq!(StreamName::new("plain").unwrap().category(), None);
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp::parse("2026-01-31T23:59:58.5Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-31T23:59:58.500000Z");
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00Z").unwrap(),
            Timestamp(0)
        );
        assert_eq!(
            Timestamp::parse("2026-01-01T01:00:00+01:00").unwrap(),
            Timestamp::parse("2026-01-01T00:00:00Z").unwrap()
        );
        assert!(Timestamp::parse("yesterday").is_err());
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse(&now.to_rfc3339()).unwrap(), now);
    }
}
