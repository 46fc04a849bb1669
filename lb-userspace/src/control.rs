//! The agent's control socket: what the maps cannot say, for `weir status`
//! (the last sync, the source and its health) and `weir ingress routes` (the
//! proxy's routing table).
//!
//! A unix stream socket, `/run/weir/agent.sock` by default (`--agent-socket`).
//! It is created with mode 0600 (only root talks to the agent), under a
//! temporary name that is then renamed into place, so that it never exists
//! with looser permissions and a stale socket left by a killed agent is
//! replaced atomically; a socket another agent still answers on is left
//! alone. It is removed when the agent exits cleanly.
//!
//! Protocol: one JSON request line (`"status"` or `"routes"`), one JSON
//! response, then the agent closes the connection.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tracing::debug;

use crate::{
    proxy::SharedTable,
    routes::{
        gateway_status::GatewayStatuses,
        rows::{all_rows, rows, RouteRow, RuleRow},
    },
    source::status::{rfc3339, SourceStatus, StatusHandle, TimedError},
};

pub const DEFAULT_SOCKET: &str = "/run/weir/agent.sock";

/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The longest request line accepted.
const MAX_REQUEST: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: another agent answers on this socket (give this one its own --agent-socket)")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid answer from the agent: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the agent: {0}")]
    Agent(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.into(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status,
    /// The Ingress rules (`weir ingress routes`).
    Routes,
    /// Every rule, Ingress and Gateway API (`weir routes`).
    AllRoutes,
    /// The Gateway API objects' status (`weir gateway status`).
    GatewayStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Box<AgentStatus>),
    Routes(Vec<RouteRow>),
    Rules(Vec<RuleRow>),
    GatewayStatus(Box<GatewayStatuses>),
    Error(String),
}

/// One sync of the maps: when, how long, what it programmed, and whether it failed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    pub time: String,
    pub duration_seconds: f64,
    /// "success" or "failure".
    pub result: String,
    /// What the state held.
    pub services: usize,
    pub endpoint_slices: usize,
    /// What the maps hold after it.
    pub frontends: usize,
    pub backends: usize,
    /// Frontends left out because the maps are full.
    pub skipped_frontends: usize,
    pub map_ops: usize,
    pub error: Option<String>,
}

/// What the agent says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    pub started: String,
    pub bpffs: String,
    pub source: SourceStatus,
    pub last_sync: Option<SyncReport>,
    /// The last failed sync, also after later ones succeeded.
    pub last_sync_error: Option<TimedError>,
    /// Syncs since the agent started, and how many failed.
    pub syncs: u64,
    pub sync_failures: u64,
    /// Whether the ingress proxy runs (`weir ingress routes` has a table).
    pub ingress: bool,
    /// What serves external clients on each uplink, and why.
    #[serde(default)]
    pub uplinks: Vec<UplinkStatus>,
    /// Socket-level load balancing.
    #[serde(default)]
    pub socket_lb: SocketLbStatus,
}

/// `--socket-lb` and where its programs are attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketLbStatus {
    /// "all", "host-only" or "off".
    pub mode: String,
    /// The cgroup v2 directory the programs are attached to.
    pub cgroup: String,
    /// "attached", "off", or "failed: why".
    pub state: String,
}

/// One uplink's datapath for external clients.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub device: String,
    /// "xdp-native", "xdp-generic", "tc", or "missing" (named in --devices, not there).
    pub mode: String,
    pub reason: String,
}

/// The agent's side: what it has to tell, updated as it runs.
pub struct ControlState {
    status: Mutex<AgentStatus>,
    source: StatusHandle,
    routes: Mutex<Option<SharedTable>>,
}

impl ControlState {
    pub fn new(bpffs: &Path, source: StatusHandle) -> Self {
        Self {
            status: Mutex::new(AgentStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started: rfc3339(SystemTime::now()),
                bpffs: bpffs.display().to_string(),
                ..Default::default()
            }),
            source,
            routes: Mutex::new(None),
        }
    }

    /// The routing table of the running ingress proxy.
    pub fn set_routes(&self, table: SharedTable) {
        *self.routes.lock().unwrap_or_else(|e| e.into_inner()) = Some(table);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ingress = true;
    }

    /// Records the socket LB state.
    pub fn set_socket_lb(&self, socket_lb: SocketLbStatus) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .socket_lb = socket_lb;
    }

    /// Records what serves each uplink.
    pub fn set_uplinks(&self, uplinks: Vec<UplinkStatus>) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .uplinks = uplinks;
    }

    /// Records a sync.
    pub fn synced(&self, report: SyncReport) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.syncs += 1;
        if let Some(error) = &report.error {
            s.sync_failures += 1;
            s.last_sync_error = Some(TimedError {
                time: report.time.clone(),
                error: error.clone(),
            });
        }
        s.last_sync = Some(report);
    }

    pub fn status(&self) -> AgentStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.source = self.source.snapshot();
        s
    }

    pub fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Routes | Request::AllRoutes | Request::GatewayStatus => {
                match &*self.routes.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(table) => {
                        let table = table.load();
                        match request {
                            Request::Routes => Response::Routes(rows(&table)),
                            Request::AllRoutes => Response::Rules(all_rows(&table)),
                            _ => Response::GatewayStatus(Box::new(table.gateway_status.clone())),
                        }
                    }
                    None => Response::Error(
                        "the ingress proxy is off (start the agent with --ingress)".into(),
                    ),
                }
            }
        }
    }
}

/// The bound socket; removes its path when dropped, if the path is still this socket.
pub struct ControlSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` (0600), replacing a stale socket, and serves `state` on it.
    pub fn start(path: &Path, state: Arc<ControlState>) -> Result<Self, ControlError> {
        let (listener, socket) = Self::bind(path)?;
        listener.set_nonblocking(true).map_err(io(path))?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(io(path))?;
        tokio::spawn(serve(listener, state));
        Ok(socket)
    }

    fn bind(path: &Path) -> Result<(std::os::unix::net::UnixListener, Self), ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ControlError::NotASocket { path: path.into() })
            }
            Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
                return Err(ControlError::InUse { path: path.into() })
            }
            // Absent, or stale (nobody listens): the rename below replaces it.
            _ => {}
        }
        let file_name = path
            .file_name()
            .map_or_else(|| "agent.sock".into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{file_name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io(&tmp))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path)(e));
        }
        let meta = std::fs::metadata(path).map_err(io(path))?;
        Ok((
            listener,
            Self {
                path: path.into(),
                id: (meta.dev(), meta.ino()),
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

async fn serve(listener: tokio::net::UnixListener, state: Arc<ControlState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(TIMEOUT, answer(stream, &state)).await {
                        debug!("control socket: {e}");
                    }
                });
            }
            Err(e) => {
                debug!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(stream: tokio::net::UnixStream, state: &ControlState) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let response = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => state.answer(request),
            Err(e) => Response::Error(format!("invalid request {:?}: {e}", line.trim())),
        },
        Err(e) => Response::Error(format!("reading the request: {e}")),
    };
    if let Ok(mut body) = serde_json::to_vec(&response) {
        body.push(b'\n');
        let _ = write.write_all(&body).await;
        let _ = write.shutdown().await;
    }
}

/// Asks the agent on `path` (the CLI's side).
pub fn request(path: &Path, request: Request) -> Result<Response, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(io(path))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io(path))?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io(path))?;
    let mut line = serde_json::to_vec(&request).map_err(|source| ControlError::Decode {
        path: path.into(),
        source,
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io(path))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).map_err(io(path))?;
    serde_json::from_slice(&body).map_err(|source| ControlError::Decode {
        path: path.into(),
        source,
    })
}

fn unexpected(r: Response) -> ControlError {
    match r {
        Response::Error(e) => ControlError::Agent(e),
        Response::Status(_) => ControlError::Agent("answered with a status".into()),
        Response::Routes(_) | Response::Rules(_) => {
            ControlError::Agent("answered with routes".into())
        }
        Response::GatewayStatus(_) => ControlError::Agent("answered with Gateway status".into()),
    }
}

/// The agent's status, or why it cannot be had.
pub fn status(path: &Path) -> Result<AgentStatus, ControlError> {
    match request(path, Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => Err(unexpected(other)),
    }
}

/// The proxy's Ingress rules.
pub fn routes(path: &Path) -> Result<Vec<RouteRow>, ControlError> {
    match request(path, Request::Routes)? {
        Response::Routes(r) => Ok(r),
        other => Err(unexpected(other)),
    }
}

/// Every rule of the proxy, Ingress and Gateway API.
pub fn rules(path: &Path) -> Result<Vec<RuleRow>, ControlError> {
    match request(path, Request::AllRoutes)? {
        Response::Rules(r) => Ok(r),
        other => Err(unexpected(other)),
    }
}

/// The Gateway API objects' status, as the agent computed it.
pub fn gateway_status(path: &Path) -> Result<GatewayStatuses, ControlError> {
    match request(path, Request::GatewayStatus)? {
        Response::GatewayStatus(s) => Ok(*s),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_status_with_0600_and_replaces_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("weir-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("agent.sock");
        // A stale socket: bound, then its listener gone.
        std::fs::create_dir_all(&dir).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let state = Arc::new(ControlState::new(
            Path::new("/sys/fs/bpf/x"),
            StatusHandle::new("dir", "/tmp/m"),
        ));
        let socket = ControlSocket::start(&path, state.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second agent on the same path is refused.
        assert!(matches!(
            ControlSocket::start(&path, state.clone()),
            Err(ControlError::InUse { .. })
        ));
        state.synced(SyncReport {
            result: "failure".into(),
            error: Some("map SERVICES_V1: full".into()),
            ..Default::default()
        });
        let p = path.clone();
        let status = tokio::task::spawn_blocking(move || status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.bpffs, "/sys/fs/bpf/x");
        assert_eq!(status.source.kind, "dir");
        assert_eq!((status.syncs, status.sync_failures), (1, 1));
        assert_eq!(
            status.last_sync_error.map(|e| e.error),
            Some("map SERVICES_V1: full".into())
        );
        let p = path.clone();
        let routes = tokio::task::spawn_blocking(move || routes(&p))
            .await
            .unwrap();
        assert!(matches!(routes, Err(ControlError::Agent(_))), "{routes:?}");
        drop(socket);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
