//! Backend servers for the end-to-end benchmark, inside a pod's namespace:
//! TCP on one port answers each line with "ok\n" until the client closes
//! (one request per connection or many on a kept-alive one); UDP on another
//! port answers each datagram with "ok", except one-way stream datagrams,
//! which it counts. A fixed pool of threads (no thread
//! per connection, whose cost would blur the dataplanes' differences), all
//! stopped on drop; nothing lives longer than MAX_LIFETIME.
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use weir_tests::netns::enter;

const MAX_LIFETIME: Duration = Duration::from_secs(1800);
const POLL: Duration = Duration::from_millis(50);

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// One-way stream datagrams received (load::STREAM_MARK).
    received: Arc<AtomicU64>,
}

impl Servers {
    /// `tcp_workers` TCP threads on `tcp_port` and two UDP threads on `udp_port`, in namespace `ns`.
    pub fn start(ns: &str, tcp_port: u16, udp_port: u16, tcp_workers: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let (ns2, stop2, received2) = (ns.to_string(), stop.clone(), received.clone());
        // One thread binds both sockets in the namespace, then starts the workers.
        let binder = std::thread::spawn(move || {
            let bound = (|| -> Result<(TcpListener, UdpSocket)> {
                enter(&ns2)?;
                let any = |p| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p);
                let tcp = TcpListener::bind(any(tcp_port)).context("bind tcp")?;
                accept_timeout(&tcp, POLL)?;
                let udp = UdpSocket::bind(any(udp_port)).context("bind udp")?;
                udp.set_read_timeout(Some(POLL))?;
                Ok((tcp, udp))
            })();
            let (tcp, udp) = match bound {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Vec::new();
                }
            };
            let mut workers = Vec::new();
            for _ in 0..tcp_workers {
                let (l, stop) = (tcp.try_clone(), stop2.clone());
                if let Ok(l) = l {
                    workers.push(std::thread::spawn(move || tcp_worker(&l, &stop)));
                }
            }
            for _ in 0..2 {
                let (s, stop, count) = (udp.try_clone(), stop2.clone(), received2.clone());
                if let Ok(s) = s {
                    workers.push(std::thread::spawn(move || udp_worker(&s, &stop, &count)));
                }
            }
            let _ = tx.send(Ok(()));
            workers
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("bench servers in {ns} did not start"))??;
        let threads = binder
            .join()
            .map_err(|_| anyhow!("bench server thread panicked"))?;
        Ok(Self {
            stop,
            threads,
            received,
        })
    }

    /// Stream datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes accept() on `l` return EAGAIN after `timeout` (SO_RCVTIMEO), so
/// that workers see the stop flag.
fn accept_timeout(l: &TcpListener, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(())
}

fn tcp_worker(listener: &TcpListener, stop: &AtomicBool) {
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_LIFETIME {
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(POLL * 4));
        let Ok(mut writer) = conn.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if writer.write_all(b"ok\n").is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
}

fn udp_worker(socket: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_LIFETIME {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n > 0 && buf[0] == super::load::STREAM_MARK {
                received.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = socket.send_to(b"ok", peer);
            }
        }
    }
}
