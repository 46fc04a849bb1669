//! RequestMirror (and what retries share with it: a request read into
//! memory to send again): a copy of a request goes to each sampled mirror backend,
//! whose answer is read and dropped; the client only ever sees the main
//! backend's. Only requests whose body is known to be small (no body, or a
//! Content-Length up to `MAX_MIRRORED_BODY`) are copied: the body is read
//! once into memory and sent to every destination. Others go on unmirrored.
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::forward::ProxyBody;
use crate::routes::rule::Mirror;
use std::sync::Arc;

/// The largest request body copied to mirrors.
pub const MAX_MIRRORED_BODY: u64 = 1 << 20;
/// How long a mirrored exchange may take in all.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never: std::convert::Infallible| -> hyper::Error { match never {} })
        .boxed()
}

/// A request read into memory, to send more than once.
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Replay {
    /// Reads `req` into memory if its body is known to be small (none, or
    /// a Content-Length up to `MAX_MIRRORED_BODY`); gives it back otherwise.
    pub async fn read(req: Request<ProxyBody>) -> Result<Self, Request<ProxyBody>> {
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        if chunked || length.is_some_and(|l| l > MAX_MIRRORED_BODY) {
            return Err(req);
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            // The client went away mid-body: what is sent fails anyway.
            Err(_) => Bytes::new(),
        };
        Ok(Self {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// A copy to send.
    pub fn request(&self) -> Request<ProxyBody> {
        let mut r = Request::new(full(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Sends copies of `req` to the sampled mirrors and returns the request to
/// forward (its body buffered when it was copied).
pub async fn send_copies(
    req: Request<ProxyBody>,
    mirrors: &[Arc<Mirror>],
    connect: Duration,
) -> Request<ProxyBody> {
    let chosen: Vec<Arc<Mirror>> = mirrors.iter().filter(|m| m.sample()).cloned().collect();
    if chosen.is_empty() {
        return req;
    }
    let replay = match Replay::read(req).await {
        Ok(r) => r,
        Err(req) => {
            debug!("request body too large or of unknown length: not mirrored");
            return req;
        }
    };
    for m in chosen {
        let Some(endpoint) = m.upstream.attempt_order().next() else {
            continue;
        };
        let copy = replay.request();
        tokio::spawn(async move {
            let exchange = async {
                let stream = tokio::time::timeout(connect, TcpStream::connect(endpoint))
                    .await
                    .ok()?
                    .ok()?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                let resp = sender.send_request(copy).await.ok()?;
                resp.into_body().collect().await.ok()?;
                Some(())
            };
            if tokio::time::timeout(MIRROR_TIMEOUT, exchange)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                debug!(%endpoint, "mirrored request failed");
            }
        });
    }
    replay.request()
}
