//! A fake Kubernetes apiserver speaking the list/watch wire protocol over
//! plain HTTP on 127.0.0.1 (or on loopback inside a test's network
//! namespace), for the kube source's tests. No real apiserver runs here.
//!
//! It serves `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`
//! and `/api/v1/nodes`:
//! - lists carry `metadata.resourceVersion` (one global counter, as etcd has);
//! - `?watch=true&resourceVersion=N` streams newline-delimited WatchEvents
//!   (ADDED, MODIFIED, DELETED, BOOKMARK with allowWatchBookmarks, ERROR),
//!   replaying the history after N first;
//! - `labelSelector` (`k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated) and
//!   `fieldSelector` (`metadata.name=`, `metadata.namespace=`) are honoured; an
//!   object that stops matching is sent as DELETED, one that starts as ADDED,
//!   as the real apiserver does. Paging (`limit`) is ignored: one page.
//!
//! Test controls: [`FakeApiserver::apply`], [`FakeApiserver::delete`],
//! [`FakeApiserver::drop_watches`] (abrupt close of every watch stream),
//! [`FakeApiserver::expire_next_watches`] (410 Gone as an ERROR event or as an
//! HTTP 410), [`FakeApiserver::compact`] (older resourceVersions expire),
//! [`FakeApiserver::go_down`] / [`FakeApiserver::come_back`] (the port refuses
//! connections, then listens again), [`FakeApiserver::bookmark`].
//!
//! The server runs on its own thread with a current-thread tokio runtime, so
//! it serves sync and async tests alike, and can be bound inside a network
//! namespace (`start_in_netns`): the thread enters the namespace first.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// The kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Ingress,
    IngressClass,
    Secret,
    Namespace,
    GatewayClass,
    Gateway,
    HttpRoute,
    ReferenceGrant,
}

const GATEWAY_API: &str = "/apis/gateway.networking.k8s.io/v1";

impl Kind {
    /// A Gateway API kind: served only once `install_gateway_crds` was called.
    fn is_gateway_api(self) -> bool {
        matches!(
            self,
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute | Kind::ReferenceGrant
        )
    }

    /// The collection's path segment.
    fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Ingress => "ingresses",
            Kind::IngressClass => "ingressclasses",
            Kind::Secret => "secrets",
            Kind::Namespace => "namespaces",
            Kind::GatewayClass => "gatewayclasses",
            Kind::Gateway => "gateways",
            Kind::HttpRoute => "httproutes",
            Kind::ReferenceGrant => "referencegrants",
        }
    }

    fn all() -> [Kind; 11] {
        [
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Node,
            Kind::Ingress,
            Kind::IngressClass,
            Kind::Secret,
            Kind::Namespace,
            Kind::GatewayClass,
            Kind::Gateway,
            Kind::HttpRoute,
            Kind::ReferenceGrant,
        ]
    }

    /// The API prefix of the kind's group and version.
    fn prefix(self) -> String {
        match self.api_version() {
            "v1" => "/api/v1".to_string(),
            other => format!("/apis/{other}"),
        }
    }

    /// The kind, namespace ("" when cluster-scoped) and name of an object
    /// path, with what follows it (e.g. "status").
    fn object_path(path: &str) -> Option<(Self, String, String, String)> {
        Kind::all().into_iter().find_map(|kind| {
            let rest = path.strip_prefix(&kind.prefix())?;
            let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
            let (ns, name, tail) = match (kind.namespaced(), parts.as_slice()) {
                (true, ["namespaces", ns, plural, name, tail @ ..]) if *plural == kind.plural() => {
                    (ns.to_string(), name.to_string(), tail.join("/"))
                }
                (false, [plural, name, tail @ ..]) if *plural == kind.plural() => {
                    (String::new(), name.to_string(), tail.join("/"))
                }
                _ => return None,
            };
            Some((kind, ns, name, tail))
        })
    }

    fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            "Ingress" => Some(Kind::Ingress),
            "IngressClass" => Some(Kind::IngressClass),
            "Secret" => Some(Kind::Secret),
            "Namespace" => Some(Kind::Namespace),
            "GatewayClass" => Some(Kind::GatewayClass),
            "Gateway" => Some(Kind::Gateway),
            "HTTPRoute" => Some(Kind::HttpRoute),
            "ReferenceGrant" => Some(Kind::ReferenceGrant),
            _ => None,
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        if let Some(plural) = path
            .strip_prefix(GATEWAY_API)
            .and_then(|p| p.strip_prefix('/'))
        {
            return Kind::all()
                .into_iter()
                .find(|k| k.is_gateway_api() && k.plural() == plural);
        }
        match path {
            "/api/v1/namespaces" => Some(Kind::Namespace),
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            "/apis/networking.k8s.io/v1/ingresses" => Some(Kind::Ingress),
            "/apis/networking.k8s.io/v1/ingressclasses" => Some(Kind::IngressClass),
            "/api/v1/secrets" => Some(Kind::Secret),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::Namespace => "Namespace",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
            k if k.is_gateway_api() => "gateway.networking.k8s.io/v1",
            _ => "v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node | Kind::IngressClass | Kind::Namespace | Kind::GatewayClass
        )
    }
}

/// How a 410 Gone is answered to a watch request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// HTTP 200 with one `ERROR` WatchEvent carrying a Status with code 410
    /// (what the apiserver's watch cache does for a too-old resourceVersion).
    Event,
    /// An HTTP 410 response with a Status body.
    Http,
}

/// One request as received: method, path and decoded query.
#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    pub query: BTreeMap<String, String>,
}

impl Logged {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

type Key = (Kind, String, String);

struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    /// None: deleted (then `old` carries the deletion's resourceVersion).
    new: Option<Value>,
}

struct Watcher {
    kind: Kind,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Line>,
}

enum Line {
    Data(Bytes),
    /// Ends the stream abruptly (no terminating chunk): a dropped connection.
    Abort,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    watchers: Vec<Watcher>,
    expire_next: usize,
    expire_mode: Option<Gone>,
    log: Vec<Logged>,
    /// Status patches received: (path, body).
    status_patches: Vec<(String, Value)>,
    /// The Gateway API's CRDs are installed: its kinds are served.
    gateway_crds: bool,
    /// Kinds whose list and watch answer 403 (RBAC not granted).
    forbidden: Vec<Kind>,
    /// Events created (POST .../events), as received.
    events: Vec<Value>,
    /// Between go_down and come_back: no request is served and no watch
    /// registered, even on a connection that outlived go_down.
    down: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Power {
    Up,
    Down,
    Shutdown,
}

pub struct FakeApiserver {
    state: Arc<Mutex<State>>,
    port: u16,
    power: watch::Sender<Power>,
    acks: std_mpsc::Receiver<Result<u16, String>>,
    thread: Option<JoinHandle<()>>,
}

const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the server lives, whatever the test does.
const MAX_LIFETIME: Duration = Duration::from_secs(900);

impl FakeApiserver {
    /// Listens on 127.0.0.1:<ephemeral port> in the test's own namespace.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// Listens on 127.0.0.1:<ephemeral port> inside network namespace `ns`
    /// (loopback must be up there, as `Netns::create` leaves it).
    pub fn start_in_netns(ns: &str) -> Result<Self> {
        Self::start_inner(Some(ns.to_string()))
    }

    fn start_inner(ns: Option<String>) -> Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let (power, power_rx) = watch::channel(Power::Up);
        let (ack_tx, acks) = std_mpsc::channel();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                if let Some(ns) = &ns {
                    if let Err(e) = crate::netns::enter(ns) {
                        let _ = ack_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ack_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(serve(shared, power_rx, ack_tx));
            })
            .context("spawning the fake apiserver thread")?;
        let mut server = Self {
            state,
            port: 0,
            power,
            acks,
            thread: Some(thread),
        };
        server.port = server.wait_ack("start")?;
        Ok(server)
    }

    fn wait_ack(&self, what: &str) -> Result<u16> {
        match self.acks.recv_timeout(ACK_TIMEOUT) {
            Ok(Ok(port)) => Ok(port),
            Ok(Err(e)) => bail!("fake apiserver {what}: {e}"),
            Err(_) => bail!("fake apiserver {what}: no answer within {ACK_TIMEOUT:?}"),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kube client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current (last handed out) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Creates or replaces an object (given as JSON with apiVersion, kind and
    /// metadata.name). Returns its new resourceVersion.
    pub fn apply(&self, object: impl serde::Serialize) -> Result<u64> {
        let mut object = serde_json::to_value(object)?;
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::from_kind)
            .ok_or_else(|| anyhow!("object without a served kind: {object}"))?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("object without metadata.name"))?
            .to_string();
        let namespace = if kind.namespaced() {
            let ns = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let key = (kind, namespace, name);
        let old = st.objects.get(&key).cloned();
        let uid = old
            .as_ref()
            .and_then(|o| o.pointer("/metadata/uid").cloned())
            .unwrap_or_else(|| json!(format!("uid-{rv}")));
        object["apiVersion"] = json!(kind.api_version());
        object["metadata"]["uid"] = uid;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key, object.clone());
        st.record(Change {
            rv,
            kind,
            old,
            new: Some(object),
        });
        Ok(rv)
    }

    /// Deletes an object; `namespace` is ignored for Nodes. Fails if it does not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<u64> {
        let mut st = self.lock();
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (kind, namespace.to_string(), name.to_string());
        let Some(mut old) = st.objects.remove(&key) else {
            bail!("delete: no {} {namespace}/{name}", kind.name());
        };
        st.rv += 1;
        let rv = st.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.record(Change {
            rv,
            kind,
            old: Some(old),
            new: None,
        });
        Ok(rv)
    }

    /// Closes every open watch stream abruptly, as a network drop would.
    pub fn drop_watches(&self) {
        let mut st = self.lock();
        for w in st.watchers.drain(..) {
            let _ = w.tx.send(Line::Abort);
        }
    }

    /// The next `count` watch requests are answered with 410 Gone.
    pub fn expire_next_watches(&self, count: usize, how: Gone) {
        let mut st = self.lock();
        st.expire_next = count;
        st.expire_mode = Some(how);
    }

    /// Forgets the history: a watch from any resourceVersion older than the
    /// current one gets 410 Gone (an ERROR event), like a compacted etcd.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Sends a BOOKMARK with the current resourceVersion on every watch that allows them.
    pub fn bookmark(&self) {
        let mut st = self.lock();
        let rv = st.rv;
        st.watchers.retain(|w| {
            !w.bookmarks
                || w.tx
                    .send(Line::Data(event_line(
                        "BOOKMARK",
                        &json!({
                            "kind": w.kind.name(),
                            "apiVersion": w.kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        }),
                    )))
                    .is_ok()
        });
    }

    /// Closes the port and every connection; connections are refused until `come_back`.
    pub fn go_down(&self) -> Result<()> {
        {
            // One critical section: no watch registers after the streams
            // end, whatever the connection tasks are doing meanwhile.
            let mut st = self.lock();
            st.down = true;
            // Abruptly, like a dying server (a stream that ends cleanly
            // makes a client watch again at once, before the port closes).
            for w in st.watchers.drain(..) {
                let _ = w.tx.send(Line::Abort);
            }
        }
        self.power.send_replace(Power::Down);
        self.wait_ack("go down").map(|_| ())
    }

    /// Listens again on the same port.
    pub fn come_back(&self) -> Result<()> {
        self.lock().down = false;
        self.power.send_replace(Power::Up);
        let port = self.wait_ack("come back")?;
        if port != self.port {
            bail!(
                "fake apiserver came back on port {port} instead of {}",
                self.port
            );
        }
        Ok(())
    }

    /// Every request received so far.
    /// The Events created, as received (with the name the fake gave them).
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// Serves the Gateway API kinds from now on (as installing its CRDs does);
    /// before, their paths answer 404.
    pub fn install_gateway_crds(&self) {
        self.lock().gateway_crds = true;
    }

    /// Answers 403 to lists and watches of `kind` (`on`), as an apiserver
    /// does without the RBAC grant; or serves it again.
    pub fn forbid(&self, kind: Kind, on: bool) {
        let mut st = self.lock();
        st.forbidden.retain(|k| *k != kind);
        if on {
            st.forbidden.push(kind);
        }
    }

    /// The current object, as a client would GET it.
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        self.lock()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The status patches received: (path, JSON body).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.lock().status_patches.clone()
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        let mut st = self.lock();
        st.watchers.retain(|w| !w.tx.is_closed());
        st.watchers.len()
    }

    /// Waits (at most `timeout`) until `count` watch streams are open.
    pub fn wait_watches(&self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.open_watches();
            if open >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{open} watch streams open after {timeout:?}, expected {count}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.power.send_replace(Power::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    /// Appends a change to the history and sends it to the watches it concerns.
    fn record(&mut self, change: Change) {
        self.watchers.retain(|w| {
            if w.kind != change.kind {
                return true;
            }
            match event_for(&change, &w.selector) {
                Some(line) => w.tx.send(Line::Data(line)).is_ok(),
                None => true,
            }
        });
        self.history.push(change);
    }
}

/// The WatchEvent a change means for a watch with `selector`, if any.
fn event_for(change: &Change, selector: &Selector) -> Option<Bytes> {
    let was = change.old.as_ref().is_some_and(|o| selector.matches(o));
    match &change.new {
        Some(new) => match (was, selector.matches(new)) {
            (true, true) => Some(event_line("MODIFIED", new)),
            (false, true) => Some(event_line("ADDED", new)),
            (true, false) => {
                // Out of the selection: the watcher sees a deletion (with the new resourceVersion).
                Some(event_line("DELETED", new))
            }
            (false, false) => None,
        },
        None => was.then(|| event_line("DELETED", change.old.as_ref().expect("was"))),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialise");
    line.push(b'\n');
    Bytes::from(line)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

// ---- selectors ----

#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Selector {
    fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        let mut sel = Selector::default();
        for req in labels.unwrap_or("").split(',').filter(|r| !r.is_empty()) {
            let req = req.trim();
            let parsed = if let Some((k, v)) = req.split_once("!=") {
                LabelReq::NotEquals(k.into(), v.into())
            } else if let Some((k, v)) = req.split_once("==") {
                LabelReq::Equals(k.into(), v.into())
            } else if let Some((k, v)) = req.split_once('=') {
                LabelReq::Equals(k.into(), v.into())
            } else if let Some(k) = req.strip_prefix('!') {
                LabelReq::NotExists(k.into())
            } else if req.contains(' ') || req.contains('(') {
                return Err(format!("unsupported label selector {req:?}"));
            } else {
                LabelReq::Exists(req.into())
            };
            sel.labels.push(parsed);
        }
        for req in fields.unwrap_or("").split(',').filter(|r| !r.is_empty()) {
            let (k, v) = req
                .split_once("==")
                .or_else(|| req.split_once('='))
                .ok_or_else(|| format!("unsupported field selector {req:?}"))?;
            if k != "metadata.name" && k != "metadata.namespace" && k != "type" {
                return Err(format!("field label not supported: {k}"));
            }
            sel.fields.push((k.into(), v.into()));
        }
        Ok(sel)
    }

    fn matches(&self, object: &Value) -> bool {
        let label = |k: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => label(k) != Some(v.as_str()),
        });
        let fields_ok = self.fields.iter().all(|(k, v)| {
            let field = match k.as_str() {
                "metadata.name" => "/metadata/name",
                "type" => "/type",
                _ => "/metadata/namespace",
            };
            object.pointer(field).and_then(Value::as_str).unwrap_or("") == v
        });
        labels_ok && fields_ok
    }
}

// ---- the server ----

type Body = BoxBody<Bytes, std::io::Error>;

async fn serve(
    state: Arc<Mutex<State>>,
    mut power: watch::Receiver<Power>,
    acks: std_mpsc::Sender<Result<u16, String>>,
) {
    let started = Instant::now();
    let mut port = 0u16;
    loop {
        let bound = bind(port);
        let listener = match bound {
            Ok(l) => l,
            Err(e) => {
                let _ = acks.send(Err(e.to_string()));
                return;
            }
        };
        port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        let _ = acks.send(Ok(port));
        loop {
            let mut conn_power = power.clone();
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let method = req.method().clone();
                                if method == hyper::Method::PATCH || method == hyper::Method::POST {
                                    let path = req.uri().path().to_string();
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    return Ok::<_, Infallible>(if method == hyper::Method::POST {
                                        create_event(&state, &path, &body)
                                    } else {
                                        patch_status(&state, &path, &body)
                                    });
                                }
                                Ok::<_, Infallible>(handle(&state, req))
                            }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = conn => {}
                            // Going down drops the connection, open watches included.
                            _ = conn_power.wait_for(|p| *p != Power::Up) => {}
                        }
                    });
                }
                _ = power.wait_for(|p| *p != Power::Up) => break,
                _ = tokio::time::sleep(MAX_LIFETIME.saturating_sub(started.elapsed())) => return,
            }
        }
        drop(listener);
        if *power.borrow() == Power::Shutdown {
            return;
        }
        let _ = acks.send(Ok(port));
        // Down: wait to come back (or to shut down).
        match power.wait_for(|p| *p != Power::Down).await {
            Ok(p) if *p == Power::Up => {}
            _ => return,
        }
    }
}

fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(64)
}

fn full(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON values serialise"));
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(bytes).map_err(|never| match never {}).boxed())
        .expect("valid response")
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// POST /api/v1/namespaces/NS/events: recorded and echoed back with a name.
fn create_event(state: &Mutex<State>, path: &str, body: &[u8]) -> Response<Body> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if !matches!(parts.as_slice(), ["api", "v1", "namespaces", _, "events"]) {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "the fake only creates Events"),
        );
    }
    let mut event: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return full(
                StatusCode::BAD_REQUEST,
                &status(400, "BadRequest", &e.to_string()),
            )
        }
    };
    st.rv += 1;
    let prefix = event
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .unwrap_or("event.")
        .to_string();
    event["metadata"]["name"] = json!(format!("{prefix}{}", st.rv));
    event["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    st.events.push(event.clone());
    full(StatusCode::CREATED, &event)
}

/// PATCH .../namespaces/NS/ingresses/NAME/status with a merge patch: the
/// object's status is replaced by the patch's (enough for status writers),
/// and watches see the change.
fn patch_status(state: &Mutex<State>, path: &str, body: &[u8]) -> Response<Body> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let target = match (parts.as_slice(), Kind::object_path(path)) {
        (["apis", "networking.k8s.io", "v1", "namespaces", ns, "ingresses", name, "status"], _) => {
            (Kind::Ingress, ns.to_string(), name.to_string())
        }
        (_, Some((kind, ns, name, tail)))
            if kind.is_gateway_api() && tail == "status" && st.gateway_crds =>
        {
            (kind, ns, name)
        }
        _ => {
            return full(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(
                    405,
                    "MethodNotAllowed",
                    "the fake only patches Ingress and Gateway API status",
                ),
            )
        }
    };
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return full(
                StatusCode::BAD_REQUEST,
                &status(400, "BadRequest", &e.to_string()),
            )
        }
    };
    st.status_patches.push((path.to_string(), patch.clone()));
    let Some(old) = st.objects.get(&target).cloned() else {
        return full(StatusCode::NOT_FOUND, &status(404, "NotFound", path));
    };
    st.rv += 1;
    let rv = st.rv;
    let mut object = old.clone();
    object["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.objects.insert(target.clone(), object.clone());
    st.record(Change {
        rv,
        kind: target.0,
        old: Some(old),
        new: Some(object.clone()),
    });
    full(StatusCode::OK, &object)
}

fn handle(state: &Mutex<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = query(&req);
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    if st.down {
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            &status(503, "ServiceUnavailable", "the fake apiserver is down"),
        );
    }
    let logged = Logged {
        path: path.clone(),
        query: query.clone(),
    };
    let watching = logged.is_watch();
    st.log.push(logged);
    if req.method() != hyper::Method::GET {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(
                405,
                "MethodNotAllowed",
                "the fake apiserver only serves GET",
            ),
        );
    }
    if let Some((kind, ns, name, _)) = Kind::object_path(&path) {
        if kind.is_gateway_api() && !st.gateway_crds {
            return full(
                StatusCode::NOT_FOUND,
                &status(
                    404,
                    "NotFound",
                    &format!("the server could not find {path}"),
                ),
            );
        }
        return match st.objects.get(&(kind, ns, name)) {
            Some(o) => full(StatusCode::OK, o),
            None => full(StatusCode::NOT_FOUND, &status(404, "NotFound", &path)),
        };
    }
    let kind = Kind::from_path(&path).filter(|k| !k.is_gateway_api() || st.gateway_crds);
    if kind.is_some_and(|k| st.forbidden.contains(&k)) {
        return full(
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", &format!("{path} is forbidden")),
        );
    }
    let Some(kind) = kind else {
        return full(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                &format!("the server could not find {path}"),
            ),
        );
    };
    let selector = match Selector::parse(
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
    ) {
        Ok(s) => s,
        Err(e) => return full(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &e)),
    };
    if watching {
        watch_response(&mut st, kind, selector, &query)
    } else {
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && selector.matches(o))
            .map(|(_, o)| o)
            .collect();
        full(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", kind.name()),
                "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        )
    }
}

fn watch_response(
    st: &mut State,
    kind: Kind,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => st.rv,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => v,
            Err(_) => {
                return full(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", &format!("invalid resourceVersion {v:?}")),
                )
            }
        },
    };
    let expired = if st.expire_next > 0 {
        st.expire_next -= 1;
        st.expire_mode
    } else if from < st.compacted {
        Some(Gone::Event)
    } else {
        None
    };
    let gone = status(
        410,
        "Expired",
        &format!(
            "too old resource version: {from} ({})",
            st.compacted.max(from + 1)
        ),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    match expired {
        Some(Gone::Http) => return full(StatusCode::GONE, &gone),
        Some(Gone::Event) => {
            let _ = tx.send(Line::Data(event_line("ERROR", &gone)));
            // The apiserver ends such a watch after the error event.
            drop(tx);
        }
        None => {
            for change in st.history.iter().filter(|c| c.kind == kind && c.rv > from) {
                if let Some(line) = event_for(change, &selector) {
                    let _ = tx.send(Line::Data(line));
                }
            }
            st.watchers.push(Watcher {
                kind,
                selector,
                bookmarks: matches!(
                    query.get("allowWatchBookmarks").map(String::as_str),
                    Some("true" | "1")
                ),
                tx,
            });
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await? {
            Line::Data(bytes) => Some((Ok(Frame::data(bytes)), rx)),
            Line::Abort => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "watch dropped by the test",
                )),
                rx,
            )),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}
