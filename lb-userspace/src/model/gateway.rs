//! Gateway API objects (gateway.networking.k8s.io/v1, standard channel), as
//! the source saw them, with the API's defaults applied (the apiserver's CRD
//! defaults, which the directory source has to apply itself). Structural
//! errors are rejected by the converter; what depends on other objects (a
//! missing Service, a reference not permitted, a conflicting listener) is
//! judged when routes are built, and reported in status.
use std::collections::BTreeMap;

use super::ObjectRef;

/// The API group of every Gateway API kind.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// Everything of the Gateway API the proxy and its status need.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GatewayState {
    /// GatewayClasses by name (cluster-scoped).
    pub classes: BTreeMap<String, GatewayClass>,
    pub gateways: BTreeMap<ObjectRef, Gateway>,
    pub http_routes: BTreeMap<ObjectRef, HttpRoute>,
    /// GRPCRoutes, as HTTP routes (`grpc` set) of POSTs to /service/method.
    pub grpc_routes: BTreeMap<ObjectRef, HttpRoute>,
    /// TLSRoutes (hostnames set) and TCPRoutes (no hostnames), by kind and name.
    pub stream_routes: BTreeMap<(StreamKind, ObjectRef), StreamRoute>,
    pub reference_grants: BTreeMap<ObjectRef, ReferenceGrant>,
    /// Namespace labels, for allowedRoutes.namespaces.from: Selector.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// Common metadata the status and precedence rules need.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub generation: i64,
    /// RFC 3339, as the apiserver writes it (sorts by time); None when absent.
    pub creation: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GatewayClass {
    pub name: String,
    pub meta: Meta,
    pub controller: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Gateway {
    pub id: ObjectRef,
    pub meta: Meta,
    pub class_name: String,
    pub listeners: Vec<Listener>,
    /// spec.addresses: (type, value); type defaults to IPAddress.
    pub addresses: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Listener {
    pub name: String,
    /// Lower-cased; None matches every host.
    pub hostname: Option<String>,
    pub port: u16,
    /// As written: HTTP, HTTPS, TLS, TCP, UDP or an implementation's own.
    pub protocol: String,
    pub tls: Option<ListenerTls>,
    pub allowed_routes: AllowedRoutes,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ListenerTls {
    /// Terminate (the default) or Passthrough, as written.
    pub mode: String,
    pub certificate_refs: Vec<ObjectReference>,
}

/// A reference to an object by group, kind, optional namespace and name
/// (certificateRefs, backendRefs, parentRefs' targets).
#[derive(Clone, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct ObjectReference {
    /// "" is the core group.
    pub group: String,
    pub kind: String,
    /// None: the referring object's namespace.
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AllowedRoutes {
    pub namespaces: RouteNamespaces,
    /// (group, kind); empty: the kinds the protocol supports.
    pub kinds: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RouteNamespaces {
    All,
    #[default]
    Same,
    Selector(LabelSelector),
}

/// A label selector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    /// (key, operator, values).
    pub match_expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .match_expressions
                .iter()
                .all(|(key, op, values)| match op.as_str() {
                    "In" => labels.get(key).is_some_and(|v| values.contains(v)),
                    "NotIn" => labels.get(key).is_none_or(|v| !values.contains(v)),
                    "Exists" => labels.contains_key(key),
                    "DoesNotExist" => !labels.contains_key(key),
                    _ => false,
                })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HttpRoute {
    pub id: ObjectRef,
    pub meta: Meta,
    pub parent_refs: Vec<ParentRef>,
    /// Lower-cased; may hold wildcards (`*.example.com`).
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
    /// A GRPCRoute: its matches became paths, and its backends speak HTTP/2.
    pub grpc: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HttpRouteRule {
    /// At least one (the default is PathPrefix /).
    pub matches: Vec<HttpMatch>,
    pub filters: Vec<HttpFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
    /// timeouts.request and timeouts.backendRequest, in milliseconds.
    pub request_timeout_ms: Option<u64>,
    pub backend_timeout_ms: Option<u64>,
    /// retry: the status codes retried, how many more attempts, the pause between.
    pub retry: Option<RetryPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    pub codes: Vec<u16>,
    pub attempts: u32,
    pub backoff_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchKind {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpMatch {
    pub path_kind: MatchKind,
    pub path: String,
    /// (kind: Exact or RegularExpression, name, value).
    pub headers: Vec<(MatchKind, String, String)>,
    pub query: Vec<(MatchKind, String, String)>,
    /// Upper case as written (GET, POST, ...).
    pub method: Option<String>,
}

impl Default for HttpMatch {
    fn default() -> Self {
        Self {
            path_kind: MatchKind::PathPrefix,
            path: "/".into(),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// A path modifier of a redirect or rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301 or 302 (the default); 303, 307 and 308 are extended.
    pub status_code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    /// RequestMirror: a backend and the percentage of requests mirrored.
    RequestMirror {
        backend: ObjectReference,
        port: Option<u16>,
        percent: u32,
    },
    /// A filter type Weir does not implement (CORS,
    /// ExtensionRef, ...): the rule is not served, and status says why.
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HttpBackendRef {
    pub target: ObjectReference,
    pub port: Option<u16>,
    /// Defaults to 1.
    pub weight: u32,
    /// Per-backend filters (RequestHeaderModifier, ResponseHeaderModifier).
    pub filters: Vec<HttpFilter>,
}

/// The two routes of byte streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamKind {
    /// TCPRoute: every connection to the listener.
    Tcp,
    /// TLSRoute: by the TLS server name (passthrough or terminated).
    Tls,
}

impl StreamKind {
    pub fn kind(self) -> &'static str {
        match self {
            StreamKind::Tcp => "TCPRoute",
            StreamKind::Tls => "TLSRoute",
        }
    }
}

/// A TCPRoute or TLSRoute: parents, (TLS) hostnames, and each rule's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRoute {
    pub kind: StreamKind,
    pub id: ObjectRef,
    pub meta: Meta,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    /// Each rule's backendRefs (their filters are always empty).
    pub rules: Vec<Vec<HttpBackendRef>>,
}

/// A ReferenceGrant: the kinds in other namespaces that may refer to objects in its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReferenceGrant {
    pub id: ObjectRef,
    /// (group, kind, namespace) allowed to refer.
    pub from: Vec<(String, String, String)>,
    /// (group, kind, optional name) that may be referred to.
    pub to: Vec<(String, String, Option<String>)>,
}

impl GatewayState {
    /// Whether a `from_kind` object in `from_ns` may refer to `to` (a
    /// `to_group`/`to_kind` object `to_name` in `to_ns`): always within a
    /// namespace, else only with a ReferenceGrant in `to_ns` that allows it.
    pub fn reference_allowed(
        &self,
        from_kind: &str,
        from_ns: &str,
        to_group: &str,
        to_kind: &str,
        to_ns: &str,
        to_name: &str,
    ) -> bool {
        from_ns == to_ns
            || self
                .reference_grants
                .values()
                .filter(|g| *g.id.namespace == *to_ns)
                .any(|g| {
                    g.from
                        .iter()
                        .any(|(gr, k, ns)| gr == GROUP && k == from_kind && ns == from_ns)
                        && g.to.iter().any(|(gr, k, name)| {
                            gr == to_group
                                && k == to_kind
                                && name.as_deref().is_none_or(|n| n == to_name)
                        })
                })
    }
}
