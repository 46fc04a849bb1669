//! Prometheus metrics on --metrics-bind-address (default 127.0.0.1:10249),
//! named like kube-proxy's with the `weir_` prefix: sync duration (kube-proxy's
//! buckets: 1 ms x 2, 15 buckets), network programming latency (kube-proxy's
//! buckets, 0.25 s to 5 min), last sync time, sync counts, Service and
//! EndpointSlice changes, the ingress proxy's requests and latency by route,
//! and, read from the pinned maps at scrape time, per-frontend
//! flows/packets/bytes, drops by reason, and map fill levels.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

use hyper::StatusCode;
use lb_common::{DROP_REASON_NAMES, SCOPE_INTERNAL};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{dataplane::maps::Maps, health, inspect};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// A frontend ("addr:port/PROTO", " (internal)" for the internal view) and
/// the Service port it serves: namespace, name and port name (empty for a
/// frontend restored from the pins before the first sync).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabel {
    pub frontend: String,
    pub namespace: String,
    pub name: String,
    pub port_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

/// A route of the ingress proxy: the rule host and path (both empty for the
/// default backend, `service` empty too when no rule matched) and its backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub host: String,
    pub path: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub host: String,
    pub path: String,
    pub service: String,
    pub code: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The ingress proxy's metrics; cloning shares them.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: Family<RequestLabel, Counter>,
    pub duration: HistogramFamily<RouteLabel>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                // Prometheus' default buckets, 5 ms to 10 s.
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
        }
    }
}

impl ProxyMetrics {
    /// Records one request: its route, the status it got and how long the
    /// response head took.
    pub fn observe(&self, route: RouteLabel, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabel {
                host: route.host.clone(),
                path: route.path.clone(),
                service: route.service.clone(),
                code,
            })
            .inc();
        self.duration.get_or_create(&route).observe(seconds);
    }
}

/// kube-proxy's buckets for network programming latency: 0.25 s, 0.5 s,
/// 1..59 s, 60..115 s by 5 s, 2..5 min by 30 s.
pub fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    /// From the change that triggered an EndpointSlice's content to the maps written.
    pub network_programming: Histogram,
    pub service_changes: Counter,
    pub endpoint_changes: Counter,
    pub proxy: ProxyMetrics,
    pub sync_last_timestamp: Gauge<f64, AtomicU64>,
    pub syncs: Family<ResultLabel, Counter>,
    pub frontends: Gauge,
    pub frontends_skipped: Gauge,
    map_entries: Family<MapLabel, Gauge>,
    map_capacity: Family<MapLabel, Gauge>,
    map_pressure: Family<MapLabel, Gauge<f64, AtomicU64>>,
    flows: Family<FrontendLabel, Counter>,
    packets: Family<FrontendLabel, Counter>,
    bytes: Family<FrontendLabel, Counter>,
    drops: Family<ReasonLabel, Counter>,
    /// Packets passed untranslated, by reason (PASSED_V1).
    passed: Family<ReasonLabel, Counter>,
    /// Socket-level translations (connect/sendmsg to a frontend) and refusals (no endpoint).
    socket_translations: Counter,
    socket_refusals: Counter,
    /// Kernel counters are cumulative per service id: the last values seen,
    /// so that each scrape adds only the difference.
    last: Mutex<HashMap<(String, &'static str), u64>>,
    /// Each programmed frontend's Service and port name, from the last sync.
    services:
        Mutex<HashMap<crate::frontend::FrontendKey, std::sync::Arc<crate::translate::Frontend>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let m = Self {
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            network_programming: Histogram::new(network_programming_buckets()),
            service_changes: Counter::default(),
            endpoint_changes: Counter::default(),
            proxy: ProxyMetrics::default(),
            sync_last_timestamp: Gauge::default(),
            syncs: Family::default(),
            frontends: Gauge::default(),
            frontends_skipped: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_pressure: Family::default(),
            flows: Family::default(),
            packets: Family::default(),
            bytes: Family::default(),
            drops: Family::default(),
            passed: Family::default(),
            socket_translations: Counter::default(),
            socket_refusals: Counter::default(),
            last: Mutex::default(),
            services: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_proxy_rules_duration_seconds",
            "Time to translate and write the maps",
            m.sync_duration.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "When the last successful sync finished (Unix time)",
            m.sync_last_timestamp.clone(),
        );
        registry.register("syncs", "Syncs by result", m.syncs.clone());
        registry.register(
            "network_programming_duration_seconds",
            "From the change that triggered an EndpointSlice's content (its endpoints.kubernetes.io/last-change-trigger-time) to the maps written",
            m.network_programming.clone(),
        );
        registry.register(
            "sync_proxy_rules_service_changes",
            "Services added, changed or removed",
            m.service_changes.clone(),
        );
        registry.register(
            "sync_proxy_rules_endpoint_changes",
            "EndpointSlices added, changed or removed",
            m.endpoint_changes.clone(),
        );
        registry.register(
            "ingress_requests",
            "Requests the ingress proxy answered, by route and status code",
            m.proxy.requests.clone(),
        );
        registry.register(
            "ingress_request_duration_seconds",
            "Time from a request to its response head, by route",
            m.proxy.duration.clone(),
        );
        registry.register("frontends", "Frontends programmed", m.frontends.clone());
        registry.register(
            "frontends_skipped",
            "Frontends not programmed because the maps are full",
            m.frontends_skipped.clone(),
        );
        registry.register("map_entries", "Entries in each map", m.map_entries.clone());
        registry.register(
            "map_capacity",
            "Capacity of each map",
            m.map_capacity.clone(),
        );
        registry.register(
            "map_pressure",
            "Fill level of each map, entries over capacity (1 is full)",
            m.map_pressure.clone(),
        );
        registry.register("service_flows", "New flows per frontend", m.flows.clone());
        registry.register(
            "service_packets",
            "Packets translated per frontend",
            m.packets.clone(),
        );
        registry.register(
            "service_bytes",
            "Bytes translated per frontend",
            m.bytes.clone(),
        );
        registry.register(
            "drops",
            "Packets dropped or rejected, by reason",
            m.drops.clone(),
        );
        registry.register(
            "passed_untranslated",
            "Packets that may be for a service passed on untranslated, by reason (ipv6_extension_header: the datapath does not walk IPv6 extension headers)",
            m.passed.clone(),
        );
        registry.register(
            "socket_lb_translations",
            "connect() and sendmsg() calls sent to a backend by socket LB",
            m.socket_translations.clone(),
        );
        registry.register(
            "socket_lb_refusals",
            "connect() and sendmsg() calls to a frontend without endpoints, refused with ECONNREFUSED",
            m.socket_refusals.clone(),
        );
        Self { registry, ..m }
    }

    /// Records which Service port each frontend serves (after a sync): of
    /// `changed` only, or of every frontend. A change at 100k services
    /// touches its own keys, not a 100k-entry table.
    pub fn set_services(
        &self,
        desired: &crate::translate::Desired,
        changed: Option<&std::collections::BTreeSet<crate::frontend::FrontendKey>>,
    ) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        match changed {
            Some(keys) => {
                for key in keys {
                    match desired.frontends.get(key) {
                        Some(f) => services.insert(*key, f.clone()),
                        None => services.remove(key),
                    };
                }
            }
            None => {
                *services = desired
                    .frontends
                    .iter()
                    .map(|(key, f)| (*key, f.clone()))
                    .collect();
            }
        }
    }

    fn add(
        &self,
        family: &Family<FrontendLabel, Counter>,
        label: &FrontendLabel,
        what: &'static str,
        now: u64,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last
            .insert((label.frontend.clone(), what), now)
            .unwrap_or(0);
        // A smaller value means the service was recreated with fresh counters.
        let delta = if now >= prev { now - prev } else { now };
        family.get_or_create(label).inc_by(delta);
    }

    /// Adds what a cumulative kernel counter of `reason` gained since the
    /// last refresh.
    fn add_reason(
        &self,
        family: &Family<ReasonLabel, Counter>,
        reason: &str,
        what: &'static str,
        now: u64,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert((reason.to_string(), what), now).unwrap_or(0);
        family
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(now.saturating_sub(prev));
    }

    /// Brings the map-derived metrics up to date.
    pub fn refresh(&self, maps: &Maps, bpffs: &std::path::Path) {
        for (key, value) in maps.frontends() {
            let scope = if key.scope == SCOPE_INTERNAL {
                " (internal)"
            } else {
                ""
            };
            let mut label = FrontendLabel {
                frontend: format!("{key}{scope}"),
                ..Default::default()
            };
            if let Some(f) = self
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                label.namespace = f.service.namespace.to_string();
                label.name = f.service.name.to_string();
                label.port_name = f.port_name.clone();
            }
            let stats = maps.service_stats(value.id);
            self.add(&self.flows, &label, "flows", stats.flows);
            self.add(&self.packets, &label, "packets", stats.packets);
            self.add(&self.bytes, &label, "bytes", stats.bytes);
        }
        for (i, name) in DROP_REASON_NAMES.iter().enumerate() {
            let now = maps.drops(i as u32);
            self.add_reason(&self.drops, name, "drops", now);
        }
        for (i, name) in lb_common::PASS_REASON_NAMES.iter().enumerate() {
            let now = maps.passed(i as u32);
            self.add_reason(&self.passed, name, "passed", now);
        }
        for (stat, counter, key) in [
            (
                lb_common::sock::SOCK_STAT_TRANSLATED,
                &self.socket_translations,
                "socket_translations",
            ),
            (
                lb_common::sock::SOCK_STAT_REFUSED,
                &self.socket_refusals,
                "socket_refusals",
            ),
        ] {
            let now = maps.sock_stat(stat);
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let prev = last.insert((key.to_string(), "sock"), now).unwrap_or(0);
            counter.inc_by(now.saturating_sub(prev));
        }
        for fill in inspect::status(bpffs, maps).maps {
            let label = MapLabel { map: fill.map };
            self.map_entries
                .get_or_create(&label)
                .set(fill.entries as i64);
            self.map_capacity
                .get_or_create(&label)
                .set(fill.capacity as i64);
            if fill.capacity > 0 {
                self.map_pressure
                    .get_or_create(&label)
                    .set(fill.entries as f64 / fill.capacity as f64);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves /metrics on `addr`, reading the maps pinned under `bpffs` at each
/// scrape. On a thread of its own: a scrape reads every service's counters
/// (at 100k services, 100k map reads), which must not hold up the agent's
/// loop, whose runtime has one thread.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    bpffs: PathBuf,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("weir-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                health::serve(listener, move |req| {
                    if req.uri().path() != "/metrics" {
                        return health::reply(StatusCode::NOT_FOUND, String::new(), None);
                    }
                    if let Ok(maps) = Maps::open_pinned(&bpffs) {
                        metrics.refresh(&maps, &bpffs);
                    }
                    let mut response = health::reply(StatusCode::OK, metrics.encode(), None);
                    if let Ok(v) =
                        "application/openmetrics-text; version=1.0.0; charset=utf-8".parse()
                    {
                        response.headers_mut().insert("Content-Type", v);
                    }
                    response
                })
                .await
            })
        })
}
