//! A cgroup v2 directory of the test's own, below the host's cgroup2 mount
//! (never its root): the socket LB tests attach the agent's socket programs
//! here and put their client processes in it. Removed on drop.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Prefix of the test cgroups; `cargo xtask test` removes leftovers.
pub const CGROUP_PREFIX: &str = "weir-test-";

pub struct TestCgroup {
    pub path: PathBuf,
}

/// The host's cgroup2 mount point (from /proc/mounts).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    weir::dataplane::socket_lb::cgroup2_mount(&mounts).context("no cgroup2 mount")
}

impl TestCgroup {
    /// `<cgroup2 mount>/weir-test-<tag>`; `tag` starts with a netns::unique_tag().
    pub fn create(tag: &str) -> Result<Self> {
        let path = cgroup2_root()?.join(format!("{CGROUP_PREFIX}{tag}"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The clients have exited; their cgroup may take a moment to empty.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What `weir-sock-client` printed: one JSON object per request.
pub fn sock_client(
    bin: &Path,
    cgroup: Option<&Path>,
    netns: &str,
    mode: &str,
    addr: &str,
    count: usize,
) -> Result<Vec<serde_json::Value>> {
    let cgroup = cgroup.map_or_else(|| "-".to_string(), |c| c.display().to_string());
    let ns = crate::netns::path(netns).display().to_string();
    let out = crate::cmd::run(
        &bin.to_string_lossy(),
        &[&cgroup, &ns, mode, addr, &count.to_string()],
    )?;
    out.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}
