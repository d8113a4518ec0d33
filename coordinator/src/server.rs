//! HTTP on one port: the WebSocket endpoint for workers, `/healthz`, `/metrics`, the
//! dashboard's event stream, and the volunteer page's static files at `/`.

use std::{net::SocketAddr, sync::Arc};

use axum::serve::{Listener, ListenerExt};
use axum::{
    extract::{ws::WebSocketUpgrade, ConnectInfo, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use distchan_protocol::wire::{self, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};

use crate::{connection, dashboard, Shared};

/// Builds the router for a coordinator.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route(&shared.config.ws_path, get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/dashboard/events", get(dashboard::events));
    if let Some(dir) = &shared.config.static_dir {
        router = router
            .route_service("/dashboard", ServeFile::new(dir.join("dashboard.html")))
            .fallback_service(ServeDir::new(dir));
    }
    router.with_state(shared)
}

/// Serves `router` on `listener` until `cancel` fires; `tap` sees every accepted connection.
pub(crate) fn spawn<L, F>(
    listener: L,
    tap: F,
    router: Router,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let listener = listener.tap_io(tap);
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
}

/// Turns off Nagle's algorithm: frames are batched by the writer already.
pub(crate) fn tcp_nodelay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// `GET /metrics`: every counter in the Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.hub.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| wire::parse_subprotocol(p).is_some())
        .collect();
    let peer = connection::PeerInfo {
        addr,
        origin: headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        offered_versions: offered
            .iter()
            .filter_map(|p| wire::parse_subprotocol(p))
            .collect(),
    };
    // Accept the worker's own subprotocol even when it names another version, so that the
    // handshake completes and the worker can read why it is refused.
    let ours = wire::subprotocol(PROTOCOL_VERSION);
    let mut protocols = vec![ours];
    protocols.extend(offered);
    let max = shared.config.max_frame;
    ws.protocols(protocols)
        .max_message_size(max)
        .max_frame_size(max)
        // Small reads keep an idle worker cheap (tungstenite fills its whole read buffer on
        // the first read); large frames are simply read in more pieces.
        .read_buffer_size(shared.config.read_buffer_size.max(1024))
        .on_failed_upgrade(
            move |e| tracing::warn!(peer = %addr, error = %e, "WebSocket upgrade failed"),
        )
        .on_upgrade(move |socket| connection::serve(socket, shared, peer))
        .into_response()
}
