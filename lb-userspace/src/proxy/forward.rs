//! One request: route it, connect to an endpoint (the next one when a
//! connection fails: nothing was sent yet), forward, and stream the response
//! back. WebSocket (and any HTTP/1.1 Upgrade) is forwarded as a byte tunnel
//! once the upstream answers 101.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::{headers, ProxyConfig, SharedTable};
use crate::{
    metrics::RouteLabel,
    routes::{matching::normalize_host, Matched, Upstream},
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The most endpoints one request tries.
const MAX_ATTEMPTS: usize = 3;

/// What a connection handler knows about its client.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// "http" or "https".
    pub scheme: &'static str,
}

pub struct Shared {
    pub table: SharedTable,
    pub config: ProxyConfig,
    /// Idle upstream connections for reuse.
    pub pool: super::pool::Pool,
    pub metrics: crate::metrics::ProxyMetrics,
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never: Infallible| -> hyper::Error { match never {} })
        .boxed()
}

pub fn local(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(format!("{msg}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The request's host: the URI authority (HTTP/2, absolute form) or Host.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// The metrics label of the route a request matched.
fn route_label(route: Option<(&Arc<Upstream>, Matched)>) -> RouteLabel {
    match route {
        Some((upstream, Matched::Path { host, path, .. })) => RouteLabel {
            host,
            path: if path.is_empty() { "/".into() } else { path },
            service: upstream.service.to_string(),
        },
        Some((upstream, Matched::DefaultBackend)) => RouteLabel {
            host: String::new(),
            path: String::new(),
            service: upstream.service.to_string(),
        },
        None => RouteLabel {
            host: String::new(),
            path: String::new(),
            service: String::new(),
        },
    }
}

/// One request, counted and timed by the route it matched.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = std::time::Instant::now();
    let authority = request_host(&req);
    let host = authority.as_deref().and_then(normalize_host);
    // One table for the whole request, whatever is swapped in meanwhile.
    let table = shared.table.load_full();
    let route = table.route(host.as_deref(), req.uri().path());
    let label = route_label(route.clone());
    let resp = match route {
        None => local(StatusCode::NOT_FOUND, "no Ingress rule matches"),
        Some((upstream, _)) => forward(req, &shared, &conn, authority, upstream).await,
    };
    shared.metrics.observe(
        label,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}

async fn forward(
    mut req: Request<Incoming>,
    shared: &Shared,
    conn: &ConnInfo,
    authority: Option<String>,
    upstream: &Upstream,
) -> Response<ProxyBody> {
    if upstream.endpoints.is_empty() {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Service {} has no ready endpoints", upstream.service),
        );
    }
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // The upstream request: origin-form URI, HTTP/1.1, Host kept (or taken from
    // the HTTP/2 authority), hop-by-hop headers removed, X-Forwarded-* added.
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = match Uri::try_from(path) {
        Ok(u) => u,
        Err(_) => return local(StatusCode::BAD_REQUEST, "invalid request target"),
    };
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h, upgrade);
    if !h.contains_key(header::HOST) {
        if let Some(v) = authority
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            h.insert(header::HOST, v);
        }
    }
    headers::add_forwarded(h, conn.client.ip(), conn.scheme, authority.as_deref());

    let timeouts = shared.config.timeouts;
    let mut resp =
        match tokio::time::timeout(timeouts.upstream, send(shared, upstream, req, upgrade)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(local_response)) => return local_response,
            Err(_) => {
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                )
            }
        };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => debug!("upgrade failed: {e}"),
                }
            });
            return resp.map(|_| full(Bytes::new()));
        }
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(|b| b.boxed())
}

/// Sends `req` to an endpoint of `upstream`: on a pooled connection when one
/// is ready (falling back to a new connection if it turns out closed before
/// the request was written), otherwise on a new one, trying the next
/// endpoint when connecting fails. Upgrades always get a connection of their own.
async fn send(
    shared: &Shared,
    upstream: &Upstream,
    mut req: Request<Incoming>,
    upgrade: bool,
) -> Result<Response<Incoming>, Response<ProxyBody>> {
    let connect_timeout = shared.config.timeouts.connect;
    let mut last_error = String::new();
    for endpoint in upstream.attempt_order().take(MAX_ATTEMPTS) {
        if !upgrade {
            while let Some(mut sender) = shared.pool.checkout(endpoint) {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        shared.pool.checkin(endpoint, sender);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        // Not sent: try again on another connection.
                        Some(r) => req = r,
                        None => {
                            return Err(local(
                                StatusCode::BAD_GATEWAY,
                                &format!("upstream {endpoint}: {}", e.error()),
                            ))
                        }
                    },
                }
            }
        }
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%endpoint, service = %upstream.service, "connect failed: {e}; trying the next endpoint");
                last_error = format!("{endpoint}: {e}");
                continue;
            }
            Err(_) => {
                debug!(%endpoint, service = %upstream.service, "connect timed out; trying the next endpoint");
                last_error = format!("{endpoint}: connect timed out");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => {
                    return Err(local(
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream {endpoint}: {e}"),
                    ))
                }
            };
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!("upstream connection: {e}");
            }
        });
        return match sender.send_request(req).await {
            Ok(resp) => {
                if !upgrade {
                    shared.pool.checkin(endpoint, sender);
                }
                Ok(resp)
            }
            Err(e) => Err(local(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {endpoint}: {e}"),
            )),
        };
    }
    Err(local(
        StatusCode::BAD_GATEWAY,
        &format!(
            "no endpoint of Service {} accepted a connection ({last_error})",
            upstream.service
        ),
    ))
}
