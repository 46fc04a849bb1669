//! The load generator: `concurrency` threads in the client pod's namespace,
//! each running one kind of transaction back to back for `duration`, timing
//! every transaction. Bounded in time and in count.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use weir_tests::netns::enter;

use crate::stats::quantile;

/// What one transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// A new TCP connection per request: connect, request, answer, close.
    TcpCrr,
    /// Requests on a kept-alive TCP connection (one per thread).
    TcpRr,
    /// UDP request and answer (one socket per thread).
    UdpRr,
    /// UDP datagrams one way, as fast as the threads send them; the rate is
    /// what the backends receive (counted by the servers), not what was sent.
    UdpStream,
}

/// The first byte of a stream datagram: the servers count it and do not answer.
pub const STREAM_MARK: u8 = b's';

impl Test {
    pub const ALL: [Test; 4] = [Test::TcpCrr, Test::TcpRr, Test::UdpRr, Test::UdpStream];

    pub fn name(self) -> &'static str {
        match self {
            Test::TcpCrr => "new TCP connections/s",
            Test::TcpRr => "requests/s, kept-alive TCP",
            Test::UdpRr => "UDP requests/s",
            Test::UdpStream => "UDP packets/s received, one way",
        }
    }

    pub fn udp(self) -> bool {
        matches!(self, Test::UdpRr | Test::UdpStream)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub per_second: f64,
    /// Transactions (for UdpStream: datagrams sent) per second.
    pub sent_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// The most transactions one thread records (bounds memory and time).
const MAX_OPS: usize = 5_000_000;

/// Runs `test` against `addr` from namespace `ns`. For UdpStream,
/// `received` counts what the backends got (see server::Servers::received).
pub fn run(
    ns: &str,
    test: Test,
    addr: SocketAddrV4,
    concurrency: usize,
    duration: Duration,
    received: &dyn Fn() -> u64,
) -> Result<Outcome> {
    let before = received();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let ns = ns.to_string();
            std::thread::spawn(move || -> Result<(Vec<f64>, u64)> {
                enter(&ns)?;
                Ok(worker(test, addr, duration))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, err) = t.join().map_err(|_| anyhow!("load thread panicked"))??;
        all.extend(lat);
        errors += err;
    }
    let sent_per_second = all.len() as f64 / duration.as_secs_f64();
    if test == Test::UdpStream {
        // Datagrams still in flight arrive within moments.
        std::thread::sleep(Duration::from_millis(200));
        let got = received().saturating_sub(before);
        return Ok(Outcome {
            per_second: got as f64 / duration.as_secs_f64(),
            sent_per_second,
            p50_us: 0.0,
            p99_us: 0.0,
            errors,
        });
    }
    Ok(Outcome {
        per_second: sent_per_second,
        sent_per_second,
        p50_us: quantile(&mut all, 0.5),
        p99_us: quantile(&mut all, 0.99),
        errors,
    })
}

/// Transactions back to back until `duration` is over: their latencies in µs and the errors.
fn worker(test: Test, addr: SocketAddrV4, duration: Duration) -> (Vec<f64>, u64) {
    let deadline = Instant::now() + duration;
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let udp = test
        .udp()
        .then(|| {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.connect(addr).ok()?;
            s.set_read_timeout(Some(OP_TIMEOUT)).ok()?;
            Some(s)
        })
        .flatten();
    let mut line = String::new();
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && lat.len() < MAX_OPS {
        let t = Instant::now();
        let ok = match test {
            Test::TcpCrr => crr(addr, &mut line).is_ok(),
            Test::TcpRr => {
                if conn.is_none() {
                    conn = connect(addr).ok();
                }
                match conn.as_mut() {
                    Some((w, r)) => {
                        let ok = request(w, r, &mut line).is_ok();
                        if !ok {
                            conn = None;
                        }
                        ok
                    }
                    None => false,
                }
            }
            Test::UdpRr => udp
                .as_ref()
                .is_some_and(|s| s.send(b"x").is_ok() && s.recv(&mut buf).is_ok()),
            // A full socket buffer (ENOBUFS) is not an error here: the
            // receiver's count is what matters.
            Test::UdpStream => udp
                .as_ref()
                .is_some_and(|s| s.send(&[STREAM_MARK; 16]).is_ok()),
        };
        if ok {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            errors += 1;
            if errors > 10_000 {
                break;
            }
        }
    }
    (lat, errors)
}

fn connect(addr: SocketAddrV4) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), OP_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(OP_TIMEOUT))?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

fn request(w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &mut String) -> Result<()> {
    w.write_all(b"x\n")?;
    line.clear();
    if r.read_line(line)? == 0 {
        anyhow::bail!("closed");
    }
    Ok(())
}

fn crr(addr: SocketAddrV4, line: &mut String) -> Result<()> {
    let (mut w, mut r) = connect(addr)?;
    request(&mut w, &mut r, line)
    // Dropping both halves closes the connection.
}
