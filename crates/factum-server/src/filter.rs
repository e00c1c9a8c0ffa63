//! Server-side filters as clients send them.
//!
//! KurrentDB evaluates filter regexes with .NET's engine, and official
//! clients rely on look-around (e.g. the Python client excludes system
//! events with `^(?!(\$.*)).*$`), which the `regex` crate does not support.
//! So the server matches with `fancy-regex`; when a pattern is also valid
//! for `regex` (same semantics for such patterns), reads pass the filter to
//! the store instead, which can skip whole pages.

use factum_core::{Filter, FilterOn, RecordedEvent};
use factum_proto::streams::read_req::options::{filter_options, FilterOptions};
use tonic::Status;

/// How a filter matches.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// Any of these prefixes.
    Prefixes(Vec<String>),
    /// A regular expression with look-around support.
    Regex(fancy_regex::Regex),
}

/// A filter for `$all` reads and subscriptions, with its checkpoint interval.
#[derive(Clone, Debug)]
pub struct WireFilter {
    /// What it looks at.
    pub on: FilterOn,
    /// How it matches.
    pub matcher: Matcher,
    /// A checkpoint is sent after this many events were scanned without one.
    pub checkpoint_interval: u64,
}

impl WireFilter {
    /// Parses `FilterOptions`; an empty or invalid expression is `InvalidArgument`.
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
        let matcher = if !expr.prefix.is_empty() {
            Matcher::Prefixes(expr.prefix.clone())
        } else if !expr.regex.is_empty() {
            let re = fancy_regex::Regex::new(&expr.regex).map_err(|e| {
                Status::invalid_argument(format!("invalid filter regex {:?}: {e}", expr.regex))
            })?;
            Matcher::Regex(re)
        } else {
            return Err(Status::invalid_argument(
                "filter expression has neither prefixes nor a regex",
            ));
        };
        let window = match f.window {
            Some(filter_options::Window::Max(m)) => m.max(1) as u64,
            // `count` asks for the server's default window.
            Some(filter_options::Window::Count(_)) | None => 32,
        };
        let multiplier = f.checkpoint_interval_multiplier.max(1) as u64;
        Ok(WireFilter {
            on,
            matcher,
            checkpoint_interval: window.saturating_mul(multiplier),
        })
    }

    /// Does the filter accept this event?
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        let subject = match self.on {
            FilterOn::StreamName => e.stream.as_str(),
            FilterOn::EventType => e.event_type.as_str(),
        };
        match &self.matcher {
            Matcher::Prefixes(ps) => ps.iter().any(|p| subject.starts_with(p.as_str())),
            // A pattern that exceeds the backtracking limit matches nothing.
            Matcher::Regex(re) => re.is_match(subject).unwrap_or(false),
        }
    }

    /// The same filter for the store, when the store's regex engine has the
    /// same meaning for the pattern.
    pub fn to_store(&self) -> Option<Filter> {
        match &self.matcher {
            Matcher::Prefixes(ps) => Some(Filter {
                on: self.on,
                matcher: factum_core::FilterMatch::Prefixes(ps.clone()),
            }),
            Matcher::Regex(re) => {
                let f = match self.on {
                    FilterOn::StreamName => Filter::stream_regex(re.as_str()),
                    FilterOn::EventType => Filter::event_type_regex(re.as_str()),
                };
                f.ok()
            }
        }
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
        assert!(f.to_store().is_none(), "look-around stays in the server");
        assert_eq!(f.checkpoint_interval, 30);
    }

    #[test]
    fn prefixes_and_plain_regexes_go_to_the_store() {
        let f = WireFilter::from_wire(&wire("", &["Order"])).unwrap();
        assert!(f.matches(&event("OrderPaid")) && !f.matches(&event("Paid")));
        assert!(f.to_store().is_some());
        assert!(WireFilter::from_wire(&wire("^Ord", &[]))
            .unwrap()
            .to_store()
            .is_some());
        assert!(WireFilter::from_wire(&wire("(", &[])).is_err());
        assert!(WireFilter::from_wire(&wire("", &[])).is_err());
    }
}
