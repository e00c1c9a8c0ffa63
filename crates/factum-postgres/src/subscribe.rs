//! Subscriptions: the same pull loop as the engine's (catch-up and live are
//! one read from one cursor, so the hand-over can neither skip nor repeat),
//! woken by `LISTEN`/`NOTIFY` and by a poll timer as the fallback when a
//! notification is missed or the listening connection drops.

use std::sync::Arc;
use std::time::Duration;

use factum_core::{
    Error, Position, ReadStream, RecordedEvent, Result, StreamRevision, Subscribe, Subscription,
    SubscriptionMessage, SubscriptionStart, SubscriptionTarget,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use crate::{read, Inner};

const PAGE: u64 = 512;
const MAX_SCAN: u64 = 8192;

/// Starts the listener: the returned value changes on every notification on
/// `channel` and at least every `poll`.
pub(crate) fn listen(
    pg: tokio_postgres::Config,
    channel: String,
    poll: Duration,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|v| *v = v.wrapping_add(1));
        while !tx.is_closed() {
            match pg.connect(tokio_postgres::NoTls).await {
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

struct Cursor {
    target: SubscriptionTarget,
    next: u64,
}

pub(crate) async fn start(inner: Arc<Inner>, req: Subscribe) -> Result<Subscription> {
    if let SubscriptionTarget::Stream(s) = &req.target {
        if s.is_all() {
            return Err(Error::InvalidInput(
                "subscribe to $all with SubscriptionTarget::All".into(),
            ));
        }
    }
    let next = match (&req.target, req.start) {
        (_, SubscriptionStart::Beginning) => 0,
        (_, SubscriptionStart::After(n)) => n
            .checked_add(1)
            .ok_or_else(|| Error::InvalidInput("subscription start is past the end".into()))?,
        (SubscriptionTarget::All(_), SubscriptionStart::End) => read::next_position(&inner).await?,
        (SubscriptionTarget::Stream(s), SubscriptionStart::End) => {
            read::stream_state(&inner, s.as_str())
                .await?
                .and_then(|(_, st)| st.last_revision)
                .map_or(0, |r| r + 1)
        }
    };
    let (tx, rx) = mpsc::channel(512);
    tokio::spawn(run(
        inner,
        Cursor {
            target: req.target,
            next,
        },
        tx,
    ));
    Ok(Subscription::new(ReceiverStream(rx)))
}

struct ReceiverStream(mpsc::Receiver<Result<SubscriptionMessage>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<SubscriptionMessage>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

async fn read_page(inner: &Inner, cursor: &mut Cursor) -> Result<(Vec<RecordedEvent>, bool)> {
    match &cursor.target {
        SubscriptionTarget::All(filter) => {
            let (events, next) = read::scan(
                inner,
                cursor.next,
                true,
                PAGE,
                filter.as_ref(),
                None,
                MAX_SCAN,
            )
            .await?;
            cursor.next = next;
            let at_head = cursor.next >= read::next_position(inner).await?;
            Ok((events, at_head))
        }
        SubscriptionTarget::Stream(stream) => {
            let req = ReadStream::forwards(stream.clone())
                .from_revision(StreamRevision(cursor.next))
                .max_count(PAGE);
            match read::read_stream(inner, &req).await {
                Ok(events) => {
                    if let Some(last) = events.last() {
                        cursor.next = last.read_revision().0 + 1;
                    }
                    Ok((events, true))
                }
                Err(Error::StreamNotFound { .. }) => Ok((Vec::new(), true)),
                Err(e) => Err(e),
            }
        }
    }
}

async fn run(inner: Arc<Inner>, mut cursor: Cursor, tx: mpsc::Sender<Result<SubscriptionMessage>>) {
    let mut wake = inner.wake.clone();
    let mut live = false;
    let mut last_checkpoint = None;
    loop {
        wake.borrow_and_update();
        let (events, at_head) = match read_page(&inner, &mut cursor).await {
            Ok(p) => p,
            Err(e) if e.is_transient() => {
                // PostgreSQL is down or restarting: wait and resume from the cursor.
                tokio::select! {
                    _ = tokio::time::sleep(inner.config.poll_interval) => continue,
                    _ = tx.closed() => return,
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if events.is_empty() && !at_head {
            continue;
        }
        if events.is_empty() {
            if !live {
                live = true;
                if tx.send(Ok(SubscriptionMessage::CaughtUp)).await.is_err() {
                    return;
                }
            }
            if let SubscriptionTarget::All(Some(_)) = &cursor.target {
                if cursor.next > 0 && last_checkpoint != Some(cursor.next) {
                    last_checkpoint = Some(cursor.next);
                    let cp = SubscriptionMessage::Checkpoint(Position(cursor.next - 1));
                    if tx.send(Ok(cp)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            continue;
        }
        let last_position = events.last().map(|e| e.position.0);
        for e in events {
            if tx.send(Ok(SubscriptionMessage::Event(e))).await.is_err() {
                return;
            }
        }
        if live {
            if let (Some(last), Ok(head)) = (last_position, read::next_position(&inner).await) {
                if head.saturating_sub(last + 1) > inner.config.fell_behind_events {
                    live = false;
                    if tx.send(Ok(SubscriptionMessage::FellBehind)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
