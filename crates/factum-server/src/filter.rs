//! Server-side filters as clients send them: the wire form around the one
//! filter type in `factum_core::filter` (which decides what a pattern means,
//! a non-empty regex winning over prefixes, and matches in linear time).

use factum_core::{Filter, FilterOn, RecordedEvent};
use factum_proto::streams::read_req::options::{filter_options, FilterOptions};
use tonic::Status;

/// A filter for `$all` reads and subscriptions, with its checkpoint interval.
#[derive(Clone, Debug)]
pub struct WireFilter {
    /// The filter itself.
    pub filter: Filter,
    /// A checkpoint is sent after this many events were scanned without one.
    pub checkpoint_interval: u64,
}

impl WireFilter {
    /// Parses `FilterOptions`; an empty, invalid or unsupported expression is
    /// `InvalidArgument` saying why.
    pub fn from_wire(f: &FilterOptions) -> Result<Self, Status> {
        let (on, expr) = match &f.filter {
            Some(filter_options::Filter::StreamIdentifier(e)) => (FilterOn::StreamName, e),
            Some(filter_options::Filter::EventType(e)) => (FilterOn::EventType, e),
            None => {
                return Err(Status::invalid_argument(
                    "filter has neither stream_identifier nor event_type",
                ))
            }
        };
        let filter = Filter::from_parts(on, expr.prefix.clone(), &expr.regex)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let window = match f.window {
            Some(filter_options::Window::Max(m)) => m.max(1) as u64,
            // `count` asks for the server's default window.
            Some(filter_options::Window::Count(_)) | None => 32,
        };
        let multiplier = f.checkpoint_interval_multiplier.max(1) as u64;
        Ok(WireFilter {
            filter,
            checkpoint_interval: window.saturating_mul(multiplier),
        })
    }

    /// Does the filter accept this event?
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        self.filter.matches(e)
    }
}

#[cfg(test)]
mod tests {
    use factum_proto::streams::read_req::options::filter_options::{Expression, Filter, Window};

    use super::*;

    fn wire(regex: &str, prefix: &[&str]) -> FilterOptions {
        FilterOptions {
            filter: Some(Filter::EventType(Expression {
                regex: regex.into(),
                prefix: prefix.iter().map(|s| s.to_string()).collect(),
            })),
            window: Some(Window::Max(10)),
            checkpoint_interval_multiplier: 3,
        }
    }

    fn event(t: &str) -> RecordedEvent {
        let d = factum_core::EventData::binary(t, vec![]);
        RecordedEvent {
            id: d.id,
            stream: factum_core::StreamName::new("s-1").unwrap(),
            revision: factum_core::StreamRevision(0),
            position: factum_core::Position(0),
            event_type: d.event_type,
            content_type: d.content_type,
            data: d.data,
            metadata: d.metadata,
            created: factum_core::Timestamp(0),
            link: None,
        }
    }

    #[test]
    fn negative_lookahead_as_official_clients_send_it() {
        let f = WireFilter::from_wire(&wire(r"^(?!(\$.*)).*$", &[])).unwrap();
        assert!(f.matches(&event("OrderPaid")));
        assert!(!f.matches(&event("$metadata")));
        assert_eq!(f.checkpoint_interval, 30);
    }

    #[test]
    fn prefixes_regexes_and_bad_expressions() {
        let f = WireFilter::from_wire(&wire("", &["Order"])).unwrap();
        assert!(f.matches(&event("OrderPaid")) && !f.matches(&event("Paid")));
        // A non-empty regex wins over prefixes, as in KurrentDB's Streams.Read.
        let f = WireFilter::from_wire(&wire("^Paid", &["Order"])).unwrap();
        assert!(f.matches(&event("Paid")) && !f.matches(&event("OrderPaid")));
        assert!(WireFilter::from_wire(&wire("(", &[])).is_err());
        assert!(WireFilter::from_wire(&wire("", &[])).is_err());
        let e = WireFilter::from_wire(&wire("(?<=a)b", &[])).unwrap_err();
        assert!(e.message().contains("linear time"), "{e:?}");
    }
}
