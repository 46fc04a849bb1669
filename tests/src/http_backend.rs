//! An HTTP backend for ingress tests (HTTP/1.1, or h2c by prior knowledge),
//! run in a pod's namespace: every request
//! is answered with JSON describing what the backend saw (its name, method,
//! path, host, HTTP version and headers); `/ws` accepts a WebSocket and
//! echoes each text message as "NAME: MESSAGE". `connection` numbers the
//! TCP connection a request came on (1, 2, ... per backend). A query
//! parameter `delay_ms=N` holds the answer back N ms (at most `MAX_DELAY`), to
//! test timeouts; `/fail-first/N` answers 503 to the backend's first N such
//! requests (retries). Dropping it closes the listener, so new connections are
//! refused (a backend going away).
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{body::Incoming, header, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

use crate::netns::enter;

/// The longest a backend lives, whatever the test does.
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// The longest `delay_ms` honoured.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// The `delay_ms` query parameter of a request target, if any.
fn delay(uri: &hyper::Uri) -> Option<Duration> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay_ms="))
        .and_then(|v| v.parse().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_DELAY))
}

pub struct HttpBackend {
    /// Requests answered so far.
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    /// Starts the backend `name` on 0.0.0.0:`port` in namespace `ns`; returns once it listens.
    pub fn start(ns: &str, name: &str, port: u16) -> Result<Self> {
        Self::start_on(ns, name, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }

    /// Starts the backend `name` on `addr` (e.g. [::]:8080 for both families).
    pub fn start_on(ns: &str, name: &str, addr: SocketAddr) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ns, name) = (ns.to_string(), name.to_string());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = served.clone();
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = std::thread::spawn(move || {
            let run = || -> Result<tokio::runtime::Runtime> {
                enter(&ns)?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            };
            let rt = match run() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("bind {addr}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let serve = async {
                    let mut connections = 0u64;
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        connections += 1;
                        let connection = connections;
                        let name = name.clone();
                        let counter = counter.clone();
                        let failures = failures.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| {
                                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                respond(req, name.clone(), connection, failures.clone())
                            });
                            // HTTP/1.1 (with upgrades) or HTTP/2 in clear by prior knowledge.
                            let _ = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                    _ = tokio::time::sleep(MAX_LIFETIME) => {}
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("HTTP backend did not start")??;
        Ok(Self {
            served,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl HttpBackend {
    /// The requests this backend has answered.
    pub fn requests(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn respond(
    mut req: Request<Incoming>,
    name: String,
    connection: u64,
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // /fail-first/N: the backend's first N such requests get 503.
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/fail-first/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        if failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"failing on purpose\n")));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(resp);
        }
    }
    if req.uri().path() == "/ws" {
        if let Some(key) = req.headers().get("sec-websocket-key") {
            let accept = derive_accept_key(key.as_bytes());
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                // Bounded: at most 1000 messages per connection.
                for _ in 0..1000 {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let reply = format!("{name}: {}", text.as_str());
                            if ws.send(Message::text(reply)).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    }
                }
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(
                header::UPGRADE,
                header::HeaderValue::from_static("websocket"),
            );
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&accept) {
                h.insert("sec-websocket-accept", v);
            }
            return Ok(resp);
        }
    }
    if let Some(d) = delay(req.uri()) {
        tokio::time::sleep(d).await;
    }
    // Several values of one header are joined with "," (as the Gateway API
    // conformance suite compares them).
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("");
        headers
            .entry(k.to_string())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    let body = serde_json::json!({
        "backend": name,
        "connection": connection,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "host": req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
