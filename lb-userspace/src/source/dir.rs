//! The directory source: Kubernetes YAML files in one directory, re-read
//! when any file's name, size or modification time changes. Only the files
//! that changed are parsed again, in parallel; an unchanged file's objects
//! are the same (Arc) objects as before, so the agent finds what changed by
//! comparing pointers.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

use super::{
    parse::{parse_documents_timed, DocumentError, Object},
    status::StatusHandle,
    StateRx,
};
use crate::model::{ClusterState, EndpointSlice, ObjectRef, Service};

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
    /// Files parsed for this load (the others were unchanged).
    pub parsed_files: usize,
}

/// Identifies the directory's content cheaply: (file, size, mtime) of each file.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// A file's size and modification time: while both stay, its parse is kept.
type Stamp = (u64, Option<SystemTime>);

/// One object of a parsed file, Services and EndpointSlices already shared.
#[derive(Debug)]
enum Shared {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Other(Box<Object>),
}

/// A file's parse: its objects in document order, the documents skipped,
/// and the trigger times of its slices.
#[derive(Debug)]
struct ParsedFile {
    stamp: Stamp,
    objects: Vec<Shared>,
    errors: Vec<DocumentError>,
    times: Vec<(ObjectRef, SystemTime)>,
}

pub struct DirSource {
    path: PathBuf,
    /// The last load's parse of each readable file.
    parsed: Mutex<BTreeMap<PathBuf, Arc<ParsedFile>>>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn stamp_of(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    (size, meta.and_then(|m| m.modified().ok()))
}

/// Reads and parses one file. The stamp is taken before the read, so a file
/// written during it shows a new stamp at the next poll and is read again.
fn parse_file(path: &Path) -> Result<ParsedFile, DocumentError> {
    let stamp = stamp_of(path);
    let file = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| DocumentError {
        file: file.clone(),
        document: 0,
        object: None,
        field: None,
        reason: format!("cannot read: {e}"),
    })?;
    let (objects, errors, annotated) = parse_documents_timed(&file, &text);
    // A slice without the trigger-time annotation changed when its file did.
    let mut times = Vec::new();
    for object in &objects {
        if let (Object::EndpointSlice(s), Some(t)) = (object, stamp.1) {
            times.push((s.id.clone(), t));
        }
    }
    times.extend(annotated);
    let objects = objects
        .into_iter()
        .map(|o| match o {
            Object::Service(s) => Shared::Service(Arc::new(s)),
            Object::EndpointSlice(s) => Shared::Slice(Arc::new(s)),
            other => Shared::Other(Box::new(other)),
        })
        .collect();
    Ok(ParsedFile {
        stamp,
        objects,
        errors,
        times,
    })
}

/// Parses `paths` on up to one thread per CPU; results in the order of `paths`.
fn parse_files(paths: &[PathBuf]) -> Vec<Result<ParsedFile, DocumentError>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len());
    if threads <= 1 {
        return paths.iter().map(|p| parse_file(p)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(usize, Result<ParsedFile, DocumentError>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break };
                        done.push((i, parse_file(path)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    // By index: a worker that panicked leaves its files reported, not the
    // others' results shifted onto the wrong paths.
    let mut out: Vec<Result<ParsedFile, DocumentError>> = paths
        .iter()
        .map(|p| {
            Err(DocumentError {
                file: p.display().to_string(),
                document: 0,
                object: None,
                field: None,
                reason: "the parser failed".into(),
            })
        })
        .collect();
    for (i, r) in results {
        out[i] = r;
    }
    out
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            parsed: Mutex::default(),
        }
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
                let (size, mtime) = stamp_of(&p);
                (p, size, mtime)
            })
            .collect())
    }

    /// Reads every manifest: the files whose size or modification time
    /// changed since the last load are parsed again, the others give the
    /// objects they gave then. An unreadable file is reported like a bad
    /// document (and read again next time).
    pub fn load(&self) -> Result<Loaded, DirError> {
        let files = self.files()?;
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<PathBuf> = files
            .iter()
            .filter(|p| parsed.get(*p).is_none_or(|f| f.stamp != stamp_of(p)))
            .cloned()
            .collect();
        let mut fresh: BTreeMap<&PathBuf, Result<ParsedFile, DocumentError>> =
            stale.iter().zip(parse_files(&stale)).collect();
        let mut next = BTreeMap::new();
        let mut loaded = Loaded {
            parsed_files: stale.len(),
            ..Loaded::default()
        };
        for path in files {
            let file = match fresh.remove(&path) {
                Some(Ok(file)) => Arc::new(file),
                Some(Err(e)) => {
                    loaded.errors.push(e);
                    continue;
                }
                None => match parsed.get(&path) {
                    Some(file) => file.clone(),
                    None => continue,
                },
            };
            loaded.errors.extend(file.errors.iter().cloned());
            loaded
                .state
                .slice_change_times
                .extend(file.times.iter().cloned());
            insert_shared(&mut loaded.state, &file.objects);
            next.insert(path, file);
        }
        *parsed = next;
        Ok(loaded)
    }
}

fn insert_shared(state: &mut ClusterState, objects: &[Shared]) {
    for object in objects {
        match object {
            Shared::Service(s) => {
                state.services.insert(s.id.clone(), s.clone());
            }
            Shared::Slice(s) => {
                state.slices.insert(s.id.clone(), s.clone());
            }
            Shared::Other(o) => insert_all(state, vec![(**o).clone()]),
        }
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
    let source = Arc::new(source);
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
            // Parsing a large directory takes seconds: off the agent's runtime.
            let loading = source.clone();
            let result = tokio::task::spawn_blocking(move || {
                let loaded = loading.load();
                crate::memory::release_freed();
                loaded
            })
            .await
            .unwrap_or_else(|e| {
                Err(DirError::ReadDir {
                    path: source.path().to_path_buf(),
                    source: std::io::Error::other(format!("the reader failed: {e}")),
                })
            });
            match result {
                Ok(loaded) => {
                    for e in &loaded.errors {
                        warn!("skipped invalid document: {e}");
                    }
                    info!(
                        dir = %source.path().display(),
                        services = loaded.state.services.len(),
                        slices = loaded.state.slices.len(),
                        skipped_documents = loaded.errors.len(),
                        parsed_files = loaded.parsed_files,
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
