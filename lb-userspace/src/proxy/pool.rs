//! Idle upstream HTTP/1.1 connections, per endpoint, for reuse. A connection
//! is handed out only when hyper says it can take a request now; one that
//! turns out closed gives the request back (`try_send_request`), so reuse
//! never fails a request that a fresh connection would have served.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    thread::ThreadId,
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;

use super::forward::ProxyBody;

/// The most connections kept per endpoint.
const MAX_PER_ENDPOINT: usize = 128;
/// How long an idle connection is kept: below the shortest common server
/// keep-alive timeout (5 s in Node.js), so that Weir, not the server, ends
/// idle connections and a request never races a server's close.
const MAX_IDLE: Duration = Duration::from_secs(4);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Idle>,
}

/// Idle connections with the time each was checked in.
type IdleList = Vec<(Instant, SendRequest<ProxyBody>)>;

#[derive(Default)]
struct Idle {
    /// By the proxy thread that made the connection (whose runtime drives
    /// it: reusing it from another thread would wake that one) and endpoint.
    by_endpoint: HashMap<(ThreadId, SocketAddr), IdleList>,
    checkins: u64,
}

fn usable((since, s): &(Instant, SendRequest<ProxyBody>)) -> bool {
    !s.is_closed() && since.elapsed() < MAX_IDLE
}

impl Pool {
    /// A connection to `endpoint` that can take a request now, if any.
    pub fn checkout(&self, endpoint: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle
            .by_endpoint
            .get_mut(&(std::thread::current().id(), endpoint))?;
        list.retain(usable);
        let ready = list.iter().position(|(_, s)| s.is_ready())?;
        Some(list.swap_remove(ready).1)
    }

    /// Keeps a connection for later (it becomes ready once its response is read).
    pub fn checkin(&self, endpoint: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.checkins += 1;
        if idle.checkins.is_multiple_of(1024) {
            // Endpoints that went away are never checked out again: sweep them.
            idle.by_endpoint.retain(|_, list| {
                list.retain(usable);
                !list.is_empty()
            });
        }
        let list = idle
            .by_endpoint
            .entry((std::thread::current().id(), endpoint))
            .or_default();
        if list.len() >= MAX_PER_ENDPOINT {
            list.retain(usable);
        }
        if list.len() < MAX_PER_ENDPOINT {
            list.push((Instant::now(), sender));
        }
    }
}

/// HTTP/2 in clear (h2c) upstream connections: one per endpoint, shared by
/// every request (HTTP/2 multiplexes), replaced once it closes.
#[derive(Default)]
pub struct H2Pool {
    by_endpoint: Mutex<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<ProxyBody>>>,
}

impl H2Pool {
    pub fn get(
        &self,
        endpoint: SocketAddr,
    ) -> Option<hyper::client::conn::http2::SendRequest<ProxyBody>> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&endpoint) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(&endpoint);
                None
            }
            None => None,
        }
    }

    pub fn put(
        &self,
        endpoint: SocketAddr,
        sender: hyper::client::conn::http2::SendRequest<ProxyBody>,
    ) {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(endpoint, sender);
    }
}
