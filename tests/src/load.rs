//! Steady load through a frontend while something disruptive happens (agent
//! restarts, upgrades): a long-lived TCP stream, a loop of new TCP
//! connections and a UDP socket sending over and over, each tallying its
//! successes and failures. Every loop stops at `stop` or after MAX_RUN.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{netns::enter, scenario::TIMEOUT};

/// No load loop runs longer than this, whatever happens.
pub const MAX_RUN: Duration = Duration::from_secs(90);
/// Pause between two steps of a loop.
const STEP_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, r: Result<()>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The three kinds of load, started together against one TCP and one UDP frontend.
pub struct Load {
    stop: Arc<AtomicBool>,
    stream: JoinHandle<Result<Tally>>,
    connections: JoinHandle<Result<Tally>>,
    datagrams: JoinHandle<Result<Tally>>,
}

/// What each kind of load counted.
#[derive(Debug)]
pub struct LoadTally {
    pub stream: Tally,
    pub connections: Tally,
    pub datagrams: Tally,
}

impl LoadTally {
    pub fn failed(&self) -> u64 {
        self.stream.failed + self.connections.failed + self.datagrams.failed
    }

    /// The fewest successes of the three kinds.
    pub fn least_ok(&self) -> u64 {
        self.stream
            .ok
            .min(self.connections.ok)
            .min(self.datagrams.ok)
    }
}

impl Load {
    /// Starts the load from namespace `ns` (echo servers answer TCP lines and UDP datagrams).
    pub fn start(ns: &str, tcp: SocketAddrV4, udp: SocketAddrV4) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        Self {
            stream: stream(ns, tcp, &stop),
            connections: repeat(ns, &stop, move || connection(tcp)),
            datagrams: {
                let socket: Arc<Mutex<Option<UdpSocket>>> = Arc::default();
                repeat(ns, &stop, move || datagram(&socket, udp))
            },
            stop,
        }
    }

    /// Stops every loop and returns their tallies.
    pub fn finish(self) -> Result<LoadTally> {
        self.stop.store(true, Ordering::Relaxed);
        let join =
            |h: JoinHandle<Result<Tally>>| h.join().map_err(|_| anyhow!("load thread panicked"))?;
        Ok(LoadTally {
            stream: join(self.stream)?,
            connections: join(self.connections)?,
            datagrams: join(self.datagrams)?,
        })
    }
}

/// One connection kept open: every line must come back from the backend
/// that greeted it. Stops at the first failure (the stream is broken).
fn stream(ns: &str, addr: SocketAddrV4, stop: &Arc<AtomicBool>) -> JoinHandle<Result<Tally>> {
    let (ns, stop) = (ns.to_string(), stop.clone());
    std::thread::spawn(move || {
        enter(&ns)?;
        let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), TIMEOUT)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        let backend = greeting
            .split_whitespace()
            .next()
            .context("greeting")?
            .to_string();
        let (start, mut tally, mut n) = (Instant::now(), Tally::default(), 0u64);
        while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_RUN {
            n += 1;
            let mut line = String::new();
            let r = writeln!(conn, "{n}")
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    reader.read_line(&mut line)?;
                    if line.trim() != format!("{backend} {n}") {
                        bail!("line {n}: got {line:?}");
                    }
                    Ok(())
                });
            let broken = r.is_err();
            tally.record(r);
            if broken {
                break;
            }
            std::thread::sleep(STEP_PAUSE);
        }
        Ok(tally)
    })
}

/// Runs `step` every STEP_PAUSE inside namespace `ns` until `stop` (or MAX_RUN).
fn repeat(
    ns: &str,
    stop: &Arc<AtomicBool>,
    mut step: impl FnMut() -> Result<()> + Send + 'static,
) -> JoinHandle<Result<Tally>> {
    let (ns, stop) = (ns.to_string(), stop.clone());
    std::thread::spawn(move || {
        enter(&ns)?;
        let start = Instant::now();
        let mut tally = Tally::default();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_RUN {
            tally.record(step());
            std::thread::sleep(STEP_PAUSE);
        }
        Ok(tally)
    })
}

/// A new connection: connect, half-close, read the whole answer.
fn connection(addr: SocketAddrV4) -> Result<()> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    if reply.is_empty() {
        bail!("empty reply");
    }
    Ok(())
}

/// One datagram and its answer on a socket kept across steps (one flow).
fn datagram(socket: &Mutex<Option<UdpSocket>>, addr: SocketAddrV4) -> Result<()> {
    let mut guard = socket.lock().map_err(|_| anyhow!("poisoned"))?;
    if guard.is_none() {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(addr)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        *guard = Some(s);
    }
    let s = guard.as_ref().context("socket")?;
    s.send(b"ping")?;
    let mut buf = [0u8; 256];
    s.recv(&mut buf)?;
    Ok(())
}
