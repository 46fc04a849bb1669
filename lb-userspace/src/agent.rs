//! The agent's main loop: on every tick, reconcile attached devices and, when
//! the source changed, translate and sync the maps. The last good state is
//! kept when the source cannot be read: a broken source never flushes the
//! datapath.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::{
    control::{ControlSocket, ControlState, SyncReport},
    dataplane::{
        attach::{list_links, DeviceSelector},
        ct_gc::CtTimeouts,
        sync::PlanConfig,
        Dataplane,
    },
    health::{self, HealthState, ServiceHealthServers},
    metrics::{Metrics, ResultLabel},
    model::{ClusterState, ObjectRef},
    source::{
        dir::{self, DirSource},
        kube::{self as kube_source, KubeOptions},
        status::{rfc3339, StatusHandle},
    },
    translate::{Desired, NodeFacts},
};

/// Where desired state comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Dir(PathBuf),
    /// The Kubernetes API (`kube`); main.rs fills in the options from flags and --config.
    Kube(KubeOptions),
}

impl std::str::FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => Ok(SourceSpec::Dir(path.into())),
            None if s == "kube" => Ok(SourceSpec::Kube(KubeOptions::default())),
            _ => Err(format!("unknown source {s:?}: expected dir:PATH or kube")),
        }
    }
}

pub struct AgentConfig {
    pub source: SourceSpec,
    pub devices: Vec<String>,
    pub pod_devices: Vec<String>,
    pub node: NodeFacts,
    pub bpffs: PathBuf,
    pub poll_interval: Duration,
    pub plan: PlanConfig,
    /// Where /healthz and /livez listen; None turns them off.
    pub healthz_bind: Option<std::net::SocketAddr>,
    /// Where /metrics listens; None turns it off.
    pub metrics_bind: Option<std::net::SocketAddr>,
    pub ct_timeouts: CtTimeouts,
    /// How often expired conntrack entries are removed.
    pub ct_gc_interval: Duration,
    /// Which XDP modes the uplinks may use.
    pub xdp_mode: crate::dataplane::xdp::XdpPolicy,
    /// The embedded L7 ingress proxy; None turns it off.
    pub ingress: Option<crate::ingress::IngressConfig>,
    /// The control socket for `weir status` and `weir ingress routes`; None turns it off.
    pub control_socket: Option<PathBuf>,
    /// Load the kernel programs with their aya-log messages on, and print them.
    pub bpf_log: bool,
    /// Socket-level load balancing (`--socket-lb`).
    pub socket_lb: crate::dataplane::socket_lb::SocketLbMode,
    /// Where the socket programs attach (`--cgroup-root`); None: the host's cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
}

/// The source's kind and where it reads, for `weir status`.
fn source_status(source: &SourceSpec) -> StatusHandle {
    match source {
        SourceSpec::Dir(dir) => StatusHandle::new("dir", &dir.display().to_string()),
        SourceSpec::Kube(o) => {
            let location = match (&o.master, &o.kubeconfig) {
                (Some(master), _) => master.clone(),
                (None, Some(kc)) => format!("kubeconfig {}", kc.display()),
                (None, None) => "in-cluster or default kubeconfig".into(),
            };
            StatusHandle::new("kube", &location)
        }
    }
}

/// EndpointSlice changes whose trigger time is known and whose maps are not
/// written yet: the start of network programming latency. As kube-proxy
/// does, only changes triggered after the agent started count.
#[derive(Default)]
struct PendingTriggers {
    since: BTreeMap<ObjectRef, SystemTime>,
}

impl PendingTriggers {
    fn add(&mut self, state: &ClusterState, changed: &[ObjectRef], started: SystemTime) {
        for id in changed {
            if let Some(t) = state.slice_change_times.get(id).filter(|t| **t >= started) {
                let earliest = self.since.entry(id.clone()).or_insert(*t);
                *earliest = (*earliest).min(*t);
            }
        }
    }

    /// The maps are written: observe each pending change.
    fn programmed(&mut self, metrics: &Metrics) {
        let now = SystemTime::now();
        for t in std::mem::take(&mut self.since).into_values() {
            let latency = now.duration_since(t).unwrap_or_default();
            metrics.network_programming.observe(latency.as_secs_f64());
        }
    }
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let started_at = SystemTime::now();
    use crate::dataplane::socket_lb::{self, SocketLbMode};
    // A --cgroup-root given but unusable stops the agent; no cgroup2 mount
    // to default to, or no netns cookie for host-only, falls back to the
    // packet path with a warning.
    let mut socket_lb_mode = cfg.socket_lb;
    let cgroup_root = match (socket_lb_mode, &cfg.cgroup_root) {
        (SocketLbMode::Off, _) => None,
        (_, Some(path)) => {
            socket_lb::check_cgroup_root(path)?;
            Some(path.clone())
        }
        (_, None) => match socket_lb::default_cgroup_root() {
            Ok(root) => Some(root),
            Err(e) => {
                warn!("socket LB is off: {e}; processes of this network namespace do not reach services");
                None
            }
        },
    };
    let host_netns_cookie = match (&cgroup_root, socket_lb::netns_cookie()) {
        (None, _) => 0,
        (Some(_), Ok(cookie)) => cookie,
        (Some(_), Err(e)) if socket_lb_mode == SocketLbMode::HostOnly => {
            warn!("--socket-lb=host-only needs the host's netns cookie: {e}; socket LB translates every socket");
            socket_lb_mode = SocketLbMode::All;
            0
        }
        (Some(_), Err(e)) => {
            warn!("{e}: pods' sockets to services with ClientIP affinity are left to tc, and so are the host's");
            0
        }
    };
    let options = crate::dataplane::loader::LoadOptions {
        bpf_log: cfg.bpf_log,
        socket_lb: socket_lb_mode,
        host_netns_cookie,
        ct_refresh_ns: cfg.ct_timeouts.refresh().as_nanos() as u64,
        ..Default::default()
    };
    let (mut dataplane, pin_actions) =
        Dataplane::load_with(&cfg.bpffs, cfg.plan, &options).context("loading the datapath")?;
    for action in &pin_actions {
        warn!(bpffs = %cfg.bpffs.display(), "{action}");
    }
    dataplane.xdp.policy = cfg.xdp_mode;
    if cfg.bpf_log {
        match crate::dataplane::bpf_log::start(&mut dataplane.ebpf) {
            Ok(()) => info!("printing the kernel programs' aya-log messages (--bpf-log)"),
            Err(e) => warn!("--bpf-log: {e}; kernel log messages are not printed"),
        }
    }
    let source_status = source_status(&cfg.source);
    let control = Arc::new(ControlState::new(&cfg.bpffs, source_status.clone()));
    // Removed again when this function returns (a clean exit).
    let _control_socket = match &cfg.control_socket {
        Some(path) => match ControlSocket::start(path, control.clone()) {
            Ok(socket) => {
                info!(path = %path.display(), "control socket (weir status, weir ingress routes)");
                Some(socket)
            }
            Err(e) => {
                warn!("--agent-socket: {e}; weir status and weir ingress routes cannot reach this agent");
                None
            }
        },
        None => None,
    };
    info!(
        bpffs = %cfg.bpffs.display(),
        restored = dataplane.programmed().services.len(),
        "datapath loaded"
    );
    let socket_lb = start_socket_lb(
        &mut dataplane,
        socket_lb_mode,
        cgroup_root.as_deref(),
        &control,
    );
    let selector = DeviceSelector::new(&cfg.devices, &cfg.pod_devices).context("--pod-devices")?;
    let health = Arc::new(HealthState::default());
    health.update_proxy(|h| {
        h.source = format!(
            "{:?}: waiting for the first state; serving {} frontends restored from pins",
            cfg.source,
            dataplane.programmed().services.len()
        )
    });
    if let Some(addr) = cfg.healthz_bind {
        match health::serve_proxy(addr, health.clone()).await {
            Ok(_) => info!(%addr, "serving /healthz and /livez"),
            Err(e) => warn!("--healthz-bind-address {addr}: {e}; health endpoints are off"),
        }
    }
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = cfg.metrics_bind {
        match crate::metrics::serve(addr, metrics.clone(), cfg.bpffs.clone()) {
            Ok(_) => info!(%addr, "serving /metrics"),
            Err(e) => warn!("--metrics-bind-address {addr}: {e}; metrics are off"),
        }
    }
    let mut ingress = match cfg.ingress.clone() {
        Some(ic) => Some(
            crate::ingress::Ingress::start(ic, &mut dataplane, metrics.proxy.clone())
                .context("starting the ingress proxy")?,
        ),
        None => None,
    };
    if let Some(ingress) = &ingress {
        control.set_routes(ingress.table());
    }
    let mut health_servers = ServiceHealthServers::default();
    let mut states = match &cfg.source {
        SourceSpec::Dir(dir) => dir::spawn(DirSource::new(dir), cfg.poll_interval, source_status),
        SourceSpec::Kube(options) => {
            let options = KubeOptions {
                watch_ingress: cfg.ingress.is_some(),
                ..options.clone()
            };
            kube_source::start(&options, &cfg.node.node_name, source_status).await?
        }
    };
    let mut previous = Arc::new(ClusterState::default());
    let mut translation = crate::translation::Translation::default();
    let mut pending = PendingTriggers::default();
    let status_writer = ingress_status_writer(&cfg).await;
    let mut tick = tokio::time::interval(cfg.poll_interval);
    let mut ct_gc = tokio::time::interval(cfg.ct_gc_interval);
    // Conntrack is collected on a thread of its own (ct_gc_worker.rs).
    let mut gc_worker = dataplane
        .ct_gc_worker(cfg.ct_timeouts)
        .context("starting conntrack GC")?;
    let mut gc_in_flight = false;
    let mut ct_full = false;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // This node's own addresses (NodePorts and ingress without a Node object), refreshed each tick.
    let mut node = cfg.node.clone();
    node.local = crate::dataplane::xdp::local_addresses(&cfg.devices);
    let mut current: Option<Arc<ClusterState>> = None;
    let mut missing = std::collections::BTreeSet::new();
    let mut node_ports_on: Option<crate::node_addrs::Chosen> = None;
    // Whether the metrics' frontend names follow every sync so far.
    let mut names_complete = true;
    loop {
        let mut apply: Option<Arc<ClusterState>> = None;
        tokio::select! {
            _ = tick.tick() => {
                reconcile_devices(&mut dataplane, &selector, &mut missing, &control);
                let local = crate::dataplane::xdp::local_addresses(&cfg.devices);
                if local != node.local {
                    info!(uplinks = ?local.uplinks, all = ?local.all, "node addresses changed");
                    node.local = local;
                    apply = current.clone();
                }
            }
            // One collection at a time, pruned before the next is asked for.
            _ = ct_gc.tick(), if !gc_in_flight => {
                gc_in_flight = gc_worker.request();
            }
            Some(collected) = gc_worker.results.recv() => {
                gc_in_flight = false;
                let gc = collected.gc;
                dataplane.prune_filter(collected.reply_bits);
                if gc.removed > 0 {
                    tracing::debug!(removed = gc.removed, "expired conntrack entries removed");
                }
                if gc.is_full() != ct_full {
                    ct_full = gc.is_full();
                    report_conntrack_fill(&gc);
                }
            }
            changed = states.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the source stopped");
                }
                apply = states.borrow_and_update().clone();
                if apply.is_some() {
                    current = apply.clone();
                }
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let Some(state) = apply else { continue };
        let changes = state.changes_since(&previous);
        metrics
            .service_changes
            .inc_by(changes.services.len() as u64);
        metrics.endpoint_changes.inc_by(changes.slices.len() as u64);
        pending.add(&state, &changes.slices, started_at);
        if let Some(ingress) = ingress.as_mut() {
            let problems = ingress.apply(&state, &node);
            if let Some(writer) = &status_writer {
                writer.publish(ingress.statuses(&state, &node));
                writer.publish_gateway(ingress.table().load().gateway_status.clone());
                for (object, message) in problems {
                    writer.report(object, message);
                }
            }
        }
        health.update_proxy(|h| {
            h.queued_since.get_or_insert_with(Instant::now);
        });
        // Attach first, so that a pod device that appeared with its
        // endpoints serves traffic as soon as the maps do.
        reconcile_devices(&mut dataplane, &selector, &mut missing, &control);
        let synced = sync(
            &mut dataplane,
            &mut translation,
            (&previous, &state),
            &node,
            &metrics,
            &control,
            &changes,
        );
        if socket_lb.is_some() {
            match dataplane.end_sockets_of_gone_backends() {
                Ok((ended, failed)) => {
                    if ended > 0 {
                        info!(
                            sockets = ended,
                            "ended sockets connected to backends that went away"
                        );
                    }
                    for e in failed {
                        warn!("ending a socket of a removed backend: {e}; it keeps its dead backend until the application gives up");
                    }
                }
                Err(e) => warn!("ending sockets of removed backends: {e}"),
            }
        }
        previous = state.clone();
        names_complete &= synced.is_some();
        if let Some(changed) = synced {
            let desired = translation.desired();
            report_node_port_addresses(desired, &mut node_ports_on);
            // After a failed sync the names missed its keys: all again.
            metrics.set_services(
                desired,
                match &changed {
                    crate::translation::Changed::Keys(keys) if names_complete => Some(keys),
                    _ => None,
                },
            );
            names_complete = true;
            pending.programmed(&metrics);
            health.update_proxy(|h| {
                h.last_updated = Some(SystemTime::now());
                h.queued_since = None;
                h.source = format!("{:?}: synced", cfg.source);
            });
            health
                .services
                .store(Arc::new(desired.health_checks.clone()));
            health_servers.reconcile(&health).await;
        }
    }
    info!("stopping; maps stay pinned under {}", cfg.bpffs.display());
    Ok(())
}

/// Attaches the socket programs (or, with `--socket-lb=off`, removes those an
/// earlier agent left). A kernel without the hooks falls back to the packet
/// path, with a warning.
fn start_socket_lb(
    dataplane: &mut Dataplane,
    mode: crate::dataplane::socket_lb::SocketLbMode,
    cgroup: Option<&std::path::Path>,
    control: &ControlState,
) -> Option<crate::dataplane::socket_lb::SocketLb> {
    let status = |cgroup: String, state: String| crate::control::SocketLbStatus {
        mode: mode.name().into(),
        cgroup,
        state,
    };
    let Some(cgroup) = cgroup else {
        for pin in dataplane.detach_socket_lb() {
            info!(
                pin,
                "socket LB is off: removed the socket link an earlier agent pinned"
            );
        }
        control.set_socket_lb(status(String::new(), "off".into()));
        return None;
    };
    match dataplane.attach_socket_lb(cgroup) {
        Ok((lb, report)) => {
            for pin in &report.removed {
                info!(pin, "removed a socket link pinned for another cgroup");
            }
            info!(
                mode = mode.name(),
                cgroup = %cgroup.display(),
                attached = ?report.attached,
                taken_over = ?report.taken_over,
                "socket LB attached: connect/sendmsg to a service go straight to a backend"
            );
            control.set_socket_lb(status(cgroup.display().to_string(), "attached".into()));
            Some(lb)
        }
        Err(e) => {
            let e = error_chain(&e);
            warn!(
                cgroup = %cgroup.display(),
                "socket LB is not available: {e}; the packet path (tc) serves service traffic, \
                 but processes of this network namespace do not reach services"
            );
            control.set_socket_lb(status(cgroup.display().to_string(), format!("failed: {e}")));
            None
        }
    }
}

/// An error with its sources, "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Says which addresses NodePorts are served on whenever that changes, and
/// once, as a warning, when there is none while some Service has a NodePort.
fn report_node_port_addresses(desired: &Desired, last: &mut Option<crate::node_addrs::Chosen>) {
    let chosen = &desired.node_ports_on;
    if last.as_ref() == Some(chosen) {
        return;
    }
    if chosen.addresses.is_empty() {
        if desired.node_ports == 0 {
            return;
        }
        warn!(
            node_ports = desired.node_ports,
            "no address to serve NodePorts on: {} gives none; NodePorts are not served until \
             this node has one (give the uplinks an IPv4 address with --devices, a Node object \
             with an InternalIP, or --nodeport-addresses)",
            chosen.source
        );
    } else {
        info!(addresses = ?chosen.addresses, "NodePorts served on {}", chosen.source);
    }
    *last = Some(chosen.clone());
}

/// Says when the conntrack map becomes full and when it has room again.
fn report_conntrack_fill(gc: &crate::dataplane::ct_gc::CtGc) {
    let map = lb_common::MAP_CT;
    let (entries, capacity) = (gc.entries, gc.capacity);
    if gc.is_full() {
        warn!(
            "conntrack map {map} is full ({entries} of {capacity} entries): new flows evict the \
             least recently used ones, which breaks them; raise --conntrack-min or \
             --conntrack-max-per-core"
        );
    } else {
        info!("conntrack map {map} has room again ({entries} of {capacity} entries)");
    }
}

/// With the ingress proxy on and the Kubernetes source, a writer of the
/// Ingresses' status.loadBalancer (its own client). A failure to build the
/// client leaves the status alone and says so.
async fn ingress_status_writer(
    cfg: &AgentConfig,
) -> Option<crate::source::ingress_status::StatusWriter> {
    let (SourceSpec::Kube(options), Some(_)) = (&cfg.source, &cfg.ingress) else {
        return None;
    };
    match kube_source::client(options.kubeconfig.as_deref(), options.master.as_deref()).await {
        Ok(client) => Some(crate::source::ingress_status::StatusWriter::spawn(client)),
        Err(e) => {
            warn!("ingress status.loadBalancer will not be published: {e}");
            None
        }
    }
}

/// Attaches tc and XDP to the devices there are now, and logs what changed.
/// A `--devices` uplink that is not there is named once and attached when it
/// appears; the rest keeps serving meanwhile.
fn reconcile_devices(
    dataplane: &mut Dataplane,
    selector: &DeviceSelector,
    missing: &mut std::collections::BTreeSet<String>,
    control: &ControlState,
) {
    let links = match list_links() {
        Ok(links) => links,
        Err(e) => {
            warn!("listing links: {e}");
            return;
        }
    };
    let report = dataplane.reconcile_devices(&selector.select(&links), &selector.uplinks(&links));
    for name in &report.attached {
        info!(device = %name, "attached tc ingress");
    }
    for name in &report.adopted {
        info!(device = %name, "attached tc ingress (took over the pinned link)");
    }
    for name in &report.detached {
        info!(device = %name, "device gone; detached");
    }
    for (name, e) in &report.failed {
        warn!(device = %name, "attach failed: {e}");
    }
    let uplinks = selector.uplinks(&links);
    let xdp = dataplane.reconcile_xdp(&uplinks);
    for (name, e) in &xdp.fell_back {
        warn!(device = %name, "native XDP is not available ({e}); using generic XDP");
    }
    for (name, w) in &xdp.warnings {
        warn!(device = %name, "{w}");
    }
    for (name, why) in &xdp.tc_only {
        info!(device = %name, "no XDP: {why}");
    }
    for (name, mode, how, why) in &xdp.attached {
        info!(device = %name, mode, "XDP {how} ({why})");
    }
    for name in &xdp.detached {
        info!(device = %name, "XDP detached");
    }
    for (name, e) in &xdp.failed {
        warn!(device = %name, "XDP attach failed: {e}; tc on the uplink serves external clients");
    }
    for device in &selector.devices {
        let present = links.iter().any(|(n, _)| n == device);
        if !present && missing.insert(device.clone()) {
            warn!(device = %device, "uplink named in --devices does not exist; attached when it appears, the rest keeps serving");
        } else if present && missing.remove(device) {
            info!(device = %device, "uplink appeared");
        }
    }
    let mut status = dataplane.uplink_modes(&uplinks);
    status.extend(missing.iter().map(|d| crate::control::UplinkStatus {
        device: d.clone(),
        mode: "missing".into(),
        reason: "named in --devices, not present; waiting for it".into(),
    }));
    control.set_uplinks(status);
}

/// Translates what changed and writes it to the maps (everything when a
/// full plan is due). Returns which frontends the translation changed when
/// the maps hold the new desired state, None when the sync failed. Logs one
/// line either way, and records the sync for the metrics and `weir status`.
fn sync(
    dataplane: &mut Dataplane,
    translation: &mut crate::translation::Translation,
    (before, state): (&ClusterState, &ClusterState),
    node: &NodeFacts,
    metrics: &Metrics,
    control: &ControlState,
    changes: &crate::model::Changes,
) -> Option<crate::translation::Changed> {
    let started = Instant::now();
    let changed = translation.update(before, state, node, changes);
    for w in translation.new_warnings() {
        warn!("{w}");
    }
    let desired = translation.desired();
    let result = match &changed {
        crate::translation::Changed::All => {
            let result = dataplane.sync(desired);
            // A full plan's operations are freed by now.
            crate::memory::release_freed();
            result
        }
        crate::translation::Changed::Keys(keys) => dataplane.sync_changes(desired, keys),
    };
    let elapsed = started.elapsed();
    metrics.sync_duration.observe(elapsed.as_secs_f64());
    let mut report = SyncReport {
        time: rfc3339(SystemTime::now()),
        duration_seconds: elapsed.as_secs_f64(),
        result: if result.is_ok() { "success" } else { "failure" }.into(),
        services: state.services.len(),
        endpoint_slices: state.slices.len(),
        frontends: dataplane.programmed().services.len(),
        backends: dataplane.programmed().backends.len(),
        ..Default::default()
    };
    metrics
        .syncs
        .get_or_create(&ResultLabel {
            result: report.result.clone(),
        })
        .inc();
    let outcome = match result {
        Ok(stats) => {
            for w in &stats.warnings {
                warn!("{w}");
            }
            metrics.frontends_skipped.set(stats.skipped as i64);
            metrics
                .frontends
                .set(desired.frontends.len() as i64 - stats.skipped as i64);
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            metrics.sync_last_timestamp.set(now.as_secs_f64());
            report.skipped_frontends = stats.skipped;
            report.map_ops = stats.ops;
            info!(
                services = report.services,
                slices = report.endpoint_slices,
                service_changes = changes.services.len(),
                endpoint_changes = changes.slices.len(),
                frontends = report.frontends,
                backends = report.backends,
                skipped = stats.skipped,
                map_ops = stats.ops,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                "synced"
            );
            Some(changed)
        }
        Err(e) => {
            let error = sync_error(&e, desired);
            warn!(
                services = report.services,
                slices = report.endpoint_slices,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                "sync failed: {error}; the maps keep what was written, the next change retries"
            );
            report.error = Some(error);
            None
        }
    };
    control.synced(report);
    outcome
}

/// A sync error, naming the Service when the failed write was one of its frontends.
fn sync_error(e: &crate::dataplane::LoadError, desired: &Desired) -> String {
    use crate::dataplane::{maps::MapsError, LoadError};
    if let LoadError::Maps(MapsError::Write(w)) = e {
        if let Some(f) = w.frontend.and_then(|key| desired.frontends.get(&key)) {
            return format!("Service {}: {e}", f.service);
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{
        maps::{MapsError, WriteFailure},
        LoadError,
    };

    #[test]
    fn a_failed_frontend_write_names_its_service() {
        let key = crate::frontend::FrontendKey {
            addr: [198, 19, 0, 10].into(),
            port: 80,
            proto: lb_common::PROTO_TCP,
            scope: lb_common::SCOPE_EXTERNAL,
        };
        let mut desired = Desired::default();
        desired.frontends.insert(
            key,
            Arc::new(crate::translate::Frontend {
                service: ObjectRef::new("ns", "web"),
                ..Default::default()
            }),
        );
        let failure = |frontend| {
            LoadError::Maps(MapsError::Write(Box::new(WriteFailure {
                name: lb_common::MAP_SERVICES,
                what: "writing frontend 198.19.0.10:80/TCP".into(),
                frontend,
                source: aya::maps::MapError::KeyNotFound,
            })))
        };
        let e = sync_error(&failure(Some(key)), &desired);
        assert!(
            e.starts_with("Service ns/web: map SERVICES_V1: writing frontend 198.19.0.10:80/TCP: "),
            "{e}"
        );
        assert!(sync_error(&failure(None), &desired).starts_with("map SERVICES_V1: "));
    }
}
