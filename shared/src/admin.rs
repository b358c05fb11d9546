//! The admin HTTP server: small, on its own address, stopped like everything else.
//!
//! Endpoints (GET or HEAD):
//! - `/metrics`: the component's own registry, Prometheus text format.
//! - `/healthz`: 200 while the process serves at all (liveness); 503 once a
//!   part it cannot work without has died ([`Health::fail`]), until it exits.
//! - `/readyz`: 200 once the component is listening with a valid config, 503
//!   before that, while draining and after a failure (readiness: take it out
//!   of the Service).
//! - whatever the component adds with [`Admin::route`]: the status page `/`
//!   and its JSON `/status`, the router's `/routes`.
//!
//! There is no authentication: the server is for a pod's probes, a
//! scraper and an operator's port-forward, and must be kept off the public
//! network (docs/operations.md). It shows nothing secret. Pages are sent
//! with a Content-Security-Policy that allows no script, and nothing it
//! serves may be cached or framed.
//!
//! HTTP/1.1 only, through hyper; a client gets 10 s to send its request head,
//! so a stalled scraper cannot hold a connection forever.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A status page loads nothing but its own inline style, and runs nothing.
const PAGE_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether the component should receive traffic. Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether the component still works: a part it cannot do without (the
/// broker's message router, say) has died. Set once; cheap to share.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<std::sync::OnceLock<String>>);

impl Health {
    /// Mark the component failed, with what failed. The first failure stays.
    pub fn fail(&self, what: impl Into<String>) {
        let _ = self.0.set(what.into());
    }

    /// What failed, if anything did.
    pub fn failure(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// A body and its content type, produced on each request.
pub type Handler = Arc<dyn Fn() -> (&'static str, String) + Send + Sync>;

/// What the admin server serves.
#[derive(Clone)]
pub struct Admin {
    registry: Registry,
    readiness: Readiness,
    health: Health,
    extra: HashMap<&'static str, Handler>,
}

impl Admin {
    pub fn new(registry: Registry, readiness: Readiness) -> Self {
        Self {
            registry,
            readiness,
            health: Health::default(),
            extra: HashMap::new(),
        }
    }

    /// Answer `/healthz` (and `/readyz`) from `health`.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Serve `path` with `handler`'s output.
    pub fn route(mut self, path: &'static str, handler: Handler) -> Self {
        self.extra.insert(path, handler);
        self
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, crate::metrics::render(&self.registry));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" | "/readyz" if self.health.failure().is_some() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("failed: {}\n", self.health.failure().unwrap_or_default()),
            ),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            path => match self.extra.get(path) {
                Some(handler) => {
                    let (content_type, body) = handler();
                    let mut response = text(StatusCode::OK, body);
                    let headers = response.headers_mut();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
                    if content_type.starts_with("text/html") {
                        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
                        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                    }
                    response
                }
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serve `admin` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Admin, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        crate::logging::listening("http", addr);
    }
    let admin = Arc::new(admin);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = admin.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    connections.abort_all();
}
