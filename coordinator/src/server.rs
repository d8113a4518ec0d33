//! HTTP on one port: the WebSocket endpoint for workers, `/healthz`, `/metrics`, the
//! dashboard's event stream, and the volunteer page's static files at `/`.
//!
//! The WebSocket upgrade is answered here (RFC 6455's opening handshake, with hyper's
//! upgrade and tokio-tungstenite), so that each worker's WebSocket runs over a `Socket`
//! (see `socket`) that keeps idle workers small.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use axum::serve::{Listener, ListenerExt};
use axum::{
    extract::{ConnectInfo, Path, Query, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use distchan_protocol::{accept, wire};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};

use crate::{connection, dashboard, socket::Socket, websocket::WebSocket, Shared};

/// Builds the router for a coordinator.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route(&shared.config.ws_path, get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/modules/{file}", get(module_file))
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

/// `GET /modules/<sha256>.wasm`: the task module, immutable (its name is its hash). When
/// the coordinator wants an access token, the download needs it too (as a bearer token or
/// a `token` query parameter).
async fn module_file(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let served = shared
        .module
        .as_ref()
        .filter(|(spec, _)| file.strip_suffix(".wasm") == Some(spec.sha256.as_str()));
    let Some((spec, module)) = served else {
        return (StatusCode::NOT_FOUND, "no such module\n").into_response();
    };
    if let Some(expected) = &shared.config.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(query.get("token").map(String::as_str));
        if !accept::token_matches(given, expected) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "this coordinator wants an access token\n",
            )
                .into_response();
        }
    }
    shared.counters.module_downloads.inc();
    let cache = if shared.config.token.is_some() {
        "private, max-age=31536000, immutable"
    } else {
        "public, max-age=31536000, immutable"
    };
    (
        [
            (header::CONTENT_TYPE, "application/wasm".to_owned()),
            (header::CACHE_CONTROL, cache.to_owned()),
            (header::ETAG, format!("\"{}\"", spec.sha256)),
        ],
        module.bytes().clone(),
    )
        .into_response()
}

/// `GET /ws`: upgrades to a WebSocket and serves the worker on it.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if request.method() != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades use GET\n",
        )
            .into_response();
    }
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this endpoint speaks WebSocket only\n",
        )
            .into_response();
    }
    if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return (
            StatusCode::BAD_REQUEST,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "unsupported WebSocket version: 13 is spoken here\n",
        )
            .into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
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
    // Also another version's, so that the worker can read why it is refused.
    let protocol = accept::agreed_subprotocol(&offered).map(str::to_owned);
    let max = shared.config.max_frame;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(shared.config.read_buffer_size.max(256));
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = Socket::new(TokioIo::new(upgraded), shared.read_pool.clone());
                let ws = WebSocket::server(io, config).await;
                connection::serve(ws, shared, peer).await;
            }
            Err(e) => tracing::warn!(peer = %addr, error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// True when header `name` lists `token` (case-insensitively, comma-separated).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
