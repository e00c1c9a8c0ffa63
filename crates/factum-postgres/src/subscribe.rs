//! Subscriptions: PostgreSQL's side of the shared subscription loop
//! (`factum_core::follow`), woken by `LISTEN`/`NOTIFY` and by a poll timer
//! as the fallback when a notification is missed or the listening
//! connection drops. Transient errors (the server restarting) make the loop
//! wait and resume from its cursor.

use std::sync::Arc;
use std::time::Duration;

use factum_core::follow::{
    follow, page_bound, start_cursor, stream_page, stream_page_request, Follow, MAX_SCAN,
};
use factum_core::{RecordedEvent, Result, Subscribe, Subscription, SubscriptionTarget};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use crate::{read, Inner};

/// Starts the listener: the returned value changes on every notification on
/// `channel` and at least every `poll`.
pub(crate) fn listen(
    pg: tokio_postgres::Config,
    tls: crate::tls::Tls,
    channel: String,
    poll: Duration,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|v| *v = v.wrapping_add(1));
        while !tx.is_closed() {
            match pg.connect(tls.clone()).await {
                Ok((client, mut conn)) => {
                    let (ntx, mut nrx) = mpsc::unbounded_channel::<()>();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                        while let Some(m) = messages.next().await {
                            match m {
                                Ok(AsyncMessage::Notification(_)) => {
                                    if ntx.send(()).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => return,
                            }
                        }
                    });
                    if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
                        tracing::warn!("LISTEN {channel} failed: {e}; polling");
                    }
                    loop {
                        tokio::select! {
                            n = nrx.recv() => match n {
                                Some(()) => bump(&tx),
                                None => break, // connection lost: reconnect
                            },
                            _ = tokio::time::sleep(poll) => bump(&tx),
                            _ = tx.closed() => { driver.abort(); return; }
                        }
                    }
                    driver.abort();
                }
                Err(e) => {
                    tracing::warn!("PostgreSQL listener cannot connect ({e}); polling");
                    tokio::time::sleep(poll).await;
                    bump(&tx);
                }
            }
        }
    });
    rx
}

struct PgFollow {
    inner: Arc<Inner>,
    wake: watch::Receiver<u64>,
}

impl Follow for PgFollow {
    async fn page(
        &mut self,
        target: &SubscriptionTarget,
        cursor: &mut u64,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        match target {
            SubscriptionTarget::All(filter) => {
                let (events, next) = read::scan(
                    &self.inner,
                    *cursor,
                    true,
                    page_bound(),
                    filter.as_ref(),
                    None,
                    MAX_SCAN,
                )
                .await?;
                *cursor = next;
                Ok((events, next >= read::next_position(&self.inner).await?))
            }
            SubscriptionTarget::Stream(stream) => {
                let read =
                    read::read_stream(&self.inner, &stream_page_request(stream, *cursor)).await;
                let (events, next) = stream_page(read, *cursor)?;
                *cursor = next;
                Ok((events, true))
            }
        }
    }

    async fn behind(&mut self, target: &SubscriptionTarget, cursor: u64) -> u64 {
        let head = match target {
            SubscriptionTarget::All(_) => read::next_position(&self.inner).await.ok(),
            SubscriptionTarget::Stream(s) => read::stream_state(&self.inner, s.as_str())
                .await
                .ok()
                .map(|st| st.and_then(|(_, st)| st.last_revision).map_or(0, |r| r + 1)),
        };
        head.map_or(0, |h| h.saturating_sub(cursor))
    }

    fn mark_seen(&mut self) {
        self.wake.borrow_and_update();
    }

    async fn wait(&mut self) -> bool {
        self.wake.changed().await.is_ok()
    }
}

pub(crate) async fn start(inner: Arc<Inner>, req: Subscribe) -> Result<Subscription> {
    // Listening begins before the start is read (the first subscription
    // starts the listener); the poll timer covers the moment until it is.
    let wake = inner.wake();
    let cursor = match start_cursor(&req)? {
        Some(cursor) => cursor,
        None => match &req.target {
            SubscriptionTarget::All(_) => read::next_position(&inner).await?,
            SubscriptionTarget::Stream(s) => read::stream_state(&inner, s.as_str())
                .await?
                .and_then(|(_, st)| st.last_revision)
                .map_or(0, |r| r + 1),
        },
    };
    let fell_behind = inner.config.fell_behind_events;
    let source = PgFollow { wake, inner };
    Ok(follow(source, req.target, cursor, fell_behind))
}
