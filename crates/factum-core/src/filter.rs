//! Server-side filters for `$all` reads, subscriptions and consumer groups:
//! the one place that decides what a filter means.
//!
//! KurrentDB evaluates filter regexes with .NET's backtracking engine, and
//! official clients rely on look-ahead (the Python clients exclude system
//! events with `^(?!(\$.+$|…))`). A backtracking engine with look-around
//! cannot bound its work: the fuzzer found a 27-byte pattern that kept one
//! core busy for 26 s on a 32-byte stream name under `fancy-regex`, whose
//! backtrack limit does not count counted repetitions. So Factum matches
//! every filter in time linear in the subject:
//!
//! - a pattern the `regex` crate accepts is used as it is;
//! - a pattern that starts with `^` followed by look-aheads (`(?=X)`,
//!   `(?!X)`) whose bodies, and the rest of the pattern, the `regex` crate
//!   accepts, is split into those pieces, each anchored at the start: the
//!   form the official clients send;
//! - anything else (look-ahead elsewhere, look-behind, backreferences,
//!   atomic groups …) is refused with an error that says so.
//!
//! A filter carries prefixes or a regex; when a client sends both, a
//! non-empty regex wins, as in KurrentDB's `Streams.Read`.

use fancy_regex::{Assertion, Expr, LookAround};
use regex::{Regex, RegexBuilder};

use crate::error::{Error, Result};
use crate::model::RecordedEvent;

/// The longest filter regex accepted, in bytes.
pub const MAX_FILTER_REGEX_LEN: usize = 4096;

/// The most memory one compiled filter regex (and its lazy DFA cache) may
/// take: many subscriptions each hold their own.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What a filter looks at.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FilterOn {
    /// The event's stream name.
    StreamName,
    /// The event's type.
    EventType,
}

/// How a filter matches.
#[derive(Clone, Debug)]
pub enum FilterMatch {
    /// Any of these prefixes.
    Prefixes(Vec<String>),
    /// This regular expression (unanchored, as in KurrentDB).
    Regex(FilterRegex),
}

/// A filter regular expression, matched in time linear in the subject
/// (see the module documentation for the forms accepted).
#[derive(Clone)]
pub struct FilterRegex {
    source: String,
    /// Look-aheads at the start: `(negated, ^(?:body))`.
    lookaheads: Vec<(bool, Regex)>,
    /// The pattern without its leading look-aheads.
    rest: Regex,
}

impl std::fmt::Debug for FilterRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FilterRegex").field(&self.source).finish()
    }
}

impl FilterRegex {
    /// Compiles `pattern`; an invalid or unsupported pattern is `InvalidInput`
    /// saying why.
    pub fn new(pattern: &str) -> Result<Self> {
        if pattern.len() > MAX_FILTER_REGEX_LEN {
            return Err(invalid(
                pattern,
                format!("longer than {MAX_FILTER_REGEX_LEN} bytes"),
            ));
        }
        let plain = match build(pattern) {
            Ok(rest) => {
                return Ok(FilterRegex {
                    source: pattern.to_owned(),
                    lookaheads: Vec::new(),
                    rest,
                })
            }
            Err(e) => e,
        };
        // Not a pattern for the linear engine: is it the look-ahead form?
        let tree = Expr::parse_tree(pattern).map_err(|e| invalid(pattern, e.to_string()))?;
        let items = match &tree.expr {
            Expr::Concat(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        let mut items = items.iter().skip_while(|e| matches!(e, Expr::Empty));
        if !matches!(items.next(), Some(Expr::Assertion(Assertion::StartText))) {
            return Err(unsupported(pattern, &plain));
        }
        let mut items = items.peekable();
        let mut lookaheads = Vec::new();
        while let Some(Expr::LookAround(body, kind)) = items.peek() {
            let negated = match kind {
                LookAround::LookAhead => false,
                LookAround::LookAheadNeg => true,
                LookAround::LookBehind | LookAround::LookBehindNeg => {
                    return Err(unsupported(pattern, &plain))
                }
            };
            let body = to_linear(body).ok_or_else(|| unsupported(pattern, &plain))?;
            let re = build(&format!("^(?:{body})")).map_err(|e| invalid(pattern, e))?;
            lookaheads.push((negated, re));
            items.next();
        }
        if lookaheads.is_empty() {
            return Err(unsupported(pattern, &plain));
        }
        let mut rest = String::from("^(?:");
        for e in items {
            rest.push_str(&to_linear(e).ok_or_else(|| unsupported(pattern, &plain))?);
        }
        rest.push(')');
        let rest = build(&rest).map_err(|e| invalid(pattern, e))?;
        Ok(FilterRegex {
            source: pattern.to_owned(),
            lookaheads,
            rest,
        })
    }

    /// The pattern as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Does the pattern match anywhere in `subject`?
    pub fn is_match(&self, subject: &str) -> bool {
        self.lookaheads
            .iter()
            .all(|(negated, re)| re.is_match(subject) != *negated)
            && self.rest.is_match(subject)
    }
}

fn build(pattern: &str) -> std::result::Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

fn invalid(pattern: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("invalid filter regex {pattern:?}: {why}"))
}

fn unsupported(pattern: &str, why: &str) -> Error {
    Error::InvalidInput(format!(
        "unsupported filter regex {pattern:?}: Factum matches filters in linear time, so \
         look-ahead is accepted only right after a leading ^ (as in ^(?!\\$).*) and \
         look-behind, backreferences and atomic groups are not ({why})"
    ))
}

/// The expression in the `regex` crate's syntax, when it has nothing that
/// crate cannot run. (`Expr::to_str` panics on such expressions, so they are
/// ruled out here first.)
fn to_linear(e: &Expr) -> Option<String> {
    fn easy(e: &Expr) -> bool {
        match e {
            Expr::Empty | Expr::Any { .. } | Expr::Literal { .. } | Expr::Delegate { .. } => true,
            Expr::Assertion(a) => matches!(
                a,
                Assertion::StartText
                    | Assertion::EndText
                    | Assertion::StartLine { .. }
                    | Assertion::EndLine { .. }
                    | Assertion::WordBoundary
                    | Assertion::NotWordBoundary
            ),
            Expr::Concat(items) | Expr::Alt(items) => items.iter().all(easy),
            Expr::Group(inner) => easy(inner),
            Expr::Repeat { child, .. } => easy(child),
            _ => false,
        }
    }
    if !easy(e) {
        return None;
    }
    let mut s = String::new();
    e.to_str(&mut s, 1);
    Some(s)
}

/// A server-side filter for `$all` reads and subscriptions.
#[derive(Clone, Debug)]
pub struct Filter {
    /// What it looks at.
    pub on: FilterOn,
    /// How it matches.
    pub matcher: FilterMatch,
}

impl Filter {
    /// A filter from the parts a client sends: prefixes and a regex. A
    /// non-empty regex wins over prefixes (KurrentDB's rule in
    /// `Streams.Read`); with neither it is `InvalidInput`.
    pub fn from_parts(on: FilterOn, prefixes: Vec<String>, regex: &str) -> Result<Self> {
        let matcher = if !regex.is_empty() {
            FilterMatch::Regex(FilterRegex::new(regex)?)
        } else if !prefixes.is_empty() {
            FilterMatch::Prefixes(prefixes)
        } else {
            return Err(Error::InvalidInput(
                "a filter has neither prefixes nor a regex".into(),
            ));
        };
        Ok(Filter { on, matcher })
    }

    /// Matches events whose stream name starts with any prefix.
    pub fn stream_prefix<S: Into<String>>(prefixes: impl IntoIterator<Item = S>) -> Self {
        Filter {
            on: FilterOn::StreamName,
            matcher: FilterMatch::Prefixes(prefixes.into_iter().map(Into::into).collect()),
        }
    }

    /// Matches events whose type starts with any prefix.
    pub fn event_type_prefix<S: Into<String>>(prefixes: impl IntoIterator<Item = S>) -> Self {
        Filter {
            on: FilterOn::EventType,
            matcher: FilterMatch::Prefixes(prefixes.into_iter().map(Into::into).collect()),
        }
    }

    /// Matches events whose stream name matches the regex.
    pub fn stream_regex(pattern: &str) -> Result<Self> {
        Ok(Filter {
            on: FilterOn::StreamName,
            matcher: FilterMatch::Regex(FilterRegex::new(pattern)?),
        })
    }

    /// Matches events whose type matches the regex.
    pub fn event_type_regex(pattern: &str) -> Result<Self> {
        Ok(Filter {
            on: FilterOn::EventType,
            matcher: FilterMatch::Regex(FilterRegex::new(pattern)?),
        })
    }

    /// Excludes system events (types starting with `$`), as KurrentDB's clients offer.
    pub fn exclude_system_events() -> Self {
        Filter::event_type_regex(r"^[^$]").expect("a valid filter regex")
    }

    /// The regex, or `None` for a prefix filter.
    pub fn regex(&self) -> Option<&str> {
        match &self.matcher {
            FilterMatch::Regex(r) => Some(r.as_str()),
            FilterMatch::Prefixes(_) => None,
        }
    }

    /// Does the filter accept a stream name / event type pair?
    pub fn matches_parts(&self, stream: &str, event_type: &str) -> bool {
        let subject = match self.on {
            FilterOn::StreamName => stream,
            FilterOn::EventType => event_type,
        };
        match &self.matcher {
            FilterMatch::Prefixes(ps) => ps.iter().any(|p| subject.starts_with(p.as_str())),
            FilterMatch::Regex(r) => r.is_match(subject),
        }
    }

    /// Does the filter accept this event?
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.matches_parts(event.stream.as_str(), &event.event_type)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn re(p: &str) -> FilterRegex {
        FilterRegex::new(p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    #[test]
    fn filters_match() {
        let f = Filter::stream_prefix(["order-", "cart-"]);
        assert!(f.matches_parts("order-1", "X"));
        assert!(!f.matches_parts("user-1", "X"));
        let f = Filter::event_type_regex("^Order(Paid|Shipped)$").unwrap();
        assert!(f.matches_parts("s", "OrderPaid"));
        assert!(!f.matches_parts("s", "OrderCreated"));
        assert!(Filter::event_type_regex("(").is_err());
        assert!(!Filter::exclude_system_events().matches_parts("s", "$metadata"));
    }

    /// The look-ahead forms the official clients send mean what they mean
    /// under a backtracking engine (checked against fancy-regex itself).
    #[test]
    fn lookahead_forms_agree_with_a_backtracking_engine() {
        let patterns = [
            r"^(?!(\$.*)).*$",
            r"^(?!(\$.+$|PersistentConfig\d+$|Result$))",
            r"^(?=order-)(?!order-x).*-\d+$",
            r"(?i)^(?!\$)ORDER",
            r"^(?!a|b)",
            r"^(?=a)",
        ];
        let subjects = [
            "",
            "$",
            "$metadata",
            "$$x",
            "order-1",
            "order-x-1",
            "order-12",
            "Order-1",
            "a",
            "b",
            "ab",
            "c",
            "PersistentConfig1",
            "PersistentConfig",
            "Result",
            "Results",
            "ORDERx",
            "orderY",
            "$order",
        ];
        for p in patterns {
            let ours = re(p);
            let theirs = fancy_regex::Regex::new(p).unwrap();
            for s in subjects {
                assert_eq!(
                    ours.is_match(s),
                    theirs.is_match(s).unwrap(),
                    "pattern {p:?} on {s:?}"
                );
            }
        }
    }

    #[test]
    fn unsupported_forms_are_refused_saying_why() {
        for p in [
            r"(?<=a)b",
            r"^(?<!a)b",
            r"(a)\1",
            r"a(?!b)",
            r"^a(?!b)",
            r"^(?!(?!a))",
            r"(?>a)",
            r"(a|a)*(?i)(){1000}(?<=a).]",
        ] {
            let e = FilterRegex::new(p).unwrap_err().to_string();
            assert!(e.contains("linear time"), "{p:?}: {e}");
        }
        assert!(FilterRegex::new("(")
            .unwrap_err()
            .to_string()
            .contains("invalid"));
        let long = "a".repeat(MAX_FILTER_REGEX_LEN + 1);
        assert!(FilterRegex::new(&long).is_err());
    }

    #[test]
    fn a_non_empty_regex_wins_over_prefixes() {
        let f = Filter::from_parts(FilterOn::EventType, vec!["Order".into()], "^Paid").unwrap();
        assert!(f.matches_parts("s", "Paid") && !f.matches_parts("s", "OrderPaid"));
        let f = Filter::from_parts(FilterOn::EventType, vec!["Order".into()], "").unwrap();
        assert!(f.matches_parts("s", "OrderPaid"));
        assert!(Filter::from_parts(FilterOn::EventType, vec![], "").is_err());
    }

    /// Patterns that blow up backtracking engines take linear time here (or
    /// are refused). No timing assertion: a hang would show as a test that
    /// never ends, and the time is printed.
    #[test]
    fn pathological_patterns_stay_linear() {
        let subject = "a".repeat(1024);
        for p in [
            r"(a|a)*b",
            r"^(a+)+$",
            r"((){1000}){1000}b",
            r"^(?!(a|a)*b)(a|aa)+$",
        ] {
            let t = Instant::now();
            match FilterRegex::new(p) {
                Ok(r) => {
                    let _ = r.is_match(&subject);
                }
                Err(e) => assert!(e.to_string().contains("filter regex"), "{e}"),
            }
            eprintln!("{p:?}: {:?}", t.elapsed());
        }
    }
}
