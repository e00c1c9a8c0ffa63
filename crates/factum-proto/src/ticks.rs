//! .NET ticks, as KurrentDB's protocol carries time: 100-nanosecond units
//! since the Unix epoch (an event's `created` system property, a gossip
//! member's `time_stamp`), and durations in ticks (consumer-group settings).
//! Factum's [`Timestamp`] counts microseconds, so a tick count is ten
//! times it; converting back rounds towards the past (`div_euclid`, so a
//! time before 1970 rounds down too).
//!
//! ```
//! use factum_core::Timestamp;
//! use factum_proto::ticks;
//!
//! let t = Timestamp(1_700_000_000_123_456);
//! assert_eq!(ticks::from_timestamp(t), 17_000_000_001_234_560);
//! assert_eq!(ticks::parse(b"17000000001234567"), Some(t));
//! ```

use factum_core::Timestamp;

/// Ticks in a microsecond.
pub const PER_MICRO: i64 = 10;
/// Ticks in a millisecond.
pub const PER_MILLI: i64 = 10_000;

/// `t` as ticks since the Unix epoch (saturating at the ends of `i64`).
pub fn from_timestamp(t: Timestamp) -> i64 {
    t.as_micros().saturating_mul(PER_MICRO)
}

/// Ticks since the Unix epoch as a timestamp.
pub fn to_timestamp(ticks: i64) -> Timestamp {
    Timestamp(ticks.div_euclid(PER_MICRO))
}

/// The `created` property as it travels: the decimal text of the ticks.
pub fn to_text(t: Timestamp) -> String {
    from_timestamp(t).to_string()
}

/// Parses the decimal text of a tick count; `None` when it is not one.
pub fn parse(text: &[u8]) -> Option<Timestamp> {
    std::str::from_utf8(text)
        .ok()?
        .parse::<i64>()
        .ok()
        .map(to_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_trip_and_round_towards_the_past() {
        let t = Timestamp(1_700_000_000_123_456);
        assert_eq!(to_text(t), "17000000001234560");
        assert_eq!(parse(to_text(t).as_bytes()), Some(t));
        assert_eq!(to_timestamp(-1), Timestamp(-1));
        assert_eq!(from_timestamp(Timestamp(i64::MAX)), i64::MAX);
        assert_eq!(parse(b"not a number"), None);
        assert_eq!(parse(b"\xff"), None);
    }
}
