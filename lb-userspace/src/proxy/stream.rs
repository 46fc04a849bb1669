//! Gateway API TLS and TCP listeners: a connection to a stream listener's
//! address and port is spliced to a backend of the route that takes it:
//! TCP as it is; TLS passthrough by the ClientHello's server name, with the
//! peeked bytes sent on untouched; TLS terminate by the server name of the
//! handshake the proxy completes, with the plain bytes sent on.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{forward::Shared, sni, tls::stream_config};
use crate::routes::{
    rule::Target,
    streams::{StreamMode, StreamRoute},
};

/// The most endpoints one connection tries.
const MAX_ATTEMPTS: usize = 3;

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, client, &shared).await {
                debug!(%client, "stream: {e}");
            }
        });
    }
}

async fn serve(mut stream: TcpStream, client: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let table = shared.table.load_full();
    let Some(port) = table.streams.get(&local) else {
        return Ok(());
    };
    let limit = shared.config.timeouts.header;
    match port.mode() {
        None => Ok(()),
        Some(StreamMode::Tcp) => {
            let Some(route) = port.listener(None).and_then(|l| l.route(None)) else {
                return Ok(());
            };
            splice(stream, route, &[], shared).await
        }
        Some(StreamMode::TlsPassthrough) => {
            let mut buf = Vec::with_capacity(1024);
            let name = loop {
                match sni::peek(&buf) {
                    sni::Peek::Hello(name) => break name,
                    sni::Peek::NotTls => return Ok(()),
                    sni::Peek::Incomplete if buf.len() >= sni::MAX_HELLO => return Ok(()),
                    sni::Peek::Incomplete => {}
                }
                let mut chunk = [0u8; 4096];
                let n = match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(()),
                };
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let Some(route) = port
                .listener(name.as_deref())
                .and_then(|l| l.route(name.as_deref()))
            else {
                debug!(%client, ?name, "no TLSRoute for this server name");
                return Ok(());
            };
            splice(stream, route, &buf, shared).await
        }
        Some(StreamMode::TlsTerminate) => {
            let acceptor = TlsAcceptor::from(Arc::new(
                stream_config(shared.table.clone(), local).map_err(std::io::Error::other)?,
            ));
            let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            let name = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
            let Some(route) = port
                .listener(name.as_deref())
                .and_then(|l| l.route(name.as_deref()))
            else {
                return Ok(());
            };
            splice(tls, route, &[], shared).await
        }
    }
}

/// Connects to an endpoint of the route's backend (the next on a refused
/// connection), sends `first` (peeked bytes), then copies both ways. A
/// backend that does not resolve, or has no endpoint, closes the connection.
async fn splice<S>(
    mut client: S,
    route: &StreamRoute,
    first: &[u8],
    shared: &Shared,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(backend) = route.backends.pick() else {
        return Ok(());
    };
    let upstream = match &backend.target {
        Target::Upstream(u) => u,
        Target::Invalid(why) => {
            debug!(route = %route.origin, "{why}");
            return Ok(());
        }
    };
    let connect = shared.config.timeouts.connect;
    for endpoint in upstream.attempt_order().take(MAX_ATTEMPTS) {
        let mut server = match tokio::time::timeout(connect, TcpStream::connect(endpoint)).await {
            Ok(Ok(s)) => s,
            _ => continue,
        };
        let _ = server.set_nodelay(true);
        server.write_all(first).await?;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return Ok(());
    }
    Ok(())
}
