//! Network namespaces owned by a test, and running code inside one.
use std::{
    fs::File,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::cmd::ip;

pub use crate::tag::PREFIX;

/// A short name unique to this process and call, e.g. "wr4711x3".
pub fn unique_tag() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        path(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Moves the calling thread into namespace `name` (threads only: other threads are unaffected).
pub fn enter(name: &str) -> Result<()> {
    let file = File::open(path(name)).with_context(|| format!("opening netns {name}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {name}"))
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || -> Result<T> {
        enter(&name)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("thread in netns panicked"))?
}
