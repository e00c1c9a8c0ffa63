//! Scavenges of a PostgreSQL store, as the server drives them (ADR 40):
//! `PostgresStore::scavenge_with` on a task of its own, one at a time,
//! throttled, stoppable; its progress read by the Operations service, the
//! `/admin/scavenge` routes and the task that writes `$scavenges-<id>`.
//! A "chunk" of a PostgreSQL scavenge is a page of up to
//! `factum_postgres::STREAMS_PAGE` streams (PostgreSQL has no chunk
//! files); "space saved" is the bytes of the deleted events' data and
//! metadata, which autovacuum reuses (the files do not shrink).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use factum_core::{Error, Result, Uuid};
use factum_postgres::{PgScavengeOptions, PgScavengeReport, PostgresStore, STREAMS_PAGE};
use factum_server::{ScavengeInfo, ScavengeRequest, ScavengeStart, Scavenger};

#[derive(Default)]
struct State {
    /// The running scavenge and its stop flag.
    current: Option<(ScavengeInfo, Arc<AtomicBool>)>,
    last: Option<ScavengeInfo>,
}

/// The PostgreSQL store's scavenges.
pub struct PostgresScavenger {
    store: PostgresStore,
    state: Arc<Mutex<State>>,
}

impl PostgresScavenger {
    /// Scavenges `store` when asked.
    pub fn new(store: PostgresStore) -> Self {
        PostgresScavenger {
            store,
            state: Arc::default(),
        }
    }
}

/// `report` in the server's terms.
fn update(info: &mut ScavengeInfo, report: &PgScavengeReport, started: Instant) {
    info.segments_total = report.streams_total.div_ceil(STREAMS_PAGE).max(1) as u32;
    info.segments_done = report.pages_done as u32;
    info.segments_rewritten = report.pages_changed as u32;
    info.events_removed = report.events_removed;
    info.space_saved = report.bytes_removed;
    info.time_taken_ms = started.elapsed().as_millis() as u64;
}

impl Scavenger for PostgresScavenger {
    fn start(&self, request: ScavengeRequest) -> Result<ScavengeStart> {
        if request.start_from_segment != 0 {
            return Err(Error::InvalidInput(
                "a PostgreSQL store has no chunks to start from: startFromChunk must be 0".into(),
            ));
        }
        if request.threshold > 0 {
            return Err(Error::InvalidInput(
                "a PostgreSQL scavenge deletes rows, not chunks: threshold must be 0 or less"
                    .into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Unsupported("a PostgreSQL scavenge runs on the server's runtime".into())
        })?;
        let id = Uuid::new_v4();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let mut state = self.state.lock().expect("scavenge state");
            if let Some((running, _)) = &state.current {
                return Ok(ScavengeStart::InProgress(running.scavenge_id));
            }
            let info = ScavengeInfo {
                scavenge_id: id,
                result: "InProgress".into(),
                error: String::new(),
                start_from_segment: 0,
                segments_total: 0,
                segments_done: 0,
                segments_rewritten: 0,
                events_removed: 0,
                space_saved: 0,
                time_taken_ms: 0,
                scavenge_link: format!("/streams/$scavenges-{id}"),
            };
            state.current = Some((info, stop.clone()));
        }
        let (store, state) = (self.store.clone(), self.state.clone());
        let options = PgScavengeOptions {
            throttle_percent: request.throttle_percent,
            ..PgScavengeOptions::default()
        };
        runtime.spawn(async move {
            let started = Instant::now();
            let mut progress = |r: &PgScavengeReport| {
                if let Some((info, _)) = &mut state.lock().expect("scavenge state").current {
                    update(info, r, started);
                }
            };
            let result = store.scavenge_with(options, &stop, &mut progress).await;
            let mut s = state.lock().expect("scavenge state");
            let Some((mut info, _)) = s.current.take() else {
                return;
            };
            match result {
                Ok(report) => {
                    update(&mut info, &report, started);
                    info.result = if report.stopped { "Stopped" } else { "Success" }.into();
                }
                Err(e) => {
                    tracing::error!(error = %e, "PostgreSQL scavenge failed");
                    info.time_taken_ms = started.elapsed().as_millis() as u64;
                    info.result = "Failed".into();
                    info.error = e.to_string();
                }
            }
            tracing::info!(id = %info.scavenge_id, result = %info.result, events_removed = info.events_removed, "scavenge ended");
            s.last = Some(info);
        });
        Ok(ScavengeStart::Started(id))
    }

    fn stop(&self, id: Option<Uuid>) -> bool {
        match &self.state.lock().expect("scavenge state").current {
            Some((info, stop)) if id.is_none_or(|id| info.scavenge_id == id) => {
                stop.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    fn current(&self) -> Option<ScavengeInfo> {
        let state = self.state.lock().expect("scavenge state");
        state.current.as_ref().map(|(info, _)| info.clone())
    }

    fn last(&self) -> Option<ScavengeInfo> {
        self.state.lock().expect("scavenge state").last.clone()
    }

    /// PostgreSQL's B-tree indexes have no tables to merge.
    fn merge_indexes(&self) -> Result<()> {
        Ok(())
    }
}
