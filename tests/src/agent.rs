//! The agent as a child process inside a sandbox's node namespace, with its
//! own pin directory; stopped and cleaned up on drop.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use weir::{
    cli::{service_rows, ServiceRow},
    dataplane::{maps::Maps, sync::Programmed},
};

use crate::netns;

/// The `weir` binary: $WEIR_BIN, or target/debug/weir of this workspace.
pub fn weir_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("WEIR_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/weir"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build -p lb-userspace` (cargo xtask test does)",
            path.display()
        );
    }
    Ok(path)
}

/// Prefix of pin directories made by tests; `cargo xtask test` removes leftovers.
pub const TEST_BPFFS_PREFIX: &str = "/sys/fs/bpf/weir-test-";
/// The `--hostname-override` an agent gets unless told otherwise (the sandbox's node).
pub const DEFAULT_NODE_NAME: &str = "node-a";

pub struct Agent {
    child: Option<Child>,
    pub node_ns: String,
    pub bpffs: PathBuf,
    pub log: PathBuf,
    /// The agent's control socket (`--agent-socket`), one per agent so that
    /// agents of parallel tests do not meet.
    pub socket: PathBuf,
    /// The --source value: dir:PATH or kube.
    source: String,
    /// The --hostname-override value: the node whose endpoints are local.
    hostname: String,
    extra: Vec<String>,
}

impl Agent {
    /// Starts `weir agent` in `node_ns` on the manifest directory `source`.
    pub fn start(node_ns: &str, source: &Path, tag: &str, extra: &[&str]) -> Result<Self> {
        Self::start_source(node_ns, &format!("dir:{}", source.display()), tag, extra)
    }

    /// Starts `weir agent --source=SOURCE EXTRA...` in `node_ns`, e.g. with
    /// source `kube` and extra `--master=http://127.0.0.1:PORT`.
    pub fn start_source(node_ns: &str, source: &str, tag: &str, extra: &[&str]) -> Result<Self> {
        Self::new(node_ns, source, tag, extra).started()
    }

    /// An agent that is not running yet: set options (`with_hostname`), then
    /// `started`. Pins go to TEST_BPFFS_PREFIX + `tag`, so `tag` must start
    /// with a `netns::unique_tag()` for `cargo xtask test` to clean leftovers.
    pub fn new(node_ns: &str, source: &str, tag: &str, extra: &[&str]) -> Self {
        Self {
            child: None,
            node_ns: node_ns.to_string(),
            bpffs: PathBuf::from(format!("{TEST_BPFFS_PREFIX}{tag}")),
            log: std::env::temp_dir().join(format!("weir-test-{tag}.log")),
            socket: std::env::temp_dir().join(format!("weir-test-{tag}.sock")),
            source: source.to_string(),
            hostname: DEFAULT_NODE_NAME.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The node name the agent runs as (`--hostname-override`).
    pub fn with_hostname(mut self, name: &str) -> Self {
        self.hostname = name.to_string();
        self
    }

    /// Starts the agent configured by `new`.
    pub fn started(mut self) -> Result<Self> {
        self.spawn()?;
        Ok(self)
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Whether the agent process is running (not stopped, killed or exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("the agent in {} is already running", self.node_ns);
        }
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::path(&self.node_ns).display()))
            .arg("--")
            .arg(weir_bin()?)
            .arg("agent")
            .arg(format!("--source={}", self.source))
            .arg(format!("--bpffs={}", self.bpffs.display()))
            .arg(format!("--agent-socket={}", self.socket.display()))
            .arg(format!("--hostname-override={}", self.hostname))
            .args(["--pod-devices=lxc*", "--poll-interval-ms=100"])
            // Socket LB attaches to a cgroup: only where a test gives its own
            // child cgroup, never the host's cgroup2 root.
            .args(
                (!self.extra.iter().any(|a| a.starts_with("--socket-lb")))
                    .then_some("--socket-lb=off"),
            )
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the agent (SIGTERM, then SIGKILL after 5 s); the pins stay.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the agent with SIGKILL: no cleanup of any kind runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the extra arguments the next start passes (after `stop` or `kill`).
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the agent again (after `stop` or `kill`) on the same pins.
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    /// Starts the agent again (after `stop` or `kill`) and waits until it
    /// synced: returns how long that took from the start.
    pub fn start_again_synced(&mut self) -> Result<Duration> {
        let synced_before = self.log_text().matches(" synced").count();
        let started = Instant::now();
        self.spawn()?;
        let deadline = started + Duration::from_secs(15);
        while self.log_text().matches(" synced").count() <= synced_before {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not sync after a restart; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(started.elapsed())
    }

    /// Stops and starts the agent again on the same pins.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `weir ARGS --bpffs=PINS` for this agent (and `--agent-socket` for
    /// the commands that ask the agent) and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(weir_bin()?);
        cmd.args(args)
            .arg(format!("--bpffs={}", self.bpffs.display()));
        if matches!(
            args.first(),
            Some(&"status" | &"ingress" | &"routes" | &"gateway")
        ) {
            cmd.arg(format!("--agent-socket={}", self.socket.display()));
        }
        let out = cmd.stdin(Stdio::null()).output().context("running weir")?;
        if !out.status.success() {
            bail!(
                "weir {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `weir ARGS -o json` for this agent, parsed.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let text = self.cli(&full)?;
        serde_json::from_str(&text).with_context(|| format!("weir {args:?}: not JSON: {text}"))
    }

    /// Starts `weir monitor -o json --timeout-secs TIMEOUT [--count COUNT]
    /// ARGS` on this agent's maps, and waits 300 ms for it to open the ring.
    pub fn monitor(
        &self,
        count: Option<u64>,
        timeout_secs: u64,
        args: &[&str],
    ) -> Result<MonitorRun> {
        let mut cmd = std::process::Command::new(weir_bin()?);
        cmd.args([
            "monitor",
            "-o",
            "json",
            "--timeout-secs",
            &timeout_secs.to_string(),
        ])
        .args(["--bpffs", &self.bpffs.to_string_lossy()])
        .args(args);
        if let Some(count) = count {
            cmd.args(["--count", &count.to_string()]);
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(MonitorRun(child))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the pinned maps hold.
    pub fn programmed(&self) -> Result<Programmed> {
        Ok(Maps::open_pinned(&self.bpffs)?.read())
    }

    /// Removes every conntrack entry, so that the next packet of each flow is
    /// a new flow for the datapath.
    pub fn clear_conntrack(&self) -> Result<usize> {
        let mut maps = Maps::open_pinned(&self.bpffs)?;
        let keys: Vec<_> = maps.ct.keys().filter_map(Result::ok).collect();
        for k in &keys {
            let _ = maps.ct.remove(k);
        }
        Ok(keys.len())
    }

    /// Waits (at most `timeout`) until the programmed services satisfy `pred`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[ServiceRow]) -> bool,
    ) -> Result<Vec<ServiceRow>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "the agent exited ({status}) while waiting for {what}; log:\n{}",
                        self.log_text()
                    );
                }
            }
            let rows = self.programmed().map(|p| service_rows(&p));
            if let Ok(rows) = &rows {
                if pred(rows) {
                    return Ok(rows.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; maps: {rows:?}; agent log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the frontend `addr:port/PROTO` has exactly `backends` backends.
    pub fn wait_frontend(&mut self, frontend: &str, backends: usize) -> Result<ServiceRow> {
        let rows = self.wait_for(
            &format!("{frontend} with {backends} backends"),
            Duration::from_secs(15),
            |rows| {
                rows.iter()
                    .any(|r| r.frontend == frontend && r.backends.len() == backends)
            },
        )?;
        Ok(rows
            .into_iter()
            .find(|r| r.frontend == frontend)
            .expect("checked by the predicate"))
    }

    /// Waits until the agent logged that it attached to `device`.
    pub fn wait_attached(&mut self, device: &str) -> Result<()> {
        let needle = format!("device={device} ");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self
            .log_text()
            .lines()
            .any(|l| l.contains("attached tc ingress") && format!("{l} ").contains(&needle))
        {
            if Instant::now() > deadline {
                bail!(
                    "agent did not attach to {device}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        // Left behind only by a killed agent.
        let _ = std::fs::remove_file(&self.socket);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A running `weir monitor` (Agent::monitor).
pub struct MonitorRun(std::process::Child);

impl MonitorRun {
    /// Whether it still waits for events.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.0.try_wait()?.is_none())
    }

    /// Waits for it to end (COUNT events or its timeout): the events it printed.
    pub fn events(self) -> Result<Vec<serde_json::Value>> {
        let out = self.0.wait_with_output()?;
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }
}
