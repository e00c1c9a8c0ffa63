//! Projection health as metrics: lag (positions and seconds behind the
//! store's head), progress counters and state, per projection, as plain
//! name → value samples and in Prometheus' text format.
//!
//! Projections run in the application's process, not in the server, so the
//! application exports them: append [`render_prometheus`] of its handles'
//! [`ProjectionHandle::metrics`](super::ProjectionHandle::metrics) to its own
//! `/metrics` output (the names do not collide with the server's
//! `factum_*` series).
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `factum_projection_lag_positions` | gauge | global positions committed but not yet processed |
//! | `factum_projection_lag_seconds` | gauge | age of the oldest unprocessed event (0 when caught up) |
//! | `factum_projection_position` | gauge | last position processed (absent before the first) |
//! | `factum_projection_generation` | gauge | the live generation of the read model |
//! | `factum_projection_live` | gauge | 1 when following live events at the head |
//! | `factum_projection_failed` | gauge | 1 when stopped by a failure |
//! | `factum_projection_events_applied_total` | counter | events applied since the runner started |
//! | `factum_projection_dead_lettered_total` | counter | events skipped into the dead-letter table |
//! | `factum_projection_retries_total` | counter | failed batch attempts that were retried |
//! | `factum_projection_resubscribes_total` | counter | subscriptions re-opened after transient store errors |
//!
//! Every sample carries the label `projection="<name>"`.

use std::fmt::Write;

use super::{Lag, ProjectionStatus, RunState};

/// A projection's status and lag at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionMetrics {
    /// Progress and health.
    pub status: ProjectionStatus,
    /// How far behind the store's head.
    pub lag: Lag,
}

/// Whether a sample only goes up (resets when the runner restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A count since the runner started.
    Counter,
}

/// One named value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricSample {
    /// The metric's name (see the module documentation).
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: MetricKind,
    /// The value.
    pub value: f64,
}

impl ProjectionMetrics {
    /// The projection's name (the `projection` label).
    pub fn name(&self) -> &str {
        &self.status.name
    }

    /// The samples, in a fixed order.
    pub fn samples(&self) -> Vec<MetricSample> {
        use MetricKind::{Counter, Gauge};
        let s = &self.status;
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let sample = |name, help, kind, value| MetricSample {
            name,
            help,
            kind,
            value,
        };
        let mut out = vec![
            sample(
                "factum_projection_lag_positions",
                "Global positions committed but not yet processed by the projection.",
                Gauge,
                self.lag.positions_behind as f64,
            ),
            sample(
                "factum_projection_lag_seconds",
                "Age of the oldest event the projection has not processed (0 when caught up).",
                Gauge,
                self.lag.seconds_behind,
            ),
        ];
        if let Some(p) = s.position {
            out.push(sample(
                "factum_projection_position",
                "Last global position the projection processed.",
                Gauge,
                p.0 as f64,
            ));
        }
        out.extend([
            sample(
                "factum_projection_generation",
                "Live generation of the read model.",
                Gauge,
                s.generation as f64,
            ),
            sample(
                "factum_projection_live",
                "1 when the projection follows live events at the head.",
                Gauge,
                flag(s.state == RunState::Live),
            ),
            sample(
                "factum_projection_failed",
                "1 when the projection stopped on a failure.",
                Gauge,
                flag(s.state == RunState::Failed),
            ),
            sample(
                "factum_projection_events_applied_total",
                "Events applied since the runner started.",
                Counter,
                s.events_applied as f64,
            ),
            sample(
                "factum_projection_dead_lettered_total",
                "Events skipped into the dead-letter table since the runner started.",
                Counter,
                s.dead_lettered as f64,
            ),
            sample(
                "factum_projection_retries_total",
                "Failed batch attempts that were retried.",
                Counter,
                s.retries as f64,
            ),
            sample(
                "factum_projection_resubscribes_total",
                "Subscriptions re-opened after transient event-store errors.",
                Counter,
                s.resubscribes as f64,
            ),
        ]);
        out
    }
}

/// Escapes a Prometheus label value.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The projections' samples in Prometheus' text exposition format (version
/// 0.0.4): each metric's `# HELP` and `# TYPE` once, then one line per
/// projection.
pub fn render_prometheus(projections: &[ProjectionMetrics]) -> String {
    let mut out = String::new();
    let all: Vec<(String, Vec<MetricSample>)> = projections
        .iter()
        .map(|m| (label_value(m.name()), m.samples()))
        .collect();
    let mut names: Vec<(&'static str, &'static str, MetricKind)> = Vec::new();
    for (_, samples) in &all {
        for s in samples {
            if !names.iter().any(|(n, _, _)| *n == s.name) {
                names.push((s.name, s.help, s.kind));
            }
        }
    }
    for (name, help, kind) in names {
        let kind = match kind {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (projection, samples) in &all {
            for s in samples.iter().filter(|s| s.name == name) {
                let _ = writeln!(out, "{name}{{projection=\"{projection}\"}} {}", s.value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use factum_core::Position;

    use super::*;

    fn metrics(name: &str, state: RunState, position: Option<u64>) -> ProjectionMetrics {
        ProjectionMetrics {
            status: ProjectionStatus {
                name: name.into(),
                generation: 2,
                state,
                position: position.map(Position),
                events_applied: 7,
                dead_lettered: 1,
                retries: 3,
                resubscribes: 4,
                last_error: None,
                last_event_at: None,
            },
            lag: Lag {
                positions_behind: 5,
                seconds_behind: 1.5,
                head: Some(Position(9)),
                position: position.map(Position),
            },
        }
    }

    #[test]
    fn samples_and_prometheus_text() {
        let live = metrics("balances", RunState::Live, Some(4));
        let samples = live.samples();
        let get = |n: &str| samples.iter().find(|s| s.name == n).map(|s| s.value);
        assert_eq!(get("factum_projection_lag_positions"), Some(5.0));
        assert_eq!(get("factum_projection_lag_seconds"), Some(1.5));
        assert_eq!(get("factum_projection_position"), Some(4.0));
        assert_eq!(get("factum_projection_live"), Some(1.0));
        assert_eq!(get("factum_projection_failed"), Some(0.0));
        assert_eq!(get("factum_projection_resubscribes_total"), Some(4.0));
        let fresh = metrics("odd\"name", RunState::Failed, None);
        assert_eq!(
            fresh
                .samples()
                .iter()
                .find(|s| s.name == "factum_projection_position"),
            None,
            "no position before the first event"
        );

        let text = render_prometheus(&[live, fresh]);
        assert_eq!(
            text.matches("# TYPE factum_projection_lag_positions gauge")
                .count(),
            1
        );
        assert!(text.contains(
            "# TYPE factum_projection_lag_positions gauge\n\
             factum_projection_lag_positions{projection=\"balances\"} 5\n\
             factum_projection_lag_positions{projection=\"odd\\\"name\"} 5\n"
        ));
        assert!(text.contains("# TYPE factum_projection_events_applied_total counter\n"));
        assert!(text.contains("factum_projection_failed{projection=\"odd\\\"name\"} 1\n"));
        assert!(text.contains("factum_projection_position{projection=\"balances\"} 4\n"));
        assert!(!text.contains("factum_projection_position{projection=\"odd"));
        assert_eq!(render_prometheus(&[]), "");
    }
}
