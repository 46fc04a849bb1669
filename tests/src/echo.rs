//! Echo servers for backend pods: every TCP connection and UDP datagram is
//! answered with "NAME LOCALPORT PEERIP", so a test sees which backend
//! answered, on which port, and the client address the backend saw.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{enter, in_netns};

/// The longest an echo server lives, whatever the test does.
const MAX_LIFETIME: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(20);

pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl EchoServer {
    /// Starts servers in namespace `ns` on every (protocol, port); returns once all are bound.
    pub fn start(ns: &str, name: &str, ports: &[(Proto, u16)]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &(proto, port) in ports {
            let (tx, rx) = mpsc::channel();
            let (ns, server, stop2) = (ns.to_string(), name.to_string(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let bound = enter(&ns).and_then(|_| bind(proto, port));
                match bound {
                    Ok(socket) => {
                        let _ = tx.send(Ok(()));
                        serve(socket, &server, port, &stop2);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|_| anyhow!("echo server {name} {proto:?}/{port} did not start"))??;
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn bind(proto: Proto, port: u16) -> Result<Socket> {
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    Ok(match proto {
        Proto::Tcp => {
            let l = TcpListener::bind(addr).with_context(|| format!("bind tcp {port}"))?;
            l.set_nonblocking(true)?;
            Socket::Tcp(l)
        }
        Proto::Udp => {
            let s = UdpSocket::bind(addr).with_context(|| format!("bind udp {port}"))?;
            s.set_read_timeout(Some(POLL))?;
            Socket::Udp(s)
        }
    })
}

fn serve(socket: Socket, name: &str, port: u16, stop: &Arc<AtomicBool>) {
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_LIFETIME {
        match &socket {
            Socket::Tcp(l) => match l.accept() {
                Ok((conn, peer)) => {
                    let greeting = format!("{name} {port} {}\n", peer.ip());
                    let name = name.to_string();
                    let stop = stop.clone();
                    std::thread::spawn(move || stream(conn, &greeting, &name, start, &stop));
                }
                Err(_) => std::thread::sleep(POLL / 4),
            },
            Socket::Udp(s) => {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name} {port} {}", peer.ip()).as_bytes(), peer);
                }
            }
        }
    }
}

/// Serves one TCP connection: the greeting, then every line the client
/// sends comes back prefixed with the server's name, until the client closes.
fn stream(mut conn: TcpStream, greeting: &str, name: &str, start: Instant, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    if conn.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reader = std::io::BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    while start.elapsed() < MAX_LIFETIME && !stop.load(Ordering::Relaxed) {
        line.clear();
        match std::io::BufRead::read_line(&mut reader, &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if conn.write_all(format!("{name} {line}").as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// An echo server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoReply {
    pub backend: String,
    pub port: u16,
    pub peer: Ipv4Addr,
}

impl std::str::FromStr for EchoReply {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.split_whitespace();
        let (Some(backend), Some(port), Some(peer), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("unexpected echo reply {s:?}");
        };
        Ok(Self {
            backend: backend.into(),
            port: port.parse()?,
            peer: peer.parse()?,
        })
    }
}

fn tcp_once(addr: SocketAddrV4, timeout: Duration) -> Result<EchoReply> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    // No request: the server greets, sees our end of stream and closes.
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    reply.trim().parse()
}

fn udp_once(addr: SocketAddrV4, timeout: Duration) -> Result<EchoReply> {
    udp_from(0, addr, timeout)
}

/// One UDP request from source port `sport` (0: any).
fn udp_from(sport: u16, addr: SocketAddrV4, timeout: Duration) -> Result<EchoReply> {
    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport))?;
    s.connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"hello")?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf)?;
    std::str::from_utf8(&buf[..n])?.parse()
}

/// Sends `count` requests (each a new connection or a new UDP socket) from namespace `ns`.
pub fn requests(
    ns: &str,
    proto: Proto,
    addr: SocketAddrV4,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Result<EchoReply>>> {
    in_netns(ns, move || {
        (0..count)
            .map(|_| match proto {
                Proto::Tcp => tcp_once(addr, timeout),
                Proto::Udp => udp_once(addr, timeout),
            })
            .collect()
    })
}

/// One UDP request from each of `sports` in namespace `ns`: fixed 5-tuples.
pub fn udp_from_ports(
    ns: &str,
    sports: Vec<u16>,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<Vec<Result<EchoReply>>> {
    in_netns(ns, move || {
        sports
            .into_iter()
            .map(|p| udp_from(p, addr, timeout))
            .collect()
    })
}

/// The replies of requests that must all succeed; the first failure names
/// its request and `what` was asked (e.g. "198.19.0.10:80/Tcp").
pub fn all_ok(replies: Vec<Result<EchoReply>>, what: &str) -> Result<Vec<EchoReply>> {
    let count = replies.len();
    replies
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("request {i} of {count} to {what} failed")))
        .collect()
}

/// The io::ErrorKind behind a request error, if it was an I/O error.
pub fn error_kind(e: &anyhow::Error) -> Option<std::io::ErrorKind> {
    e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
}

/// One request from namespace `ns` to `addr` that must be refused (a TCP
/// reset or an ICMP port unreachable) within `bound`, not time out.
pub fn assert_refused_within(
    ns: &str,
    proto: Proto,
    addr: SocketAddrV4,
    bound: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    let r = requests(ns, proto, addr, 1, Duration::from_secs(2))?;
    let elapsed = started.elapsed();
    let err = r[0].as_ref().expect_err("nothing may answer");
    anyhow::ensure!(
        error_kind(err) == Some(std::io::ErrorKind::ConnectionRefused),
        "{addr}/{proto:?}: not refused: {err:#}"
    );
    anyhow::ensure!(
        elapsed < bound,
        "{addr}/{proto:?}: the reject took {elapsed:?}"
    );
    Ok(())
}
