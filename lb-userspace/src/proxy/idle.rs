//! An idle timeout for client connections: an IO wrapper that notes the time
//! of the last byte read or written, and a watchdog future that completes
//! once the connection has been silent for the limit. A connection with a
//! request waiting for its upstream's response headers is not idle (the
//! upstream timeout governs that wait, as nginx's keepalive_timeout does not
//! apply to a request in progress either); the silence counts from when the
//! last such request got its answer.
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// Milliseconds since `start` of the last activity, and the requests of
/// the connection that wait for their response.
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    waiting: Arc<AtomicUsize>,
}

/// Marks a request as waiting for its response until dropped.
pub struct Waiting(Activity);

impl Drop for Waiting {
    fn drop(&mut self) {
        // Touch first: the watchdog must not see zero waiting requests with
        // the silence of the whole wait behind them.
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request of this connection waits for its response until the guard drops.
    pub fn waiting(&self) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self.clone())
    }

    /// Completes once nothing was read or written for `limit` and no request
    /// waited for its response meanwhile.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            if self.waiting.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let silent = self.start.elapsed().saturating_sub(last);
            if silent >= limit {
                return;
            }
            tokio::time::sleep(limit - silent).await;
        }
    }
}

pub struct IdleIo<T> {
    inner: T,
    activity: Activity,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_the_limit() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        a.idle_for(limit).await;
        assert_eq!(started.elapsed(), limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_keeps_the_connection_and_its_end_restarts_the_clock() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let guard = a.waiting();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(35)).await;
            drop(guard);
        });
        a.idle_for(limit).await;
        release.await.expect("release task");
        let elapsed = started.elapsed();
        // Idle no earlier than `limit` after the response, and within one
        // more check interval of it.
        assert!(elapsed >= Duration::from_secs(45), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(55), "{elapsed:?}");
    }
}
