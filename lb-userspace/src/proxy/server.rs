//! The listeners and the per-connection HTTP server (hyper-util's auto
//! builder: HTTP/1.1 with keep-alive and upgrades, HTTP/2 by ALPN or prior
//! knowledge), with the header, idle and size limits.
use std::{net::SocketAddr, sync::Arc};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    forward::{handle, ConnInfo, Shared},
    idle::{Activity, IdleIo},
    tls::{listener_config, server_config},
    ProxyConfig, ProxyError, SharedTable,
};

/// The bound listeners, before serving: the hand-off puts these very
/// sockets into its socket map.
pub struct Listeners {
    pub v4: Sockets,
    /// The IPv6 twins on [::1] (port 0), for IPv6 ingress addresses: a
    /// socket bound to an IPv6 address takes IPv6 connections only. None on
    /// a host without IPv6.
    pub v6: Option<Sockets>,
}

/// One family's listening sockets, by role.
pub struct Sockets {
    pub http: std::net::TcpListener,
    pub https: std::net::TcpListener,
    /// Gateway TLS and TCP listeners.
    pub stream: std::net::TcpListener,
}

impl Sockets {
    fn bind(http: SocketAddr, https: SocketAddr, stream: SocketAddr) -> Result<Self, ProxyError> {
        Ok(Self {
            http: reuseport_listener(http)?,
            https: reuseport_listener(https)?,
            stream: reuseport_listener(stream)?,
        })
    }

    /// Sockets of their own for another proxy thread, in the same
    /// SO_REUSEPORT groups as these: the kernel spreads the connections
    /// that reach a group (the hand-off's choice included) across its
    /// sockets by a hash of the 4-tuple. Threads sharing one socket split
    /// them by who woke first, which left one thread with most of a burst
    /// of kept-alive connections.
    fn join(&self) -> Result<Self, ProxyError> {
        let join = |l: &std::net::TcpListener| {
            let addr = l.local_addr().map_err(ProxyError::Runtime)?;
            reuseport_listener(addr)
        };
        Ok(Self {
            http: join(&self.http)?,
            https: join(&self.https)?,
            stream: join(&self.stream)?,
        })
    }
}

/// Pending connections a listener queues (the kernel caps it at
/// net.core.somaxconn): nginx's default is 511, std's 128.
const BACKLOG: i32 = 1024;

/// A nonblocking listener on `addr` with SO_REUSEPORT, so that the other
/// proxy threads' sockets can join its group.
fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok::<_, std::io::Error>(socket.into())
    };
    bind().map_err(|source| ProxyError::Bind { addr, source })
}

impl Listeners {
    pub fn bind(cfg: &ProxyConfig) -> Result<Self, ProxyError> {
        let v4 = Sockets::bind(cfg.http_bind, cfg.https_bind, cfg.stream_bind)?;
        let loopback6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let v6 = match Sockets::bind(loopback6, loopback6, loopback6) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("ingress proxy: {e}: IPv6 ingress addresses get no proxy");
                None
            }
        };
        Ok(Self { v4, v6 })
    }
}

/// Serves the listeners on `threads` threads of its own, so that proxying
/// neither waits for nor delays the agent's main loop. Each thread runs a
/// single-threaded runtime that accepts on every listener: a connection,
/// its upstream connections and their tasks stay on one thread, so that a
/// request wakes no other thread (a shared work-stealing runtime spent much
/// of its time in cross-thread wake-ups and context switches), as nginx's
/// workers do.
pub fn start(
    listeners: Listeners,
    cfg: ProxyConfig,
    table: SharedTable,
    threads: usize,
    metrics: crate::metrics::ProxyMetrics,
) -> Result<(), ProxyError> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(
        table.clone(),
        cfg.default_cert.clone(),
    )?));
    let shared = Arc::new(Shared {
        table,
        config: cfg,
        pool: Default::default(),
        h2: Default::default(),
        metrics,
    });
    if let (Ok(http), Ok(https)) = (
        listeners.v4.http.local_addr(),
        listeners.v4.https.local_addr(),
    ) {
        info!(%http, %https, ipv6 = listeners.v6.is_some(), "ingress proxy listening");
    }
    // The first thread serves the very sockets the hand-off steers to; the
    // others join those sockets' reuseport groups.
    let mut per_thread: Vec<Vec<Sockets>> = Vec::with_capacity(threads.max(1));
    for _ in 1..threads.max(1) {
        per_thread.push(
            std::iter::once(&listeners.v4)
                .chain(listeners.v6.as_ref())
                .map(Sockets::join)
                .collect::<Result<_, _>>()?,
        );
    }
    per_thread.insert(
        0,
        std::iter::once(listeners.v4).chain(listeners.v6).collect(),
    );
    for (i, sets) in per_thread.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let mut tokio_sets = Vec::new();
        {
            let _guard = runtime.enter();
            let listen = |l| TcpListener::from_std(l).map_err(ProxyError::Runtime);
            for set in sets {
                tokio_sets.push((listen(set.http)?, listen(set.https)?, listen(set.stream)?));
            }
        }
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        std::thread::Builder::new()
            .name(format!("weir-proxy-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    for (http, https, stream) in tokio_sets {
                        tokio::spawn(super::stream::accept_loop(stream, shared.clone()));
                        tokio::spawn(accept_loop(http, shared.clone(), None));
                        tokio::spawn(accept_loop(https, shared.clone(), Some(acceptor.clone())));
                    }
                    // The thread lives as long as the process.
                    std::future::pending::<()>().await
                })
            })
            .map_err(ProxyError::Runtime)?;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                debug!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let activity = Activity::new();
            let io = IdleIo::new(stream, activity.clone());
            match tls {
                None => serve(io, client, local, "http", shared, activity).await,
                Some(ingress_acceptor) => {
                    // A Gateway HTTPS listener's address takes its own certificates.
                    let acceptor = if shared.table.load().gateway_at(local).is_some() {
                        match listener_config(shared.table.clone(), local) {
                            Ok(c) => TlsAcceptor::from(Arc::new(c)),
                            Err(e) => {
                                debug!(%client, "TLS configuration: {e}");
                                return;
                            }
                        }
                    } else {
                        ingress_acceptor
                    };
                    let handshake =
                        tokio::time::timeout(shared.config.timeouts.header, acceptor.accept(io))
                            .await;
                    match handshake {
                        Ok(Ok(tls)) => serve(tls, client, local, "https", shared, activity).await,
                        Ok(Err(e)) => debug!(%client, "TLS handshake: {e}"),
                        Err(_) => debug!(%client, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve<I>(
    io: I,
    client: SocketAddr,
    local: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    activity: Activity,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &shared.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(None);
    let info = Arc::new(ConnInfo {
        client,
        local,
        scheme,
    });
    let shared2 = shared.clone();
    let waiting = activity.clone();
    let service = service_fn(move |req| {
        // Not idle until the response head is back (or the upstream timeout
        // answered 504); the body's bytes count as activity of their own.
        let guard = waiting.waiting();
        let response = handle(req, shared2.clone(), info.clone());
        async move {
            let r = response.await;
            drop(guard);
            r
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                debug!(%client, "connection: {e}");
            }
        }
        _ = activity.idle_for(cfg.timeouts.idle) => debug!(%client, "idle timeout"),
    }
}
