//! Cluster state in Weir's own types, independent of k8s-openapi: what the
//! sources produce and what `translate` consumes.
pub mod gateway;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
};

/// Namespace and name of an object. Shared strings: the translation and
/// the planner name a Service in several indexes, and a clone is two
/// reference counts, not two allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: shared_name(namespace.as_ref()),
            name: Arc::from(name.as_ref()),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
            Protocol::Sctp => 132,
        }
    }

    /// "TCP", "UDP", "SCTP", or the number for any other protocol.
    pub fn name_of(n: u8) -> String {
        Self::from_number(n).map_or_else(|| n.to_string(), |p| p.to_string())
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::PROTO_TCP => Some(Protocol::Tcp),
            lb_common::PROTO_UDP => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// An IP address family (spec.ipFamilies, an EndpointSlice's addressType).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The API's name: "IPv4" or "IPv6".
    pub fn api_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for a single unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    /// spec.ports[].appProtocol (`kubernetes.io/h2c`: the proxy speaks HTTP/2 in clear to it).
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Service {
    pub id: ObjectRef,
    pub service_type: ServiceType,
    /// Cluster IPs of both families (spec.clusterIPs, each checked against
    /// spec.ipFamilies); empty for headless services (clusterIP: None).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// spec.externalIPs (either family).
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress[].ip (either family).
    pub load_balancer_ips: Vec<IpAddr>,
    /// sessionAffinity ClientIP: the configured timeout in seconds, unvalidated
    /// (translate checks the range); None without affinity.
    pub session_affinity_timeout: Option<i64>,
    /// externalTrafficPolicy: Local.
    pub external_policy_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_policy_local: bool,
    /// spec.trafficDistribution (e.g. "PreferClose").
    pub traffic_distribution: Option<String>,
    pub health_check_node_port: Option<u16>,
    /// spec.loadBalancerSourceRanges (or the older
    /// service.beta.kubernetes.io/load-balancer-source-ranges annotation):
    /// CIDRs of either family as (network, prefix); a family without any
    /// allows every client of that family (kube-proxy's rule).
    pub source_ranges: Vec<(IpAddr, u8)>,
    /// What the source skipped of the object and why, with the field (e.g. a
    /// clusterIP whose family is not the one spec.ipFamilies gives): reported
    /// with the Service's name by `translate`, while the rest is served.
    pub problems: Vec<String>,
}

impl Service {
    /// The families the Service has a cluster IP of, in spec order.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.cluster_ips.iter().map(|a| Family::of(*a))
    }

    /// Its primary family: its first cluster IP's (IPv4 for a Service
    /// without one, as the API defaults a single-stack Service).
    pub fn primary_family(&self) -> Family {
        self.families().next().unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice. Conditions follow the API: a missing `ready` means ready.
///
/// Names are shared (`shared_name`): a cluster has a million endpoints on a
/// few thousand nodes, and a String per endpoint was most of the state's
/// memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// hints.forZones; None when the endpoint has no hints.
    pub hint_zones: Option<Arc<[Arc<str>]>>,
}

/// The one shared copy of a node or zone name: equal names from different
/// objects share their memory. The table keeps at most 65,536 names; past
/// that it starts afresh (names already handed out stay valid, only their
/// sharing with later ones is lost).
pub fn shared_name(name: &str) -> Arc<str> {
    use std::sync::{Mutex, OnceLock};
    const MAX_NAMES: usize = 65_536;
    static NAMES: OnceLock<Mutex<std::collections::HashSet<Arc<str>>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = names.get(name) {
        return shared.clone();
    }
    if names.len() >= MAX_NAMES {
        names.clear();
    }
    let shared: Arc<str> = Arc::from(name);
    names.insert(shared.clone());
    shared
}

impl Endpoint {
    /// A ready endpoint with no node, zone or hints.
    pub fn ready(address: IpAddr) -> Self {
        Self {
            address,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            hint_zones: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub id: ObjectRef,
    /// The `kubernetes.io/service-name` label: the service in the same namespace.
    pub service_name: String,
    /// addressType: every endpoint's address is of this family.
    pub family: Family,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// status.addresses of type InternalIP and ExternalIP (both families).
    pub addresses: Vec<IpAddr>,
}

/// The node label that names its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Everything a source knows about the cluster at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClusterState {
    /// Shared (Arc) so that a new state keeps the objects that did not
    /// change as they were: copying a state and finding what changed
    /// compare pointers, not every field of every object.
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    pub slices: BTreeMap<ObjectRef, Arc<EndpointSlice>>,
    pub nodes: BTreeMap<String, Node>,
    /// Ingresses, IngressClasses and TLS Secrets, for the L7 proxy.
    pub ingress: IngressState,
    /// Gateway API objects, for the same proxy.
    pub gateway: gateway::GatewayState,
    /// When each EndpointSlice's current content was triggered: its
    /// `endpoints.kubernetes.io/last-change-trigger-time` annotation (the
    /// directory source falls back to the file's modification time). The
    /// start of `weir_network_programming_duration_seconds`.
    pub slice_change_times: ChangeTimes,
}

/// Trigger times by EndpointSlice. Metadata about the state, not part of it:
/// two states with the same objects are equal whatever their trigger times
/// (so a source does not publish, nor a test tell apart, states that differ
/// only in when they were written).
#[derive(Clone, Debug, Default)]
pub struct ChangeTimes(pub BTreeMap<ObjectRef, std::time::SystemTime>);

impl PartialEq for ChangeTimes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ChangeTimes {}

impl std::ops::Deref for ChangeTimes {
    type Target = BTreeMap<ObjectRef, std::time::SystemTime>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChangeTimes {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The objects that differ between two states (added, changed or removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: Vec<ObjectRef>,
    pub slices: Vec<ObjectRef>,
}

/// The keys whose values differ between `a` and `b` (in either only, or in
/// both with other values), in order. One pass over both maps side by side.
///
/// A state holds every object under its own id, and a new state shares the
/// Arcs of the objects that did not change, so two entries holding the same
/// Arc have the same key: they are passed over without comparing the keys.
/// At 100k services the key comparisons were most of a change's time.
fn differing<K: Ord + Clone, T: PartialEq>(
    a: &BTreeMap<K, Arc<T>>,
    b: &BTreeMap<K, Arc<T>>,
) -> Vec<K> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        if let (Some((ka, va)), Some((kb, vb))) = (a.peek(), b.peek()) {
            if Arc::ptr_eq(va, vb) {
                debug_assert!(ka == kb, "one object under two keys");
                a.next();
                b.next();
                continue;
            }
        }
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) => {
                out.push((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                out.push((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                Ordering::Less => {
                    out.push((*ka).clone());
                    a.next();
                }
                Ordering::Greater => {
                    out.push((*kb).clone());
                    b.next();
                }
                Ordering::Equal => {
                    if va != vb {
                        out.push((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

impl ClusterState {
    /// A state of these Services and EndpointSlices (and nothing else).
    pub fn with_objects(
        services: impl IntoIterator<Item = Service>,
        slices: impl IntoIterator<Item = EndpointSlice>,
    ) -> Self {
        Self {
            services: services
                .into_iter()
                .map(|s| (s.id.clone(), Arc::new(s)))
                .collect(),
            slices: slices
                .into_iter()
                .map(|s| (s.id.clone(), Arc::new(s)))
                .collect(),
            ..Self::default()
        }
    }

    /// The Services and EndpointSlices that differ from `before` (kube-proxy
    /// counts changes per watch event; a source that coalesces events counts
    /// each object once per state).
    pub fn changes_since(&self, before: &ClusterState) -> Changes {
        Changes {
            services: differing(&before.services, &self.services),
            slices: differing(&before.slices, &self.slices),
        }
    }

    /// The slices that belong to `service`. This scans every slice: to look
    /// up many services, build a [`SliceIndex`] once.
    pub fn slices_of<'a>(
        &'a self,
        service: &'a ObjectRef,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices.values().map(|s| &**s).filter(move |s| {
            s.id.namespace == service.namespace && *s.service_name == *service.name
        })
    }
}

/// The EndpointSlices of a [`ClusterState`] grouped by the Service they
/// belong to, in one pass, so that looking up every service's slices costs
/// O(slices) in all rather than O(services x slices). Each service's slices
/// come in the order `ClusterState::slices_of` yields them (by slice name).
#[derive(Debug, Default)]
pub struct SliceIndex<'a> {
    /// Namespace, then service name.
    by_service: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(state: &'a ClusterState) -> Self {
        let mut by_service: HashMap<&str, HashMap<&str, Vec<_>>> = HashMap::new();
        for slice in state.slices.values() {
            by_service
                .entry(&*slice.id.namespace)
                .or_default()
                .entry(slice.service_name.as_str())
                .or_default()
                .push(&**slice);
        }
        Self { by_service }
    }

    /// The slices that belong to `service` (none: an empty slice).
    pub fn of(&self, service: &ObjectRef) -> &[&'a EndpointSlice] {
        self.by_service
            .get(&*service.namespace)
            .and_then(|names| names.get(&*service.name))
            .map_or(&[], Vec::as_slice)
    }
}

// ---- Ingress (the embedded L7 proxy): networking.k8s.io/v1 Ingress and
// IngressClass, and the kubernetes.io/tls Secrets they name. ----

/// The Ingress objects and the certificates the proxy needs, as the source saw them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IngressState {
    pub ingresses: BTreeMap<ObjectRef, Ingress>,
    /// IngressClasses by name (cluster-scoped).
    pub classes: BTreeMap<String, IngressClass>,
    /// kubernetes.io/tls Secrets.
    pub tls_secrets: BTreeMap<ObjectRef, TlsSecret>,
}

/// spec.ingressClassName, or the legacy `kubernetes.io/ingress.class` annotation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ingress {
    pub id: ObjectRef,
    pub class_name: Option<String>,
    pub default_backend: Option<IngressBackend>,
    pub tls: Vec<IngressTls>,
    pub rules: Vec<IngressRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IngressTls {
    /// Lower-cased hosts; may hold wildcards (`*.example.com`).
    pub hosts: Vec<String>,
    /// A Secret in the Ingress's namespace; None means the default certificate.
    pub secret_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IngressRule {
    /// Lower-cased; empty for a rule that applies to every host; `*.x.y` for a wildcard.
    pub host: String,
    pub paths: Vec<IngressPath>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressPath {
    /// As written: must start with '/' to be valid (checked when routes are built).
    pub path: String,
    pub path_type: PathType,
    pub backend: IngressBackend,
}

/// A backend: a Service port in the Ingress's namespace. Resource backends
/// are not supported (the converter rejects them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressBackend {
    pub service: String,
    pub port: ServicePortRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServicePortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IngressClass {
    pub name: String,
    pub controller: String,
    /// The `ingressclass.kubernetes.io/is-default-class: "true"` annotation.
    pub is_default: bool,
}

/// A kubernetes.io/tls Secret: PEM as stored in `tls.crt` and `tls.key`
/// (parsed and checked when routes are built, so a bad one is reported there).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsSecret {
    pub id: ObjectRef,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsSecret {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSecret")
            .field("id", &self.id)
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, addr: [u8; 4]) -> EndpointSlice {
        EndpointSlice {
            id: ObjectRef::new("ns", name),
            service_name: "svc".into(),
            family: Family::V4,
            ports: Vec::new(),
            endpoints: vec![Endpoint::ready(addr.into())],
        }
    }

    #[test]
    fn changes_name_added_changed_and_removed_objects() {
        let svc = |name: &str| Service {
            id: ObjectRef::new("ns", name),
            ..Default::default()
        };
        let mut before = ClusterState::default();
        for s in [svc("kept"), svc("removed")] {
            before.services.insert(s.id.clone(), std::sync::Arc::new(s));
        }
        for s in [
            slice("same", [198, 18, 0, 1]),
            slice("moved", [198, 18, 0, 2]),
        ] {
            before.slices.insert(s.id.clone(), std::sync::Arc::new(s));
        }
        let mut after = before.clone();
        after.services.remove(&ObjectRef::new("ns", "removed"));
        let added = svc("added");
        after
            .services
            .insert(added.id.clone(), std::sync::Arc::new(added));
        let moved = slice("moved", [198, 18, 0, 3]);
        after
            .slices
            .insert(moved.id.clone(), std::sync::Arc::new(moved));
        // A new object equal to the old one (a source re-read it) is no
        // change; shared ones are passed over without comparing keys.
        let kept = svc("kept");
        after
            .services
            .insert(kept.id.clone(), std::sync::Arc::new(kept));
        // A new trigger time alone is no change of the slice.
        after
            .slice_change_times
            .insert(ObjectRef::new("ns", "same"), std::time::SystemTime::now());
        let c = after.changes_since(&before);
        assert_eq!(
            c.services,
            [
                ObjectRef::new("ns", "added"),
                ObjectRef::new("ns", "removed")
            ]
        );
        assert_eq!(c.slices, [ObjectRef::new("ns", "moved")]);
        assert_eq!(after.changes_since(&after), Changes::default());
        // Trigger times are not part of the state's identity.
        assert_eq!(after.slice_change_times.len(), 1);
        after.slice_change_times.clear();
        let mut other = after.clone();
        other
            .slice_change_times
            .insert(ObjectRef::new("ns", "moved"), std::time::SystemTime::now());
        assert_eq!(after, other);
    }
}
