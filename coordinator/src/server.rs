//! HTTP on one port: the WebSocket endpoint for workers, `/healthz`, `/metrics`, the task
//! module (for pages of any origin), the dashboard's event stream, and the volunteer page's
//! static files at `/`.
//!
//! Connections are accepted by a loop of our own ([`spawn`]) and served by hyper's HTTP/1.1
//! connection builder, for its header-read timeout; each connection runs on a task of its
//! own (with its TLS handshake, if any), and those that are not workers yet are capped.
//!
//! The WebSocket upgrade is answered here (RFC 6455's opening handshake, with hyper's
//! upgrade and tokio-tungstenite), so that each worker's WebSocket runs over a `Socket`
//! (see `socket`) that keeps idle workers small.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::serve::Listener;
use axum::{
    extract::{ConnectInfo, Path, Query, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use distchan_protocol::{accept, wire};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{timeout, Instant},
};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::WebSocketConfig};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;
use tower_http::{
    cors::{Any, CorsLayer},
    services::{ServeDir, ServeFile},
};

use crate::{connection, dashboard, socket::Socket, websocket::WebSocket, Shared};

/// Builds the router for a coordinator.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route(&shared.config.ws_path, get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/modules/{file}", get(module_file).layer(module_cors()))
        .route("/dashboard/events", get(dashboard::events));
    if let Some(dir) = &shared.config.static_dir {
        router = router
            .route_service("/dashboard", ServeFile::new(dir.join("dashboard.html")))
            .fallback_service(ServeDir::new(dir));
    }
    router.with_state(shared)
}

/// Most often a WARN about refused connections is logged.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `cancel` fires; `tap` sees every accepted connection.
///
/// Each connection is served on a task of its own (the TLS handshake too, when
/// [`Config::tls`](crate::Config::tls) is set), so that no client holds up the accepting of
/// others, and counts as pending (see [`Pending`]) until it becomes a worker; beyond
/// [`Config::max_pending_connections`](crate::Config::max_pending_connections) a new
/// connection is closed at once. Its TLS handshake and its request head must each come
/// within [`Config::header_read_timeout`](crate::Config::header_read_timeout).
pub(crate) fn spawn<L, F>(
    mut listener: L,
    mut tap: F,
    router: Router,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
    tokio::spawn(async move {
        let config = &shared.config;
        let max_pending = config.max_pending_connections.max(1);
        let pending = Arc::new(Semaphore::new(max_pending));
        let tls = config.tls.as_ref().map(|tls| tls.acceptor());
        let counters = shared.counters.clone();
        let connections = TaskTracker::new();
        let mut last_warning: Option<Instant> = None;
        loop {
            // Errors (such as running out of file descriptors) are retried by `accept`.
            let (mut io, addr) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                drop(io);
                counters.connections_refused.inc();
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        max_pending,
                        refused = counters.connections_refused.get(),
                        "too many connections that are not workers: closing new ones at once"
                    );
                }
                continue;
            };
            tap(&mut io);
            counters.connections_pending.inc();
            let pending = PendingSlot::new(Pending {
                _permit: permit,
                gauge: counters.connections_pending.clone(),
            });
            connections.spawn(serve_connection(
                io,
                addr,
                tls.clone(),
                router.clone(),
                pending,
                config.header_read_timeout,
                cancel.clone(),
            ));
        }
        drop(listener);
        connections.close();
        connections.wait().await;
    })
}

/// One accepted connection: the TLS handshake if any, then HTTP/1.1 until it closes or is
/// upgraded.
async fn serve_connection<I>(
    io: I,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    pending: PendingSlot,
    header_read_timeout: Duration,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(acceptor) = tls else {
        return serve_http(io, addr, router, pending, header_read_timeout, cancel).await;
    };
    match timeout(header_read_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => {
            serve_http(stream, addr, router, pending, header_read_timeout, cancel).await
        }
        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %addr, "no TLS handshake in time; closing"),
    }
}

/// HTTP/1.1 on one connection, with upgrades; every request carries the peer's address
/// (`ConnectInfo`) and the connection's [`PendingSlot`].
async fn serve_http<I>(
    io: I,
    addr: SocketAddr,
    router: Router,
    pending: PendingSlot,
    header_read_timeout: Duration,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(addr));
        request.extensions_mut().insert(pending.clone());
        request
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %addr, error = %e, "HTTP connection ended");
    }
}

/// A connection counted in the `connections_pending` gauge, holding one of the
/// [`Config::max_pending_connections`](crate::Config::max_pending_connections) places,
/// until it is dropped.
pub(crate) struct Pending {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Where a connection's [`Pending`] waits: dropped with the connection, unless the
/// WebSocket upgrade takes it along to drop once the hello is accepted.
#[derive(Clone)]
pub(crate) struct PendingSlot(Arc<Mutex<Option<Pending>>>);

impl PendingSlot {
    fn new(pending: Pending) -> Self {
        PendingSlot(Arc::new(Mutex::new(Some(pending))))
    }

    /// Takes the connection's place out of the slot.
    fn take(&self) -> Option<Pending> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
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

/// Lets a page from any origin fetch the task module (a volunteer page served elsewhere,
/// whose WebSocket reaches this coordinator all the same), with the access token as a bearer
/// token: the download needs the token when the connection does, whatever the origin.
fn module_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET])
        .allow_headers([header::AUTHORIZATION])
        .max_age(Duration::from_secs(86_400))
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
    let addr = match forwarded_for(headers) {
        Some(ip) if shared.config.trust_forwarded_for => SocketAddr::new(ip, 0),
        _ => addr,
    };
    let pending = request
        .extensions()
        .get::<PendingSlot>()
        .and_then(PendingSlot::take);
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
                let io = Socket::new(TokioIo::new(upgraded), shared.read_pool.clone())
                    .read_large_messages(max);
                let ws = WebSocket::server(io, config).await;
                connection::serve(ws, shared, peer, pending).await;
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

/// The first address of the `X-Forwarded-For` header (the client, as the first proxy saw
/// it), if it is one.
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let first = headers
        .get("x-forwarded-for")?
        .to_str()
        .ok()?
        .split(',')
        .next()?
        .trim();
    // An IPv6 address may come in brackets, and either kind with a port.
    first
        .parse()
        .ok()
        .or_else(|| first.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| first.trim_matches(['[', ']']).parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_takes_the_first_address() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers), None);
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.1"),
        );
        assert_eq!(
            forwarded_for(&headers),
            Some("203.0.113.7".parse().unwrap())
        );
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:4711"),
        );
        assert_eq!(
            forwarded_for(&headers),
            Some("2001:db8::1".parse().unwrap())
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("unknown"));
        assert_eq!(forwarded_for(&headers), None);
    }
}
