//! Why a connection ended early: one variant per pipeline stage.
//!
//! The [`ConnError::label`] of each variant is the `outcome` field of the access
//! log (and, with router operations, a metric label), so labels are stable and few.

use crate::clients::Refusal;
use crate::hello::HelloError;
use crate::route::NoRoute;
use crate::upstream::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error(transparent)]
    NoRoute(#[from] NoRoute),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("sending the ClientHello to the backend: {0}")]
    Forward(std::io::Error),
    #[error("the router's connection limit ({0}) is reached")]
    GlobalLimit(usize),
    #[error("route's connection limit ({0}) is reached")]
    RouteLimit(usize),
    #[error("a PROXY protocol listener, but {0} is not among its trusted load balancers")]
    UntrustedProxy(std::net::SocketAddr),
    #[error("bad PROXY protocol header: {0}")]
    ProxyHeader(String),
    #[error("the client's address is not allowed {}", if *.route { "on this route" } else { "here" })]
    Denied { route: bool },
    #[error("the client is at its {} limit{}", .refusal.label(), if *.route { " on this route" } else { "" })]
    ClientLimit { route: bool, refusal: Refusal },
}

impl ConnError {
    pub fn label(&self) -> &'static str {
        match self {
            ConnError::Hello(HelloError::Timeout(_)) => "hello_timeout",
            ConnError::Hello(HelloError::TooLarge(_)) => "hello_too_large",
            ConnError::Hello(HelloError::Closed(_)) => "client_closed_early",
            ConnError::Hello(HelloError::Invalid(invalid)) => invalid.label(),
            ConnError::Hello(HelloError::Io(_)) => "client_error",
            ConnError::NoRoute(no_route) => no_route.label(),
            ConnError::Connect(ConnectError::Failed { .. }) => "all_endpoints_down",
            ConnError::Connect(ConnectError::Deadline { .. }) => "connect_deadline",
            ConnError::Forward(_) => "backend_error",
            ConnError::GlobalLimit(_) => "global_limit",
            ConnError::RouteLimit(_) => "route_limit",
            ConnError::UntrustedProxy(_) => "untrusted_proxy",
            ConnError::ProxyHeader(_) => "bad_proxy_header",
            ConnError::Denied { .. } => "denied",
            ConnError::ClientLimit { refusal, .. } => refusal.label(),
        }
    }
}
