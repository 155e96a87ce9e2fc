//! `GET /api/v1/alerts/stream`: alert events pushed as they are committed (server-sent
//! events), for a page that stays open all day. Each event is an SSE message `event: alert`
//! with `id:` its outbox sequence number and the same JSON as `cs/v1/alerts/events`. A client
//! that reconnects with `Last-Event-ID` (browsers do) gets what it missed from the outbox;
//! a new one starts from now. The stream follows the commits' wake-up and reads the outbox, so
//! a burst is never thinned out.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::AppState;
use crate::sink::notify::Envelope;
use crate::store::Table;

/// Events sent per outbox read.
const BATCH: usize = 200;

/// The stream.
pub async fn alerts_stream(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = match resumed {
        Some(seq) => seq,
        None => s.store.last_id(Table::AlertEvents).unwrap_or(0),
    };
    let wake = s.alerts.subscribe();
    let stream = futures_util::stream::unfold(
        (s, wake, after, Vec::new().into_iter()),
        |(mut s, mut wake, mut after, mut ready)| async move {
            loop {
                if *s.stopping.borrow() {
                    return None;
                }
                if let Some((seq, event)) = ready.next() {
                    let data =
                        serde_json::to_string(&Envelope::new(seq, &event)).unwrap_or_default();
                    let message = Event::default()
                        .event("alert")
                        .id(seq.to_string())
                        .data(data);
                    return Some((Ok(message), (s, wake, after, ready)));
                }
                let store = s.store.clone();
                let read =
                    tokio::task::spawn_blocking(move || store.alert_events_after(after, BATCH))
                        .await;
                match read {
                    Ok(Ok(events)) if !events.is_empty() => {
                        after = events.last().map_or(after, |(seq, _)| *seq);
                        ready = events.into_iter();
                        continue;
                    }
                    Ok(Ok(_)) => {}
                    _ => tracing::warn!("alert stream: cannot read the outbox; retrying"),
                }
                // Nothing new: wait for the next commit (or look again in a while); the
                // gateway stopping ends the stream.
                tokio::select! {
                    changed = wake.changed() => if changed.is_err() {
                        return None;
                    },
                    _ = s.stopping.changed() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
