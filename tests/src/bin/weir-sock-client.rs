//! A client for the socket LB tests, as its own process: socket hooks act
//! on a process's cgroup, and only a whole process can join one. It joins
//! the cgroup, enters the network namespace, sends `count` echo requests and
//! prints one JSON line per request: what the application sees (the echo
//! reply, getpeername, the address a UDP reply came from, or the error and
//! how fast it came).
//!
//! Usage: weir-sock-client CGROUP_DIR|- NETNS_PATH tcp|udp|udp-sendto|udp-stream ADDR:PORT COUNT
//!
//! udp-stream is a DNS stub resolver's way: one connected UDP socket that
//! sends every 20 ms (COUNT times), printing each answer with the time since
//! the start, and opens a new socket when the old one fails (for instance
//! because the agent ended it).
use std::{
    io::Read,
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cgroup, netns, mode, addr, count] = args.as_slice() else {
        bail!("usage: weir-sock-client CGROUP_DIR|- NETNS_PATH tcp|udp|udp-sendto ADDR:PORT COUNT");
    };
    if cgroup != "-" {
        let procs = std::path::Path::new(cgroup).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("joining {}", procs.display()))?;
    }
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {netns}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    let addr: SocketAddr = addr.parse().context("ADDR:PORT")?;
    let count: usize = count.parse().context("COUNT")?;
    if mode == "udp-stream" {
        return udp_stream(addr, count.min(5000));
    }
    for _ in 0..count.min(1000) {
        let started = Instant::now();
        let line = match request(mode, addr) {
            Ok(mut v) => {
                v["ok"] = true.into();
                v
            }
            Err(e) => {
                let kind = e
                    .downcast_ref::<std::io::Error>()
                    .map(|io| format!("{:?}", io.kind()))
                    .unwrap_or_default();
                serde_json::json!({"ok": false, "error": format!("{e:#}"), "kind": kind})
            }
        };
        let mut line = line;
        line["micros"] = (started.elapsed().as_micros() as u64).into();
        println!("{line}");
    }
    Ok(())
}

fn udp_stream(addr: SocketAddr, count: usize) -> Result<()> {
    use std::io::Write;
    let start = Instant::now();
    let connect = || -> Result<UdpSocket> {
        let s = UdpSocket::bind(any(addr))?;
        s.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    };
    let mut socket = connect()?;
    let mut buf = [0u8; 1500];
    for _ in 0..count {
        let t_ms = start.elapsed().as_millis() as u64;
        let answer = socket
            .send(b"hello")
            .and_then(|_| socket.recv(&mut buf))
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        let line = match answer {
            Ok(reply) => serde_json::json!({"t_ms": t_ms, "ok": true, "reply": reply}),
            Err(e) => {
                let line = serde_json::json!({"t_ms": t_ms, "ok": false, "error": e.to_string()});
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    socket = connect()?;
                }
                line
            }
        };
        println!("{line}");
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The wildcard address of `addr`'s family: an AF_INET6 socket for an
/// IPv6 address, IPv4-mapped ones (::ffff:a.b.c.d) included, as a
/// dual-stack application has.
fn any(addr: SocketAddr) -> &'static str {
    if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
}

fn request(mode: &str, addr: SocketAddr) -> Result<serde_json::Value> {
    match mode {
        "tcp" => {
            let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            let peer = conn.peer_addr()?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            conn.shutdown(Shutdown::Write)?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            Ok(serde_json::json!({"reply": reply.trim(), "peer": peer.to_string()}))
        }
        "udp" => {
            let s = UdpSocket::bind(any(addr))?;
            s.connect(addr)?;
            let peer = s.peer_addr()?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.send(b"hello")?;
            let mut buf = [0u8; 1500];
            let n = s.recv(&mut buf)?;
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            Ok(serde_json::json!({"reply": reply, "peer": peer.to_string()}))
        }
        "udp-sendto" => {
            let s = UdpSocket::bind(any(addr))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.send_to(b"hello", addr)?;
            let mut buf = [0u8; 1500];
            let (n, from) = s.recv_from(&mut buf)?;
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            Ok(serde_json::json!({"reply": reply, "from": from.to_string()}))
        }
        other => bail!("unknown mode {other}"),
    }
}
