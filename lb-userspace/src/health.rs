//! kube-proxy compatible health endpoints (pkg/proxy/healthcheck):
//! `/healthz` and `/livez` for the proxy itself on --healthz-bind-address,
//! and one HTTP server per healthCheckNodePort of a LoadBalancer service with
//! externalTrafficPolicy Local, answering 200 when this node has ready local
//! endpoints and 503 when it has none (terminating ones do not count).
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, warn};

use crate::model::ObjectRef;

/// What a healthCheckNodePort reports for its service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub service: ObjectRef,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// The body and status kube-proxy's service health server answers with.
pub fn service_response(h: &ServiceHealth) -> (StatusCode, String) {
    let status = if h.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": {"namespace": &*h.service.namespace, "name": &*h.service.name},
        "localEndpoints": h.local_endpoints,
        "serviceProxyHealthy": true,
    });
    (status, body.to_string())
}

/// The agent's own health: a change is pending from `queued` until a sync
/// succeeds; the agent is unhealthy while a change waits longer than the timeout.
#[derive(Clone, Debug, Default)]
pub struct ProxyHealth {
    pub last_updated: Option<SystemTime>,
    pub queued_since: Option<Instant>,
    /// Where desired state comes from, and what the agent knows of it.
    pub source: String,
}

/// How long a change may wait for a successful sync before /healthz fails.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

pub fn proxy_response(h: &ProxyHealth, now: Instant, wall: SystemTime) -> (StatusCode, String) {
    let stale = h
        .queued_since
        .is_some_and(|q| now.duration_since(q) > HEALTH_TIMEOUT);
    let healthy = h.last_updated.is_some() && !stale;
    let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let body = serde_json::json!({
        "lastUpdated": h.last_updated.map(time).unwrap_or_default(),
        "currentTime": time(wall),
        "nodeEligible": true,
        "source": h.source,
    });
    (
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body.to_string(),
    )
}

/// Shared, lock-free health state: the servers read it, the agent replaces it.
#[derive(Default)]
pub struct HealthState {
    pub proxy: ArcSwap<ProxyHealth>,
    pub services: ArcSwap<BTreeMap<u16, ServiceHealth>>,
}

impl HealthState {
    pub fn update_proxy(&self, f: impl FnOnce(&mut ProxyHealth)) {
        let mut next = (**self.proxy.load()).clone();
        f(&mut next);
        self.proxy.store(Arc::new(next));
    }
}

pub(crate) type Body = Full<Bytes>;

pub(crate) fn reply(status: StatusCode, body: String, weight: Option<usize>) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if let Some(w) = weight {
        builder = builder.header("X-Load-Balancing-Endpoint-Weight", w.to_string());
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Serves HTTP/1 on `listener`, answering every request with `handler`.
pub(crate) async fn serve<F>(listener: TcpListener, handler: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let response = handler(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("health connection: {e}");
            }
        });
    }
}

/// Starts /healthz and /livez on `addr`.
pub async fn serve_proxy(
    addr: SocketAddr,
    state: Arc<HealthState>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(serve(listener, move |req| {
        match req.uri().path() {
            "/healthz" | "/livez" => {
                let (status, body) =
                    proxy_response(&state.proxy.load(), Instant::now(), SystemTime::now());
                // Liveness only asks whether the process answers.
                let status = if req.uri().path() == "/livez" {
                    StatusCode::OK
                } else {
                    status
                };
                reply(status, body, None)
            }
            _ => reply(StatusCode::NOT_FOUND, "{}".into(), None),
        }
    })))
}

/// The per-service health servers, one per healthCheckNodePort.
#[derive(Default)]
pub struct ServiceHealthServers {
    servers: BTreeMap<u16, JoinHandle<()>>,
}

impl ServiceHealthServers {
    /// Starts servers for new ports and stops those no longer wanted.
    pub async fn reconcile(&mut self, state: &Arc<HealthState>) {
        let wanted = state.services.load();
        self.servers.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, health) in wanted.iter() {
            if self.servers.contains_key(port) {
                continue;
            }
            let listener = match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], *port))).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(
                        "Service {}: healthCheckNodePort {port}: {e}",
                        health.service
                    );
                    continue;
                }
            };
            let (state, port_number) = (state.clone(), *port);
            self.servers.insert(
                *port,
                tokio::spawn(serve(listener, move |_req| {
                    match state.services.load().get(&port_number) {
                        Some(h) => {
                            let (status, body) = service_response(h);
                            reply(status, body, Some(h.local_endpoints))
                        }
                        None => reply(StatusCode::SERVICE_UNAVAILABLE, "{}".into(), None),
                    }
                })),
            );
        }
    }
}
