//! The live dashboard's feed: a server-sent-event stream at `/dashboard/events` that pushes
//! the counters and the worker list twice a second, plus every application event
//! published with [`Coordinator::publish`](crate::Coordinator::publish) (replayed to
//! dashboards opened later, so a picture can be shown whole).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;
use tokio::sync::broadcast;

use crate::Shared;

/// Most application events kept for dashboards opened later.
const HISTORY: usize = 20_000;

/// Fans application events out to every open dashboard.
#[derive(Debug)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<str>>,
    history: std::sync::Mutex<Vec<Arc<str>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(4096).0,
            history: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Hub {
    /// Sends `json` to every open dashboard and keeps it for later ones.
    pub fn publish(&self, json: String) {
        let event: Arc<str> = json.into();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() < HISTORY {
            history.push(event.clone());
        }
        // Subscribing happens under the same lock, so no event is missed or doubled.
        let _ = self.tx.send(event);
    }

    fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        (history.clone(), self.tx.subscribe())
    }
}

/// `GET /dashboard/events`: `status` events (counters, workers) and `app` events.
pub(crate) async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (history, rx) = shared.dashboard.subscribe();
    let state = (
        shared,
        history.into_iter(),
        rx,
        tokio::time::interval(Duration::from_millis(500)),
    );
    let stream = futures_util::stream::unfold(
        state,
        |(shared, mut history, mut rx, mut tick)| async move {
            if let Some(past) = history.next() {
                let event = Event::default().event("app").data(&*past);
                return Some((Ok(event), (shared, history, rx, tick)));
            }
            let event = tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Ok(json) => Event::default().event("app").data(&*json),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tick.tick() => {
                    let status = serde_json::json!({
                        "stats": shared.hub.stats(),
                        "workers": shared.hub.snapshot(),
                        "task": shared.config.task,
                        "uptime_ms": shared.epoch.elapsed().as_millis() as u64,
                    });
                    Event::default().event("status").data(status.to_string())
                }
            };
            Some((Ok(event), (shared, history, rx, tick)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
