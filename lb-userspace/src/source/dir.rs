//! The directory source: Kubernetes YAML files in one directory, re-read
//! when any file's name, size or modification time changes.
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

use super::{
    parse::{parse_documents_timed, DocumentError, Object},
    status::StatusHandle,
    StateRx,
};
use crate::model::ClusterState;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("reading directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the directory held at one moment: the state built from every valid
/// object, and the documents that were skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: ClusterState,
    pub errors: Vec<DocumentError>,
}

/// Identifies the directory's content cheaply: (file, size, mtime) of each file.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub struct DirSource {
    path: PathBuf,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn files(&self) -> Result<Vec<PathBuf>, DirError> {
        let read_err = |source| DirError::ReadDir {
            path: self.path.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = fs::read_dir(&self.path)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_manifest(p))
            .collect();
        files.sort();
        Ok(files)
    }

    pub fn fingerprint(&self) -> Result<Fingerprint, DirError> {
        Ok(self
            .files()?
            .into_iter()
            .map(|p| {
                let meta = fs::metadata(&p).ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let mtime = meta.and_then(|m| m.modified().ok());
                (p, size, mtime)
            })
            .collect())
    }

    /// Reads and parses every manifest. An unreadable file is reported like a bad document.
    pub fn load(&self) -> Result<Loaded, DirError> {
        let mut loaded = Loaded::default();
        for path in self.files()? {
            let file = path.display().to_string();
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let (objects, errors, times) = parse_documents_timed(&file, &text);
                    loaded.errors.extend(errors);
                    // A slice without the trigger-time annotation changed when its file did.
                    let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
                    for object in &objects {
                        if let (Object::EndpointSlice(s), Some(t)) = (object, modified) {
                            loaded.state.slice_change_times.insert(s.id.clone(), t);
                        }
                    }
                    loaded.state.slice_change_times.extend(times);
                    insert_all(&mut loaded.state, objects);
                }
                Err(e) => loaded.errors.push(DocumentError {
                    file,
                    document: 0,
                    object: None,
                    field: None,
                    reason: format!("cannot read: {e}"),
                }),
            }
        }
        Ok(loaded)
    }
}

/// Adds objects to the state; a later definition of the same object replaces an earlier one.
pub fn insert_all(state: &mut ClusterState, objects: Vec<Object>) {
    for object in objects {
        match object {
            Object::Service(s) => {
                state.services.insert(s.id.clone(), Arc::new(s));
            }
            Object::EndpointSlice(s) => {
                state.slices.insert(s.id.clone(), Arc::new(s));
            }
            Object::Node(n) => {
                state.nodes.insert(n.name.clone(), n);
            }
            Object::Ingress(i) => {
                state.ingress.ingresses.insert(i.id.clone(), i);
            }
            Object::IngressClass(c) => {
                state.ingress.classes.insert(c.name.clone(), c);
            }
            Object::TlsSecret(s) => {
                state.ingress.tls_secrets.insert(s.id.clone(), s);
            }
            Object::GatewayClass(c) => {
                state.gateway.classes.insert(c.name.clone(), c);
            }
            Object::Gateway(g) => {
                state.gateway.gateways.insert(g.id.clone(), g);
            }
            Object::HttpRoute(r) if r.grpc => {
                state.gateway.grpc_routes.insert(r.id.clone(), r);
            }
            Object::HttpRoute(r) => {
                state.gateway.http_routes.insert(r.id.clone(), r);
            }
            Object::StreamRoute(r) => {
                state
                    .gateway
                    .stream_routes
                    .insert((r.kind, r.id.clone()), r);
            }
            Object::ReferenceGrant(g) => {
                state.gateway.reference_grants.insert(g.id.clone(), g);
            }
            Object::Namespace(name, labels) => {
                state.gateway.namespaces.insert(name, labels);
            }
        }
    }
}

/// Polls `source` every `interval` and publishes a new state whenever the
/// directory changed. A directory that cannot be read publishes nothing, so
/// the agent keeps the last state (a broken source never flushes the datapath);
/// `status` says so.
pub fn spawn(source: DirSource, interval: Duration, status: StatusHandle) -> StateRx {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let mut last: Option<Fingerprint> = None;
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let fingerprint = match source.fingerprint() {
                Ok(fp) if last.as_ref() == Some(&fp) => {
                    status.recovered("");
                    continue;
                }
                Ok(fp) => fp,
                Err(e) => {
                    warn!("{e}; keeping the last state");
                    status.failed("", &e.to_string());
                    continue;
                }
            };
            match source.load() {
                Ok(loaded) => {
                    for e in &loaded.errors {
                        warn!("skipped invalid document: {e}");
                    }
                    info!(
                        dir = %source.path().display(),
                        services = loaded.state.services.len(),
                        slices = loaded.state.slices.len(),
                        skipped_documents = loaded.errors.len(),
                        "source read"
                    );
                    last = Some(fingerprint);
                    status.recovered("");
                    status.published(loaded.errors.len());
                    if tx.send(Some(Arc::new(loaded.state))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("{e}; keeping the last state");
                    status.failed("", &e.to_string());
                }
            }
        }
    });
    rx
}
