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
use crate::routes::matching::normalize_host;

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

pub async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let authority = request_host(&req);
    let host = authority.as_deref().and_then(normalize_host);
    // One table for the whole request, whatever is swapped in meanwhile.
    let table = shared.table.load_full();
    let Some((upstream, _matched)) = table.route(host.as_deref(), req.uri().path()) else {
        return Ok(local(StatusCode::NOT_FOUND, "no Ingress rule matches"));
    };
    if upstream.endpoints.is_empty() {
        return Ok(local(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Service {} has no ready endpoints", upstream.service),
        ));
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
        Err(_) => return Ok(local(StatusCode::BAD_REQUEST, "invalid request target")),
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
    let mut last_error = String::new();
    let mut stream = None;
    for endpoint in upstream.attempt_order().take(MAX_ATTEMPTS) {
        match tokio::time::timeout(timeouts.connect, TcpStream::connect(endpoint)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => {
                debug!(%endpoint, service = %upstream.service, "connect failed: {e}; trying the next endpoint");
                last_error = format!("{endpoint}: {e}");
            }
            Err(_) => {
                debug!(%endpoint, service = %upstream.service, "connect timed out; trying the next endpoint");
                last_error = format!("{endpoint}: connect timed out");
            }
        }
    }
    let Some(stream) = stream else {
        return Ok(local(
            StatusCode::BAD_GATEWAY,
            &format!(
                "no endpoint of Service {} accepted a connection ({last_error})",
                upstream.service
            ),
        ));
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return Ok(local(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"))),
        };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!("upstream connection: {e}");
        }
    });
    let mut resp = match tokio::time::timeout(timeouts.upstream, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Ok(local(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"))),
        Err(_) => {
            return Ok(local(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            ))
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
            return Ok(resp.map(|_| full(Bytes::new())));
        }
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| b.boxed()))
}
