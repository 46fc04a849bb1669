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
    routes::{
        matching::normalize_host,
        rule::{Mirror, RedirectTo, Retry, Target},
        RequestView, Routed, Upstream,
    },
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The most endpoints one request tries.
const MAX_ATTEMPTS: usize = 3;

/// What a connection handler knows about its client.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// The address the client connected to (the hand-off keeps it): which
    /// Gateway listener, if any, the connection is for.
    pub local: SocketAddr,
    /// "http" or "https".
    pub scheme: &'static str,
}

pub struct Shared {
    pub table: SharedTable,
    pub config: ProxyConfig,
    /// Idle upstream connections for reuse.
    pub pool: super::pool::Pool,
    /// HTTP/2 in clear upstream connections.
    pub h2: super::pool::H2Pool,
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
    let hosts = match table.gateway_at(conn.local) {
        None => Some(&table.ingress),
        Some(port) => port.listener(host.as_deref()).map(|l| &l.table),
    };
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let routed = hosts.and_then(|h| h.route(host.as_deref(), &view));
    let (resp, label) = match routed {
        None => (
            local(StatusCode::NOT_FOUND, "no rule matches"),
            RouteLabel {
                host: String::new(),
                path: String::new(),
                service: String::new(),
            },
        ),
        Some(routed) => {
            let mut label = RouteLabel {
                host: routed.host.clone(),
                path: if routed.default {
                    String::new()
                } else {
                    routed.rule.matcher.path.text()
                },
                service: String::new(),
            };
            let action = routed.rule.action.clone();
            let run = execute(req, &shared, &conn, authority, host, &routed, &mut label);
            let resp = match action.request_timeout {
                None => run.await,
                Some(limit) => match tokio::time::timeout(limit, run).await {
                    Ok(r) => r,
                    Err(_) => local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the request did not complete within the route's timeout",
                    ),
                },
            };
            (resp, label)
        }
    };
    shared.metrics.observe(
        label,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}

/// Runs a matched rule's action: a redirect, or filters, a backend by
/// weight, and forwarding.
async fn execute(
    mut req: Request<Incoming>,
    shared: &Shared,
    conn: &ConnInfo,
    mut authority: Option<String>,
    host: Option<String>,
    routed: &Routed<'_>,
    label: &mut RouteLabel,
) -> Response<ProxyBody> {
    let action = &routed.rule.action;
    let filters = &action.filters;
    if let Some(r) = &filters.redirect {
        return redirect(&req, conn, host.as_deref(), routed, r);
    }
    let Some(backend) = action.backends.pick() else {
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{}: no backend to forward to", action.origin),
        );
    };
    let upstream = match &backend.target {
        Target::Upstream(u) => u,
        Target::Invalid(why) => return local(StatusCode::INTERNAL_SERVER_ERROR, why),
    };
    label.service = upstream.service.to_string();
    if let Some(rewrite) = &filters.rewrite_path {
        let path = rewrite.apply(&routed.rule.matcher.path, req.uri().path());
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        match Uri::try_from(target) {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => {
                return local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the rewritten path is invalid",
                )
            }
        }
    }
    if let Some(h) = &filters.rewrite_host {
        if let Ok(v) = HeaderValue::from_str(h) {
            req.headers_mut().insert(header::HOST, v);
            authority = Some(h.clone());
        }
    }
    for edit in [&filters.request_headers, &backend.filters.request_headers]
        .into_iter()
        .flatten()
    {
        edit.apply(req.headers_mut());
    }
    let upstream_timeout = action
        .backend_timeout
        .map_or(shared.config.timeouts.upstream, |t| {
            t.min(shared.config.timeouts.upstream)
        });
    let mut resp = forward(
        req,
        shared,
        conn,
        authority,
        upstream,
        Plan {
            upstream_timeout,
            mirrors: &filters.mirrors,
            retry: action.retry.as_ref(),
        },
    )
    .await;
    for edit in [&filters.response_headers, &backend.filters.response_headers]
        .into_iter()
        .flatten()
    {
        edit.apply(resp.headers_mut());
    }
    resp
}

/// The redirect response: scheme, host, port and path from the filter, the
/// rest from the request. The port is left out where it is the scheme's
/// own (80 for http, 443 for https).
fn redirect<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    host: Option<&str>,
    routed: &Routed<'_>,
    r: &RedirectTo,
) -> Response<ProxyBody> {
    let scheme = r.scheme.as_deref().unwrap_or(conn.scheme);
    let host = r.hostname.as_deref().or(host).unwrap_or("");
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(conn.local.port()),
    };
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(rewrite) => rewrite.apply(&routed.rule.matcher.path, req.uri().path()),
        None => req.uri().path().to_string(),
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    };
    let mut resp = local(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND),
        &format!("redirect to {location}"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// How a request is sent besides where: the upstream timeout, the mirrors,
/// the retry policy.
struct Plan<'a> {
    upstream_timeout: std::time::Duration,
    mirrors: &'a [Arc<Mirror>],
    retry: Option<&'a Retry>,
}

async fn forward(
    mut req: Request<Incoming>,
    shared: &Shared,
    conn: &ConnInfo,
    authority: Option<String>,
    upstream: &Upstream,
    plan: Plan<'_>,
) -> Response<ProxyBody> {
    let Plan {
        upstream_timeout,
        mirrors,
        retry,
    } = plan;
    if upstream.endpoints.is_empty() {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Service {} has no ready endpoints", upstream.service),
        );
    }
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut req = req.map(|b| b.boxed());

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
    let te_trailers = req
        .headers()
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h, upgrade);
    // gRPC needs `te: trailers`, the one TE value HTTP/2 allows.
    if upstream.h2c && te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !h.contains_key(header::HOST) {
        if let Some(v) = authority
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            h.insert(header::HOST, v);
        }
    }
    headers::add_forwarded(h, conn.client.ip(), conn.scheme, authority.as_deref());
    if !mirrors.is_empty() && !upgrade {
        req = super::mirror::send_copies(req, mirrors, shared.config.timeouts.connect).await;
    }

    let mut resp =
        match send_retrying(shared, upstream, req, upgrade, upstream_timeout, retry).await {
            Ok(resp) => resp,
            Err(local_response) => return local_response,
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

/// Sends `req` within `limit` (504 beyond); with a retry policy, again on
/// its listed status codes while attempts remain (when the request can be
/// read into memory to send again).
async fn send_retrying(
    shared: &Shared,
    upstream: &Upstream,
    req: Request<ProxyBody>,
    upgrade: bool,
    limit: std::time::Duration,
    retry: Option<&Retry>,
) -> Result<Response<Incoming>, Response<ProxyBody>> {
    let timed = |req| async move {
        match tokio::time::timeout(limit, send(shared, upstream, req, upgrade)).await {
            Ok(r) => r,
            Err(_) => Err(local(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            )),
        }
    };
    let Some(retry) = retry.filter(|r| r.attempts > 0 && !upgrade) else {
        return timed(req).await;
    };
    let replay = match super::mirror::Replay::read(req).await {
        Ok(r) => r,
        Err(req) => return timed(req).await,
    };
    let mut left = retry.attempts;
    loop {
        let result = timed(replay.request()).await;
        let status = match &result {
            Ok(r) => r.status().as_u16(),
            Err(r) => r.status().as_u16(),
        };
        if left == 0 || !retry.codes.contains(&status) {
            return result;
        }
        left -= 1;
        debug!(service = %upstream.service, status, "retrying");
        tokio::time::sleep(retry.backoff).await;
    }
}

/// Sends `req` over HTTP/2 in clear (prior knowledge) to an endpoint of
/// `upstream`: on its shared connection, or a new one (the next endpoint
/// when connecting fails).
async fn send_h2(
    shared: &Shared,
    upstream: &Upstream,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, Response<ProxyBody>> {
    *req.version_mut() = Version::HTTP_2;
    // HTTP/2 carries the authority in the URI (:authority), not in Host.
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string));
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = match &authority {
        Some(a) => Uri::try_from(format!("http://{a}{path}")),
        None => Uri::try_from(format!("http://{}{path}", upstream.service.name)),
    };
    match uri {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return Err(local(StatusCode::BAD_REQUEST, "invalid request authority")),
    }
    let connect_timeout = shared.config.timeouts.connect;
    let mut last_error = String::new();
    for endpoint in upstream.attempt_order().take(MAX_ATTEMPTS) {
        let mut sender = match shared.h2.get(endpoint) {
            Some(s) => s,
            None => {
                let stream =
                    match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            last_error = format!("{endpoint}: {e}");
                            continue;
                        }
                        Err(_) => {
                            last_error = format!("{endpoint}: connect timed out");
                            continue;
                        }
                    };
                let _ = stream.set_nodelay(true);
                let (sender, connection) = match hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                {
                    Ok(pair) => pair,
                    Err(e) => {
                        last_error = format!("{endpoint}: {e}");
                        continue;
                    }
                };
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!("upstream h2c connection: {e}");
                    }
                });
                shared.h2.put(endpoint, sender.clone());
                sender
            }
        };
        return sender.send_request(req).await.map_err(|e| {
            local(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {endpoint} (h2c): {e}"),
            )
        });
    }
    Err(local(
        StatusCode::BAD_GATEWAY,
        &format!(
            "no endpoint of Service {} accepted a connection ({last_error})",
            upstream.service
        ),
    ))
}

/// Sends `req` to an endpoint of `upstream`: on a pooled connection when one
/// is ready (falling back to a new connection if it turns out closed before
/// the request was written), otherwise on a new one, trying the next
/// endpoint when connecting fails. Upgrades always get a connection of their own.
async fn send(
    shared: &Shared,
    upstream: &Upstream,
    mut req: Request<ProxyBody>,
    upgrade: bool,
) -> Result<Response<Incoming>, Response<ProxyBody>> {
    if upstream.h2c && !upgrade {
        return send_h2(shared, upstream, req).await;
    }
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
