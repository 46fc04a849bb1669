//! A client for the socket LB tests, as its own process: socket hooks act
//! on a process's cgroup, and only a whole process can join one. It joins
//! the cgroup, enters the network namespace, sends `count` echo requests and
//! prints one JSON line per request: what the application sees (the echo
//! reply, getpeername, the address a UDP reply came from, or the error and
//! how fast it came).
//!
//! Usage: weir-sock-client CGROUP_DIR|- NETNS_PATH tcp|udp|udp-sendto ADDR:PORT COUNT
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
            let s = UdpSocket::bind("0.0.0.0:0")?;
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
            let s = UdpSocket::bind("0.0.0.0:0")?;
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
