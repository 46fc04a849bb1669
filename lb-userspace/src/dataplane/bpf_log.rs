//! The kernel programs' aya-log messages (`--bpf-log`): read from their ring
//! buffer and written to the agent's log, target `bpf`. Without the flag the
//! programs are loaded with log level 0 and this reader is not started.
use aya::Ebpf;
use tokio::io::{unix::AsyncFd, Interest};

#[derive(Debug, thiserror::Error)]
pub enum BpfLogError {
    #[error("the log ring buffer: {0}")]
    Logger(#[from] aya_log::Error),
    #[error("polling the log ring buffer: {0}")]
    Poll(#[from] std::io::Error),
}

/// Passes aya-log records (which use the `log` crate) on to tracing.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Shown at info whatever their level: the flag is the opt-in.
        tracing::info!(target: "bpf", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// Starts printing the log messages of `ebpf`'s programs (a task on the
/// current runtime).
pub fn start(ebpf: &mut Ebpf) -> Result<(), BpfLogError> {
    let logger = aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing)?;
    // SAFETY: the logger owns its ring buffer map's fd, which stays open and
    // the same for as long as the logger lives, and the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| BpfLogError::Poll(std::io::Error::other(e.to_string())))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
