//! Server metrics in Prometheus' text format, kept with atomics (no
//! registry crate: a handful of counters and fixed-bucket histograms).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{label}le=\"{bound}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{label}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let brace = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", s.trim_end_matches(','))
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", brace(label));
        let _ = writeln!(out, "{name}_count{} {count}", brace(label));
    }
}

/// Everything the server counts.
#[derive(Default)]
pub struct Metrics {
    /// Successful appends (requests).
    pub appends: AtomicU64,
    /// Events written by successful appends.
    pub appended_events: AtomicU64,
    /// Payload bytes (data + metadata) of appended events.
    pub appended_bytes: AtomicU64,
    /// Appends refused (conflict, deleted, bad input, …).
    pub append_errors: AtomicU64,
    /// Read requests (count reads, not subscriptions).
    pub reads: AtomicU64,
    /// Events sent by reads and subscriptions.
    pub read_events: AtomicU64,
    /// Payload bytes of events sent.
    pub read_bytes: AtomicU64,
    /// Subscriptions currently open.
    pub subscriptions_active: AtomicI64,
    /// Subscriptions opened since start.
    pub subscriptions_total: AtomicU64,
    /// Append latency (request received → acknowledged).
    pub append_latency: Histogram,
    /// Count-read latency (request → last message queued).
    pub read_latency: Histogram,
    /// Requests whose credentials did not check out (ADR 31).
    pub failed_logins: AtomicU64,
}

impl Metrics {
    /// Counts one request refused for its credentials.
    pub fn failed_login(&self) {
        self.failed_logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one successful append.
    pub fn appended(&self, events: usize, bytes: usize, took: Duration) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.appended_events
            .fetch_add(events as u64, Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.append_latency.observe(took);
    }

    /// Counts events sent to a reader.
    pub fn sent(&self, events: u64, bytes: u64) {
        self.read_events.fetch_add(events, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `store_bytes` is the store's size on
    /// disk when the backend can tell.
    pub fn render(&self, store_bytes: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "factum_appends_total",
            "Successful append requests.",
            load(&self.appends),
        );
        counter(
            &mut out,
            "factum_appended_events_total",
            "Events written by appends.",
            load(&self.appended_events),
        );
        counter(
            &mut out,
            "factum_appended_bytes_total",
            "Data and metadata bytes of appended events.",
            load(&self.appended_bytes),
        );
        counter(
            &mut out,
            "factum_append_errors_total",
            "Append requests refused.",
            load(&self.append_errors),
        );
        counter(
            &mut out,
            "factum_reads_total",
            "Read requests (not subscriptions).",
            load(&self.reads),
        );
        counter(
            &mut out,
            "factum_read_events_total",
            "Events sent by reads and subscriptions.",
            load(&self.read_events),
        );
        counter(
            &mut out,
            "factum_read_bytes_total",
            "Data and metadata bytes of events sent.",
            load(&self.read_bytes),
        );
        counter(
            &mut out,
            "factum_subscriptions_total",
            "Subscriptions opened.",
            load(&self.subscriptions_total),
        );
        counter(
            &mut out,
            "factum_failed_logins_total",
            "Requests refused for credentials that did not check out.",
            load(&self.failed_logins),
        );
        let active = self.subscriptions_active.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP factum_subscriptions_active Subscriptions open now.\n# TYPE factum_subscriptions_active gauge\nfactum_subscriptions_active {active}"
        );
        self.append_latency.render(
            &mut out,
            "factum_append_duration_seconds",
            "Append latency.",
            "",
        );
        self.read_latency.render(
            &mut out,
            "factum_read_duration_seconds",
            "Read latency.",
            "",
        );
        if let Some(b) = store_bytes {
            let _ = writeln!(
                out,
                "# HELP factum_store_bytes Size of the store on disk.\n# TYPE factum_store_bytes gauge\nfactum_store_bytes {b}"
            );
        }
        out
    }
}

/// A Prometheus label value: `\\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per consumer group: in flight, parked, lag, consumers, deliveries.
pub fn render_groups(out: &mut String, groups: &[factum_persistent::GroupInfo]) {
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&factum_persistent::GroupInfo) -> u64,
    );
    let metrics: [Metric; 6] = [
        ("factum_persistent_in_flight", "gauge", "Events delivered to a group's consumers and not yet acked.", |g| g.in_flight),
        ("factum_persistent_parked", "gauge", "Events in a group's parked stream not yet replayed.", |g| g.parked),
        ("factum_persistent_lag", "gauge", "Events a group's checkpoint trails the newest event it read.", |g| g.lag()),
        ("factum_persistent_connections", "gauge", "Consumers connected to a group.", |g| g.connections.len() as u64),
        ("factum_persistent_delivered_total", "counter", "Deliveries by a group since it started (redeliveries included).", |g| g.total_items),
        ("factum_persistent_redelivered_total", "counter", "Redeliveries by a group since it started (timeouts, retries, consumers gone, replays).", |g| g.redelivered),
    ];
    let name = "factum_persistent_faulted";
    let _ = writeln!(out, "# HELP {name} 1 when a group is out of service because its stored configuration or checkpoint cannot be read (the reason label says why).\n# TYPE {name} gauge");
    for g in groups {
        let reason = match &g.error {
            Some(e) => format!(",reason=\"{}\"", label_value(e)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{name}{{source=\"{}\",group=\"{}\"{reason}}} {}",
            label_value(g.source.name()),
            label_value(&g.group),
            u8::from(g.error.is_some())
        );
    }
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in groups {
            let _ = writeln!(
                out,
                "{name}{{source=\"{}\",group=\"{}\"}} {}",
                label_value(g.source.name()),
                label_value(&g.group),
                value(g)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.appended(3, 100, Duration::from_micros(300));
        m.appended(1, 10, Duration::from_millis(30));
        let text = m.render(Some(4096));
        assert!(text.contains("factum_appended_events_total 4\n"));
        assert!(text.contains("factum_append_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("factum_append_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("factum_append_duration_seconds_count 2\n"));
        assert!(text.contains("factum_store_bytes 4096\n"));
    }

    #[test]
    fn renders_groups_with_escaped_labels() {
        let g = factum_persistent::GroupInfo {
            source: factum_persistent::GroupSource::Stream("or\"ders".into()),
            group: "g1".into(),
            error: None,
            status: "Live",
            settings: Default::default(),
            connections: Vec::new(),
            total_items: 12,
            average_per_second: 0,
            count_since_last_measurement: 0,
            last_checkpointed_position: Some(5),
            last_known_position: Some(9),
            buffered: 0,
            retry_buffered: 0,
            in_flight: 3,
            parked: 2,
            redelivered: 1,
            parked_total: 2,
        };
        let faulted = factum_persistent::GroupInfo {
            group: "g2".into(),
            status: "Faulted",
            error: Some("checkpoint of or\"ders::g2 is not JSON".into()),
            ..g.clone()
        };
        let mut text = String::new();
        render_groups(&mut text, &[g, faulted]);
        assert!(
            text.contains("factum_persistent_faulted{source=\"or\\\"ders\",group=\"g1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("factum_persistent_faulted{source=\"or\\\"ders\",group=\"g2\",reason=\"checkpoint of or\\\"ders::g2 is not JSON\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("factum_persistent_in_flight{source=\"or\\\"ders\",group=\"g1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("factum_persistent_lag{source=\"or\\\"ders\",group=\"g1\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("factum_persistent_parked{source=\"or\\\"ders\",group=\"g1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE factum_persistent_delivered_total counter\n"),
            "{text}"
        );
    }
}
