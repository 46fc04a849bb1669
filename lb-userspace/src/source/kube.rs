//! The Kubernetes source: kube-rs watchers feeding reflector stores for
//! Services, EndpointSlices and this node's Node, and one publisher that turns
//! the stores into complete `ClusterState` snapshots.
//!
//! - **Which objects.** Services and EndpointSlices are watched with the label
//!   selector `!service.kubernetes.io/headless`. kube-proxy also excludes
//!   every `service.kubernetes.io/service-proxy-name`, but Weir serves the
//!   value `weir`, and "absent or = weir" is not one label selector (it would
//!   take two watches per kind). So one watch per kind carries the services
//!   of other proxies too and `translate::handles` drops them, as it does for
//!   the directory source. The Node is watched with the field selector
//!   `metadata.name=<node>`.
//! - **Ingress.** With the L7 proxy on (`watch_ingress`), Ingresses and
//!   IngressClasses are watched too, and Secrets with the field selector
//!   `type=kubernetes.io/tls` (no other Secret is ever read).
//! - **Complete snapshots only.** Nothing is published before every watcher
//!   finished its first list. A relist (after 410 Gone, a compacted history or
//!   a restart of the watcher) fills a side buffer that replaces the store only
//!   when the list is complete (kube-runtime's `Writer` semantics), so a
//!   snapshot never holds half a list, and never an empty state in between.
//!   Kinds are listed independently (as kube-proxy's informers are): after an
//!   outage, a fresh Service list may meet the previous EndpointSlice list for
//!   one snapshot, a skew the cluster itself shows while controllers catch up.
//! - **Rate.** Changes are coalesced like kube-proxy's BoundedFrequencyRunner:
//!   a change publishes at once if the last publish is at least
//!   `min_sync_period` old, otherwise at that point; a burst of changes becomes
//!   one snapshot. Every `config_sync_period` (0: never) the current snapshot
//!   is published again even when unchanged, which makes the agent re-sync the
//!   maps.
//! - **Failures.** Watch errors, dropped streams, 410 Gone and an unreachable
//!   apiserver are retried with exponential backoff; the last published state
//!   stays in force meanwhile. kube-runtime's watcher relists after a 410
//!   delivered as a watch event, but retries an HTTP 410 on the watch request
//!   forever with the same expired resourceVersion; this module restarts the
//!   watcher (a fresh list) in that case.
//! - **Bad objects.** An object that does not convert is logged once per
//!   resourceVersion, with kind, namespace/name and the field error, and left
//!   out; the others are published.
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    pin::pin,
    sync::{Arc, Once},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node as K8sNode, Secret as K8sSecret, Service as K8sService},
    discovery::v1::EndpointSlice as K8sSlice,
    networking::v1::{Ingress as K8sIngress, IngressClass as K8sIngressClass},
};
use kube::{
    api::Api,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{store::Writer, Store},
        watcher::{self, watcher},
    },
    Client, Config, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{sleep, sleep_until, Instant},
};
use tracing::{debug, info, warn};

use super::{
    convert::{self, FieldError},
    convert_ingress::{self, TLS_SECRET_TYPE},
    duration::GoDuration,
    status::StatusHandle,
    StateRx,
};
use crate::{
    model::{ClusterState, ObjectRef},
    translate::HEADLESS_LABEL,
};

/// How the agent reaches the apiserver and how often it publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// A kubeconfig file; without it: in-cluster config, then $KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// The apiserver URL; overrides the kubeconfig's server (kube-proxy's --master).
    pub master: Option<String>,
    pub min_sync_period: Duration,
    /// 0 disables the periodic re-publish.
    pub config_sync_period: Duration,
    /// Also watch Ingresses, IngressClasses and kubernetes.io/tls Secrets (the L7 proxy is on).
    pub watch_ingress: bool,
}

pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
pub const DEFAULT_CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(15 * 60);

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            master: None,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            config_sync_period: DEFAULT_CONFIG_SYNC_PERIOD,
            watch_ingress: false,
        }
    }
}

/// The agent's flags for the Kubernetes source (kube-proxy's names).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeFlags {
    /// Kubeconfig file for --source kube (default: in-cluster config, then $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The apiserver's URL; overrides the kubeconfig's server.
    #[arg(long)]
    pub master: Option<String>,
    /// Least time between two syncs (Go duration, default 1s); changes in between are coalesced.
    #[arg(long)]
    pub min_sync_period: Option<GoDuration>,
    /// How often the full state is re-synced even without changes (Go duration, default 15m0s; 0 disables).
    #[arg(long)]
    pub config_sync_period: Option<GoDuration>,
}

impl KubeFlags {
    /// Overrides `options` with the flags that were given.
    pub fn apply(&self, options: &mut KubeOptions) {
        if let Some(path) = &self.kubeconfig {
            options.kubeconfig = Some(path.clone());
        }
        if let Some(url) = &self.master {
            options.master = Some(url.clone());
        }
        if let Some(d) = self.min_sync_period {
            options.min_sync_period = d.0;
        }
        if let Some(d) = self.config_sync_period {
            options.config_sync_period = d.0;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes client configuration (no --kubeconfig, --master, in-cluster config or kubeconfig file): {0}")]
    Infer(kube::config::InferConfigError),
    #[error("--master: invalid URL {url:?}: {reason}")]
    Master { url: String, reason: String },
    #[error("building the Kubernetes client: {0}")]
    Client(kube::Error),
}

/// What the watchers and the publisher need to know.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// This node's name: the Node watched.
    pub node_name: String,
    pub min_sync_period: Duration,
    /// 0 disables the periodic re-publish.
    pub config_sync_period: Duration,
    /// Retry delays after watch errors: from `backoff_min`, doubling up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Also watch Ingresses, IngressClasses and kubernetes.io/tls Secrets.
    pub watch_ingress: bool,
    /// Where the source reports its health (for `weir status`).
    pub status: StatusHandle,
}

impl KubeSourceConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            config_sync_period: DEFAULT_CONFIG_SYNC_PERIOD,
            // kube-runtime's default backoff: 800 ms doubling to 30 s.
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            watch_ingress: false,
            status: StatusHandle::default(),
        }
    }
}

/// Installs rustls' ring provider as the process default, once. kube is built
/// with ring only; installing it explicitly keeps TLS working (instead of a
/// panic at the first handshake) should another crate ever compile a second
/// provider in.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a default is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds the client like kube-proxy does: `kubeconfig` if given, otherwise
/// in-cluster config, $KUBECONFIG or ~/.kube/config; `master` overrides the
/// server (and alone is enough: no credentials then).
pub async fn client(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<Client, KubeError> {
    install_crypto_provider();
    let master_url = match master {
        Some(url) => Some(
            url.parse::<http::Uri>()
                .map_err(|e| KubeError::Master {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
                .and_then(|uri| {
                    if uri.scheme().is_some() && uri.host().is_some() {
                        Ok(uri)
                    } else {
                        Err(KubeError::Master {
                            url: url.to_string(),
                            reason: "expected http(s)://HOST[:PORT]".into(),
                        })
                    }
                })?,
        ),
        None => None,
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => match Config::infer().await {
            Ok(config) => config,
            Err(e) => match &master_url {
                Some(url) => {
                    debug!("no kubeconfig ({e}); using --master alone");
                    Config::new(url.clone())
                }
                None => return Err(KubeError::Infer(e)),
            },
        },
    };
    if let Some(url) = master_url {
        config.cluster_url = url;
    }
    Client::try_from(config).map_err(KubeError::Client)
}

/// Connects with `options` and spawns the source for node `node_name`,
/// reporting its health to `status`.
pub async fn start(
    options: &KubeOptions,
    node_name: &str,
    status: StatusHandle,
) -> Result<StateRx, KubeError> {
    let client = client(options.kubeconfig.as_deref(), options.master.as_deref()).await?;
    let mut cfg = KubeSourceConfig::new(node_name);
    cfg.status = status;
    cfg.min_sync_period = options.min_sync_period;
    cfg.config_sync_period = options.config_sync_period;
    cfg.watch_ingress = options.watch_ingress;
    info!(
        node = node_name,
        min_sync_period = %GoDuration(cfg.min_sync_period),
        config_sync_period = %GoDuration(cfg.config_sync_period),
        "watching the Kubernetes API"
    );
    Ok(spawn(client, cfg))
}

/// Spawns the source on the current runtime; it stops when every receiver is gone.
pub fn spawn(client: Client, cfg: KubeSourceConfig) -> StateRx {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(run(client, cfg, move |state| tx.send(Some(state)).is_ok()));
    rx
}

/// Runs the watchers and calls `publish` with every new snapshot until
/// `publish` returns false. Never returns otherwise.
pub async fn run(
    client: Client,
    cfg: KubeSourceConfig,
    mut publish: impl FnMut(Arc<ClusterState>) -> bool,
) {
    let (notices, mut rx) = mpsc::unbounded_channel();
    let mut watchers = JoinSet::new();
    let selector = format!("!{HEADLESS_LABEL}");
    let services = start_watch(
        &mut watchers,
        Kind::Service,
        Api::<K8sService>::all(client.clone()),
        watcher::Config::default().labels(&selector),
        &cfg,
        notices.clone(),
    );
    let slices = start_watch(
        &mut watchers,
        Kind::EndpointSlice,
        Api::<K8sSlice>::all(client.clone()),
        watcher::Config::default().labels(&selector),
        &cfg,
        notices.clone(),
    );
    let nodes = start_watch(
        &mut watchers,
        Kind::Node,
        Api::<K8sNode>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", cfg.node_name)),
        &cfg,
        notices.clone(),
    );
    let gateway = cfg.watch_ingress.then(|| {
        super::kube_gateway::GatewayStores::start(
            &mut watchers,
            client.clone(),
            &cfg,
            notices.clone(),
        )
    });
    let ingress = cfg
        .watch_ingress
        .then(|| IngressStores::start(&mut watchers, client, &cfg, notices));
    let mut builder = Builder {
        services,
        slices,
        nodes,
        service_cache: Cache::default(),
        slice_cache: Cache::default(),
        node_cache: Cache::default(),
        ingress,
        gateway,
    };

    // Kinds not watched count as listed.
    let mut listed = [false; KINDS];
    for kind in PROXY_KINDS {
        listed[kind as usize] = !cfg.watch_ingress;
    }
    let mut dirty = false;
    let mut last: Option<(Instant, Arc<ClusterState>)> = None;
    let mut resync = (!cfg.config_sync_period.is_zero()).then(|| {
        let mut i = tokio::time::interval_at(
            Instant::now() + cfg.config_sync_period,
            cfg.config_sync_period,
        );
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        let ready = listed.iter().all(|l| *l);
        let due = match (&last, dirty && ready) {
            (_, false) => None,
            (None, true) => Some(Instant::now()),
            (Some((at, _)), true) => Some(*at + cfg.min_sync_period),
        };
        let force = tokio::select! {
            notice = rx.recv() => {
                let Some(notice) = notice else { return };
                match notice {
                    Notice::Listed(kind) => {
                        if !listed[kind as usize] {
                            debug!(kind = %kind, "initial list complete");
                        }
                        listed[kind as usize] = true;
                    }
                    Notice::Changed(kind) => debug!(kind = %kind, "changed"),
                }
                dirty = true;
                continue;
            }
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => false,
            _ = tick(&mut resync), if ready && last.is_some() => true,
        };
        dirty = false;
        let state = builder.build();
        if !force {
            if let Some((_, previous)) = &last {
                if **previous == state {
                    continue;
                }
            }
        }
        let state = Arc::new(state);
        info!(
            services = state.services.len(),
            slices = state.slices.len(),
            nodes = state.nodes.len(),
            skipped_objects = builder.skipped(),
            periodic = force,
            "publishing the cluster state"
        );
        cfg.status.published(builder.skipped());
        if !publish(state.clone()) {
            return;
        }
        last = Some((Instant::now(), state));
    }
}

/// Waits for the next tick of `interval`; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Service = 0,
    EndpointSlice = 1,
    Node = 2,
    Ingress = 3,
    IngressClass = 4,
    Secret = 5,
    GatewayClass = 6,
    Gateway = 7,
    HttpRoute = 8,
    ReferenceGrant = 9,
    Namespace = 10,
    TcpRoute = 11,
    TlsRoute = 12,
    GrpcRoute = 13,
}

const KINDS: usize = 14;

/// The kinds the L7 proxy adds.
const PROXY_KINDS: [Kind; 11] = [
    Kind::GrpcRoute,
    Kind::TcpRoute,
    Kind::TlsRoute,
    Kind::Ingress,
    Kind::IngressClass,
    Kind::Secret,
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::ReferenceGrant,
    Kind::Namespace,
];

impl Kind {
    /// Kinds whose API may not be installed (CRDs) or not granted (the
    /// Gateway API's own RBAC): without it they are not served, and the
    /// snapshot does not wait for them.
    fn optional(self) -> bool {
        matches!(
            self,
            Kind::Namespace
                | Kind::GatewayClass
                | Kind::Gateway
                | Kind::HttpRoute
                | Kind::ReferenceGrant
                | Kind::TcpRoute
                | Kind::TlsRoute
                | Kind::GrpcRoute
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
            Kind::TcpRoute => "TCPRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::GrpcRoute => "GRPCRoute",
        })
    }
}

pub(super) enum Notice {
    /// A (re)list completed: the store holds a complete list.
    Listed(Kind),
    /// An object was added, changed or deleted.
    Changed(Kind),
}

fn start_watch<K>(
    set: &mut JoinSet<()>,
    kind: Kind,
    api: Api<K>,
    wc: watcher::Config,
    cfg: &KubeSourceConfig,
    notices: mpsc::UnboundedSender<Notice>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    start_watch_with(set, kind, api, wc, Writer::<K>::default(), cfg, notices)
}

/// `start_watch` for kinds without a static type (DynamicObject: the writer carries its ApiResource).
pub(super) fn start_watch_with<K>(
    set: &mut JoinSet<()>,
    kind: Kind,
    api: Api<K>,
    wc: watcher::Config,
    writer: Writer<K>,
    cfg: &KubeSourceConfig,
    notices: mpsc::UnboundedSender<Notice>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = writer.as_reader();
    let backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    set.spawn(watch(
        kind,
        api,
        wc,
        writer,
        backoff,
        notices,
        cfg.status.clone(),
    ));
    store
}

/// Drives one watcher into `writer`, forever. Errors are logged and retried
/// after a backoff; the store keeps its content meanwhile.
async fn watch<K>(
    kind: Kind,
    api: Api<K>,
    wc: watcher::Config,
    mut writer: Writer<K>,
    mut backoff: Backoff,
    notices: mpsc::UnboundedSender<Notice>,
    status: StatusHandle,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let part = format!("{kind} watch");
    let mut absent = false;
    // A watch that starts again after an error emits nothing until something
    // changes; a one-item list with the watch's selectors tells that the kind
    // is reachable again (for `weir status`).
    let probe = kube::api::ListParams {
        label_selector: wc.label_selector.clone(),
        field_selector: wc.field_selector.clone(),
        limit: Some(1),
        ..Default::default()
    };
    loop {
        let mut events = pin!(watcher(api.clone(), wc.clone()));
        while let Some(item) = events.next().await {
            let notice = match item {
                Ok(event) => {
                    status.recovered(&part);
                    writer.apply_watcher_event(&event);
                    match event {
                        watcher::Event::Init => {
                            debug!(kind = %kind, "listing");
                            continue;
                        }
                        watcher::Event::InitApply(_) => continue,
                        watcher::Event::InitDone => Notice::Listed(kind),
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                            Notice::Changed(kind)
                        }
                    }
                }
                Err(e) if kind.optional() && unavailable(&e).is_some() => {
                    // The API is not installed, or the agent may not read it:
                    // not served; looked for again with the watch backoff (the
                    // CRDs or the RBAC may come later). The snapshot does not wait.
                    if !absent {
                        absent = true;
                        let why = match unavailable(&e) {
                            Some(403) => "the agent may not list them (apply manifests/gateway/rbac.yaml)",
                            _ => "the API is not installed on the apiserver (install the Gateway API CRDs)",
                        };
                        warn!(
                            kind = %kind,
                            "{kind} objects are not served: {why}; looking again from time to time"
                        );
                        if notices.send(Notice::Listed(kind)).is_err() {
                            return;
                        }
                    }
                    sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(e) => {
                    status.failed(&part, &e.to_string());
                    let delay = backoff.next_delay();
                    warn!(
                        kind = %kind,
                        retry_in = ?delay,
                        "watch failed: {e}; keeping the last state"
                    );
                    let gone = http_gone(&e);
                    sleep(delay).await;
                    if api.list(&probe).await.is_ok() {
                        status.recovered(&part);
                    }
                    if gone {
                        info!(kind = %kind, "resourceVersion expired (410 Gone); relisting");
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            if notices.send(notice).is_err() {
                return;
            }
        }
    }
}

/// A 404 (the resource's API is not installed) or 403 (not permitted) for
/// the list or watch: the code.
fn unavailable(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            if matches!(status.code, 403 | 404) =>
        {
            Some(status.code)
        }
        _ => None,
    }
}

/// An HTTP 410 answer to a watch request: kube-runtime would retry it with the
/// same expired resourceVersion forever, so the watcher is restarted instead.
fn http_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410)
}

/// Exponential backoff without jitter: there are three watchers, not thousands.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Converted objects by namespace/name, with the resourceVersion they were
/// converted at: unchanged objects are not converted (nor warned about) again.
pub(super) struct Cache<T> {
    /// resourceVersion, the converted object, and whether conversion failed.
    entries: HashMap<ObjectRef, (String, Option<T>, bool)>,
    /// Objects of the last refresh that failed to convert.
    pub(super) failed: usize,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            failed: 0,
        }
    }
}

impl<T: Clone> Cache<T> {
    pub(super) fn refresh<K: Resource>(
        &mut self,
        kind: Kind,
        objects: &[Arc<K>],
        convert: impl Fn(&K) -> Result<Option<T>, FieldError>,
    ) -> Vec<T> {
        let mut fresh = HashMap::with_capacity(objects.len());
        let mut out = Vec::with_capacity(objects.len());
        for obj in objects {
            let key = ObjectRef::new(obj.namespace().unwrap_or_default(), obj.name_any());
            let version = obj.resource_version().unwrap_or_default();
            let (converted, bad) = match self.entries.remove(&key) {
                Some((v, converted, bad)) if v == version && !version.is_empty() => {
                    (converted, bad)
                }
                _ => match convert(obj) {
                    Ok(converted) => (converted, false),
                    Err(e) => {
                        warn!(
                            kind = %kind,
                            object = %display_ref(kind, &key),
                            "skipping {kind} {}: {e}",
                            display_ref(kind, &key)
                        );
                        (None, true)
                    }
                },
            };
            if let Some(c) = &converted {
                out.push(c.clone());
            }
            fresh.insert(key, (version, converted, bad));
        }
        self.failed = fresh.values().filter(|(_, _, bad)| *bad).count();
        self.entries = fresh;
        out
    }
}

fn display_ref(kind: Kind, key: &ObjectRef) -> String {
    match kind {
        Kind::Node | Kind::IngressClass | Kind::GatewayClass | Kind::Namespace => {
            key.name.to_string()
        }
        _ => key.to_string(),
    }
}

struct Builder {
    services: Store<K8sService>,
    slices: Store<K8sSlice>,
    nodes: Store<K8sNode>,
    service_cache: Cache<Arc<crate::model::Service>>,
    slice_cache: Cache<Arc<crate::model::EndpointSlice>>,
    node_cache: Cache<crate::model::Node>,
    ingress: Option<IngressStores>,
    gateway: Option<super::kube_gateway::GatewayStores>,
}

/// The watches of the L7 proxy's objects: Ingresses, IngressClasses, and
/// Secrets of type kubernetes.io/tls (field selector), nothing else.
struct IngressStores {
    ingresses: Store<K8sIngress>,
    classes: Store<K8sIngressClass>,
    secrets: Store<K8sSecret>,
    ingress_cache: Cache<crate::model::Ingress>,
    class_cache: Cache<crate::model::IngressClass>,
    secret_cache: Cache<crate::model::TlsSecret>,
}

impl IngressStores {
    fn start(
        watchers: &mut JoinSet<()>,
        client: Client,
        cfg: &KubeSourceConfig,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Self {
        Self {
            ingresses: start_watch(
                watchers,
                Kind::Ingress,
                Api::<K8sIngress>::all(client.clone()),
                watcher::Config::default(),
                cfg,
                notices.clone(),
            ),
            classes: start_watch(
                watchers,
                Kind::IngressClass,
                Api::<K8sIngressClass>::all(client.clone()),
                watcher::Config::default(),
                cfg,
                notices.clone(),
            ),
            secrets: start_watch(
                watchers,
                Kind::Secret,
                Api::<K8sSecret>::all(client),
                watcher::Config::default().fields(&format!("type={TLS_SECRET_TYPE}")),
                cfg,
                notices,
            ),
            ingress_cache: Cache::default(),
            class_cache: Cache::default(),
            secret_cache: Cache::default(),
        }
    }

    fn build(&mut self, state: &mut ClusterState) {
        for ing in self
            .ingress_cache
            .refresh(Kind::Ingress, &self.ingresses.state(), |i| {
                convert_ingress::ingress(i).map(Some)
            })
        {
            state.ingress.ingresses.insert(ing.id.clone(), ing);
        }
        for class in self
            .class_cache
            .refresh(Kind::IngressClass, &self.classes.state(), |c| {
                convert_ingress::ingress_class(c).map(Some)
            })
        {
            state.ingress.classes.insert(class.name.clone(), class);
        }
        for secret in self.secret_cache.refresh(
            Kind::Secret,
            &self.secrets.state(),
            convert_ingress::tls_secret,
        ) {
            state.ingress.tls_secrets.insert(secret.id.clone(), secret);
        }
    }
}

impl Builder {
    fn build(&mut self) -> ClusterState {
        let mut state = ClusterState::default();
        for svc in self
            .service_cache
            .refresh(Kind::Service, &self.services.state(), |s| {
                convert::service(s).map(|s| Some(Arc::new(s)))
            })
        {
            state.services.insert(svc.id.clone(), svc);
        }
        let slices = self.slices.state();
        for slice in self.slice_cache.refresh(Kind::EndpointSlice, &slices, |s| {
            convert::endpoint_slice(s).map(|s| s.map(Arc::new))
        }) {
            state.slices.insert(slice.id.clone(), slice);
        }
        for obj in &slices {
            let key = ObjectRef::new(obj.namespace().unwrap_or_default(), obj.name_any());
            if let Some(t) = convert::trigger_time(&obj.metadata) {
                if state.slices.contains_key(&key) {
                    state.slice_change_times.insert(key, t);
                }
            }
        }
        for node in self
            .node_cache
            .refresh(Kind::Node, &self.nodes.state(), |n| {
                convert::node(n).map(Some)
            })
        {
            state.nodes.insert(node.name.clone(), node);
        }
        if let Some(ingress) = &mut self.ingress {
            ingress.build(&mut state);
        }
        if let Some(gateway) = &mut self.gateway {
            gateway.build(&mut state);
        }
        state
    }

    /// Objects left out of the last state because they failed to convert.
    fn skipped(&self) -> usize {
        let ingress = self.ingress.as_ref().map_or(0, |i| {
            i.ingress_cache.failed + i.class_cache.failed + i.secret_cache.failed
        });
        let gateway = self.gateway.as_ref().map_or(0, |g| g.failed());
        self.service_cache.failed
            + self.slice_cache.failed
            + self.node_cache.failed
            + ingress
            + gateway
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn flags_override_only_what_is_given() {
        let mut options = KubeOptions::default();
        let flags = KubeFlags {
            master: Some("http://127.0.0.1:1".into()),
            min_sync_period: Some("250ms".parse().unwrap()),
            ..Default::default()
        };
        flags.apply(&mut options);
        assert_eq!(options.master.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(options.min_sync_period, Duration::from_millis(250));
        assert_eq!(options.config_sync_period, DEFAULT_CONFIG_SYNC_PERIOD);
        assert_eq!(options.kubeconfig, None);
    }
}
