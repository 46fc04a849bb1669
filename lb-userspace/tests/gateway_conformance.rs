//! The Gateway API conformance suite's HTTPRoute cases, through the routing
//! table: the upstream manifests (tests/data/gateway-conformance, unchanged),
//! the same requests, and the backend, status code and status conditions
//! the upstream Go tests expect (conformance/tests/<name>.go).
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weir::{
    model::ClusterState,
    routes::{
        build,
        gateway_status::{Condition, RouteParentStatus},
        rule::Target,
        RequestView, RouteConfig, RouteTable,
    },
    source::{dir::insert_all, parse::parse_documents},
};

const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";
const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/gateway-conformance"
);

fn manifest(name: &str) -> String {
    let path = format!("{DATA}/{name}.yaml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("{GATEWAY_CLASS_NAME}", "weir")
}

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n";

/// The base manifests and one test's, as the directory source reads them.
fn state(test: &str) -> ClusterState {
    let text = format!(
        "{CLASS}---\n{}\n---\n{}",
        manifest("base-manifests"),
        manifest(test)
    );
    let (objects, errors) = parse_documents(&format!("{test}.yaml"), &text);
    assert!(errors.is_empty(), "{errors:#?}");
    let mut state = ClusterState::default();
    insert_all(&mut state, objects);
    state
}

fn config() -> RouteConfig {
    RouteConfig {
        node_name: "node-a".into(),
        gateway_pool: (1..=250).map(|i| [198, 19, 2, i].into()).collect(),
        ..Default::default()
    }
}

fn table(test: &str) -> RouteTable {
    build(&state(test), &config())
}

/// Each Gateway's address, by name.
fn addresses(t: &RouteTable) -> std::collections::BTreeMap<String, String> {
    t.gateway_status
        .gateways
        .iter()
        .map(|g| (g.name.clone(), g.addresses[0].value.clone()))
        .collect()
}

#[test]
fn a_new_gateway_takes_a_free_pool_address_and_moves_no_other() {
    let before = table("httproute-simple-same-namespace");
    let mut cfg = config();
    cfg.gateway_previous = before
        .gateway_status
        .gateways
        .iter()
        .map(|g| {
            (
                weir::model::ObjectRef::new(&g.namespace, &g.name),
                g.addresses[0].value.parse().unwrap(),
            )
        })
        .collect();
    // The hostname-intersection Gateways sort before the base ones by name.
    let after = build(&state("httproute-hostname-intersection"), &cfg);
    let (old, new) = (addresses(&before), addresses(&after));
    for (name, a) in &old {
        assert_eq!(new.get(name), Some(a), "{name} moved: {old:?} -> {new:?}");
    }
    let fresh: std::collections::BTreeSet<&String> = new.values().collect();
    assert_eq!(fresh.len(), new.len(), "an address given twice: {new:?}");
    // Without the previous allocation the order is by age, then name.
    assert_ne!(
        addresses(&build(&state("httproute-hostname-intersection"), &config()))["same-namespace"],
        old["same-namespace"]
    );
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The backend Service (namespace/name) the request went to.
    Backend(String),
    Status(u16),
    /// A redirect: status and host.
    Redirect(u16, Option<String>),
}

use Outcome::*;

fn backend(name: &str) -> Outcome {
    Backend(format!("{INFRA}/{name}"))
}

/// The listener address of Gateway `gw` (in the infra namespace) for `port`.
fn address(t: &RouteTable, gw: &str, port: u16) -> SocketAddr {
    let status = t
        .gateway_status
        .gateway(INFRA, gw)
        .unwrap_or_else(|| panic!("no status for Gateway {gw}"));
    let ip: IpAddr = status.addresses[0].value.parse().unwrap();
    SocketAddr::new(ip, port)
}

fn send(
    t: &RouteTable,
    gw: &str,
    host: Option<&str>,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Outcome {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let view = RequestView {
        method: &method,
        path,
        query,
        headers: &map,
    };
    let Some(port) = t.gateway_at(address(t, gw, 80)) else {
        return Status(404);
    };
    let host = host.map(|h| h.split(':').next().unwrap().to_string());
    let Some(listener) = port.listener(host.as_deref()) else {
        return Status(404);
    };
    let Some(routed) = listener.table.route(host.as_deref(), &view) else {
        return Status(404);
    };
    let action = &routed.rule.action;
    if let Some(r) = &action.filters.redirect {
        return Redirect(r.status, r.hostname.clone());
    }
    match action.backends.pick().map(|b| &b.target) {
        Some(Target::Upstream(u)) => Backend(u.service.to_string()),
        Some(Target::Invalid(_)) | None => Status(500),
    }
}

fn get(t: &RouteTable, target: &str, headers: &[(&str, &str)]) -> Outcome {
    send(t, "same-namespace", None, Method::GET, target, headers)
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {conditions:#?}"))
}

fn parent<'a>(t: &'a RouteTable, ns: &str, route: &str) -> &'a RouteParentStatus {
    let r = t
        .gateway_status
        .route("HTTPRoute", ns, route)
        .unwrap_or_else(|| panic!("no status for HTTPRoute {ns}/{route}"));
    assert_eq!(r.parents.len(), 1, "{:#?}", r.parents);
    &r.parents[0]
}

/// GatewayAndHTTPRoutesMustBeAccepted and HTTPRouteMustHaveResolvedRefsConditionsTrue.
fn accepted_and_resolved(t: &RouteTable, ns: &str, route: &str, generation: i64) {
    let p = parent(t, ns, route);
    assert_eq!(p.parent_ref.group, "gateway.networking.k8s.io");
    assert_eq!(p.parent_ref.kind, "Gateway");
    assert_eq!(p.controller_name, "weir.dev/gateway-controller");
    for (kind, reason) in [("Accepted", "Accepted"), ("ResolvedRefs", "ResolvedRefs")] {
        let c = condition(&p.conditions, kind);
        assert!(c.is_true() && c.reason == reason, "{route}: {c:#?}");
    }
    assert!(p
        .conditions
        .iter()
        .all(|c| c.observed_generation == generation));
}

#[test]
fn every_base_gateway_of_the_class_is_accepted_and_programmed_with_its_own_address() {
    let t = table("httproute-simple-same-namespace");
    let mut seen = std::collections::BTreeSet::new();
    for gw in ["same-namespace", "all-namespaces", "backend-namespaces"] {
        let s = t.gateway_status.gateway(INFRA, gw).unwrap();
        for kind in ["Accepted", "Programmed"] {
            assert!(condition(&s.conditions, kind).is_true(), "{gw}: {s:#?}");
        }
        assert_eq!(s.addresses.len(), 1);
        assert!(
            seen.insert(s.addresses[0].value.clone()),
            "address used twice"
        );
        for l in &s.listeners {
            for kind in ["Accepted", "ResolvedRefs", "Programmed"] {
                assert!(
                    condition(&l.conditions, kind).is_true(),
                    "{gw}/{}: {l:#?}",
                    l.name
                );
            }
            assert!(!condition(&l.conditions, "Conflicted").is_true());
            assert_eq!(l.supported_kinds[0].kind, "HTTPRoute");
        }
    }
    assert!(t
        .gateway_status
        .classes
        .iter()
        .any(|c| c.name == "weir" && c.conditions[0].is_true()));
}

/// The certificate Secret the suite creates for its HTTPS Gateway (its
/// hostnames as SANs), as the directory source reads it.
fn validity_secret() -> String {
    let c = rcgen::generate_simple_self_signed(vec![
        "example.org".to_string(),
        "second-example.org".to_string(),
        "*.wildcard.org".to_string(),
    ])
    .expect("generating a certificate");
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tls-validity-checks-certificate, namespace: {INFRA}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&c.cert.pem()),
        indent(&c.signing_key.serialize_pem())
    )
}

#[test]
fn https_listeners_terminate_with_their_certificate_refs_or_say_why_not() {
    let gw = "same-namespace-with-https-listener";
    // Without the Secret: not programmed, ResolvedRefs False InvalidCertificateRef.
    let t = table("httproute-simple-same-namespace");
    let s = t.gateway_status.gateway(INFRA, gw).unwrap();
    assert_eq!(s.listeners.len(), 4);
    for l in &s.listeners {
        let resolved = condition(&l.conditions, "ResolvedRefs");
        assert_eq!(
            (resolved.status.as_str(), resolved.reason.as_str()),
            ("False", "InvalidCertificateRef"),
            "{}",
            l.name
        );
        assert!(
            resolved.message.contains("tls-validity-checks-certificate"),
            "{resolved:#?}"
        );
        assert!(!condition(&l.conditions, "Programmed").is_true());
    }
    // With it: every listener Accepted, ResolvedRefs and Programmed; the
    // certificate is chosen by the listener that matches the server name.
    let mut st = state("httproute-simple-same-namespace");
    let (objects, errors) = parse_documents("secret.yaml", &validity_secret());
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut st, objects);
    let t = build(&st, &config());
    let s = t.gateway_status.gateway(INFRA, gw).unwrap();
    for l in &s.listeners {
        for kind in ["Accepted", "ResolvedRefs", "Programmed"] {
            assert!(
                condition(&l.conditions, kind).is_true(),
                "{}: {l:#?}",
                l.name
            );
        }
    }
    let port = t
        .gateway_at(address(&t, gw, 443))
        .expect("the HTTPS port is served");
    assert!(port.tls());
    for name in [
        Some("second-example.org"),
        Some("a.wildcard.org"),
        Some("SECOND-example.org"),
        Some("other.example"),
        None,
    ] {
        assert!(port.cert(name).is_some(), "{name:?}");
    }
    // The HTTP Gateways do not terminate TLS.
    assert!(!t
        .gateway_at(address(&t, "same-namespace", 80))
        .unwrap()
        .tls());
}

#[test]
fn simple_same_namespace() {
    let t = table("httproute-simple-same-namespace");
    accepted_and_resolved(&t, INFRA, "gateway-conformance-infra-test", 0);
    assert_eq!(get(&t, "/", &[]), backend("infra-backend-v1"));
    let s = t.gateway_status.gateway(INFRA, "same-namespace").unwrap();
    assert_eq!(s.listeners[0].attached_routes, 1);
}

#[test]
fn exact_path_matching() {
    let t = table("httproute-exact-path-matching");
    accepted_and_resolved(&t, INFRA, "exact-matching", 0);
    for (path, want) in [
        ("/one", backend("infra-backend-v1")),
        ("/two", backend("infra-backend-v2")),
        ("/", Status(404)),
        ("/one/example", Status(404)),
        ("/two/", Status(404)),
        ("/Two", Status(404)),
    ] {
        assert_eq!(get(&t, path, &[]), want, "{path}");
    }
}

#[test]
fn header_matching() {
    let t = table("httproute-header-matching");
    accepted_and_resolved(&t, INFRA, "header-matching", 0);
    let v1 = backend("infra-backend-v1");
    let v2 = backend("infra-backend-v2");
    for (headers, want) in [
        (&[("Version", "one")][..], &v1),
        (&[("Version", "two")], &v2),
        (&[("Version", "two"), ("Color", "orange")], &v1),
        (&[("Version", "two"), ("Color", "blue")], &v2),
        (&[("Color", "orange")], &Status(404)),
        (&[("Some-Other-Header", "one")], &Status(404)),
        (&[("Color", "blue")], &v1),
        (&[("Color", "green")], &v1),
        (&[("Color", "red")], &v2),
        (&[("Color", "yellow")], &v2),
        (&[("Color", "purple")], &Status(404)),
    ] {
        assert_eq!(&get(&t, "/", headers), want, "{headers:?}");
    }
}

#[test]
fn matching_precedence() {
    let t = table("httproute-matching");
    accepted_and_resolved(&t, INFRA, "matching", 0);
    let v1 = backend("infra-backend-v1");
    let v2 = backend("infra-backend-v2");
    for (path, headers, want) in [
        ("/", &[][..], &v1),
        ("/example", &[], &v1),
        ("/", &[("Version", "one")], &v1),
        ("/v2", &[], &v2),
        ("/v2/example", &[], &v2),
        ("/", &[("Version", "two")], &v2),
        ("/v2/", &[], &v2),
        ("/v2example", &[], &v1),
        ("/foo/v2/example", &[], &v1),
    ] {
        assert_eq!(&get(&t, path, headers), want, "{path} {headers:?}");
    }
}

#[test]
fn method_matching() {
    let t = table("httproute-method-matching");
    accepted_and_resolved(&t, INFRA, "method-matching", 0);
    let v = |n: u8| backend(&format!("infra-backend-v{n}"));
    for (method, path, headers, want) in [
        (Method::POST, "/", &[][..], v(1)),
        (Method::GET, "/", &[], v(2)),
        (Method::HEAD, "/", &[], Status(404)),
        (Method::GET, "/path1", &[], v(1)),
        (Method::PUT, "/", &[("version", "one")], v(2)),
        (Method::POST, "/path2", &[("version", "two")], v(3)),
        (Method::PATCH, "/path3", &[], v(1)),
        (Method::DELETE, "/path4", &[("version", "three")], v(1)),
        (Method::PUT, "/", &[], Status(404)),
        (Method::DELETE, "/path4", &[], Status(404)),
        (Method::PATCH, "/path5", &[], v(1)),
        (Method::PATCH, "/", &[("version", "four")], v(2)),
    ] {
        let m = method.clone();
        assert_eq!(
            send(&t, "same-namespace", None, method, path, headers),
            want,
            "{m} {path} {headers:?}"
        );
    }
}

#[test]
fn query_param_matching() {
    let t = table("httproute-query-param-matching");
    accepted_and_resolved(&t, INFRA, "query-param-matching", 0);
    let v = |n: u8| backend(&format!("infra-backend-v{n}"));
    for (target, headers, want) in [
        ("/?animal=whale", &[][..], v(1)),
        ("/?animal=dolphin", &[], v(2)),
        ("/?animal=dolphin&color=blue", &[], v(3)),
        ("/?ANIMAL=Whale", &[], v(3)),
        ("/?animal=whale&otherparam=irrelevant", &[], v(1)),
        ("/?animal=dolphin&color=yellow", &[], v(2)),
        ("/?color=blue", &[], Status(404)),
        ("/?animal=dog", &[], Status(404)),
        ("/?animal=whaledolphin", &[], Status(404)),
        ("/", &[], Status(404)),
        ("/path1?animal=whale", &[], v(1)),
        ("/?animal=whale", &[("version", "one")], v(2)),
        ("/path2?animal=whale", &[("version", "two")], v(3)),
        ("/path3?animal=shark", &[], v(1)),
        ("/path4?animal=kraken", &[("version", "three")], v(1)),
        ("/?animal=shark", &[], Status(404)),
        ("/path4?animal=kraken", &[], Status(404)),
        ("/path5?animal=hydra", &[], v(1)),
        ("/?animal=hydra", &[("version", "four")], v(3)),
    ] {
        assert_eq!(get(&t, target, headers), want, "{target} {headers:?}");
    }
}

#[test]
fn hostname_intersection() {
    let t = table("httproute-hostname-intersection");
    for route in [
        "specific-host-matches-listener-specific-host",
        "specific-host-matches-listener-wildcard-host",
        "wildcard-host-matches-listener-specific-host",
        "wildcard-host-matches-listener-wildcard-host",
    ] {
        accepted_and_resolved(&t, INFRA, route, 0);
    }
    let gw = "httproute-hostname-intersection";
    let v = |n: u8| backend(&format!("infra-backend-v{n}"));
    for (host, path, want) in [
        ("very.specific.com", "/s1", v(1)),
        ("very.specific.com:1234", "/s1", v(1)),
        ("non.matching.com", "/s1", Status(404)),
        ("foo.nonmatchingwildcard.io", "/s1", Status(404)),
        ("foo.wildcard.io", "/s1", Status(404)),
        ("very.specific.com", "/non-matching-prefix", Status(404)),
        ("foo.wildcard.io", "/s2", v(2)),
        ("bar.wildcard.io", "/s2", v(2)),
        ("foo.bar.wildcard.io", "/s2", v(2)),
        ("non.matching.com", "/s2", Status(404)),
        ("wildcard.io", "/s2", Status(404)),
        ("very.specific.com", "/s2", Status(404)),
        ("foo.wildcard.io", "/non-matching-prefix", Status(404)),
        ("very.specific.com", "/s3", v(3)),
        ("non.matching.com", "/s3", Status(404)),
        ("foo.specific.com", "/s3", Status(404)),
        ("foo.wildcard.io", "/s3", Status(404)),
        ("foo.anotherwildcard.io", "/s4", v(1)),
        ("bar.anotherwildcard.io", "/s4", v(1)),
        ("foo.bar.anotherwildcard.io", "/s4", v(1)),
        ("anotherwildcard.io", "/s4", Status(404)),
        ("foo.wildcard.io", "/s4", Status(404)),
        ("very.specific.com", "/s4", Status(404)),
        ("specific.but.wrong.com", "/s5", Status(404)),
        ("wildcard.io", "/s5", Status(404)),
    ] {
        assert_eq!(
            send(&t, gw, Some(host), Method::GET, path, &[]),
            want,
            "{host}{path}"
        );
    }
    // The route that intersects no listener is not accepted, and says why.
    let p = parent(&t, INFRA, "no-intersecting-hosts");
    let accepted = condition(&p.conditions, "Accepted");
    assert!(!accepted.is_true());
    assert_eq!(accepted.reason, "NoMatchingListenerHostname");
    assert_eq!(p.parent_ref.namespace.as_deref(), Some(INFRA));
    // attachedRoutes counts only accepted routes, per listener.
    let s = t.gateway_status.gateway(INFRA, gw).unwrap();
    let attached: Vec<(&str, u32)> = s
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.attached_routes))
        .collect();
    assert_eq!(
        attached,
        [("listener-1", 2), ("listener-2", 1), ("listener-3", 1)]
    );
    // A listener without a hostname: the route's own hostnames still filter.
    let all = "httproute-hostname-intersection-all";
    accepted_and_resolved(&t, INFRA, all, 0);
    for (host, want) in [
        ("first.com", v(2)),
        ("sub.first.com", v(2)),
        ("second.com", v(2)),
        ("sub.second.com", v(2)),
        ("third.com", Status(404)),
        ("sub.third.com", Status(404)),
    ] {
        assert_eq!(
            send(&t, all, Some(host), Method::GET, "/", &[]),
            want,
            "{host}"
        );
    }
}

#[test]
fn redirect_host_and_status() {
    let t = table("httproute-redirect-host-and-status");
    accepted_and_resolved(&t, INFRA, "redirect-host-and-status", 0);
    assert_eq!(
        get(&t, "/hostname-redirect", &[]),
        Redirect(302, Some("example.org".into()))
    );
    assert_eq!(
        get(&t, "/host-and-status", &[]),
        Redirect(301, Some("example.org".into()))
    );
}

#[test]
fn weights_split_70_30_and_weight_0_gets_nothing() {
    let t = table("httproute-weight");
    accepted_and_resolved(&t, INFRA, "weighted-backends", 0);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..500 {
        *counts
            .entry(format!("{:?}", get(&t, "/", &[])))
            .or_insert(0) += 1;
    }
    let share =
        |n: &str| f64::from(*counts.get(&format!("{:?}", backend(n))).unwrap_or(&0)) / 500.0;
    assert!(
        (share("infra-backend-v1") - 0.7).abs() <= 0.05,
        "{counts:?}"
    );
    assert!(
        (share("infra-backend-v2") - 0.3).abs() <= 0.05,
        "{counts:?}"
    );
    assert_eq!(share("infra-backend-v3"), 0.0, "{counts:?}");
}

#[test]
fn cross_namespace_routes_attach_where_the_selector_allows_them() {
    let t = table("httproute-cross-namespace");
    accepted_and_resolved(&t, WEB, "cross-namespace", 0);
    assert_eq!(
        parent(&t, WEB, "cross-namespace")
            .parent_ref
            .namespace
            .as_deref(),
        Some(INFRA)
    );
    assert_eq!(
        send(&t, "backend-namespaces", None, Method::GET, "/", &[]),
        Backend(format!("{WEB}/web-backend"))
    );
}

#[test]
fn invalid_cross_namespace_parent_ref_is_not_allowed_by_listeners() {
    let t = table("httproute-invalid-cross-namespace-parent-ref");
    let p = parent(&t, WEB, "invalid-cross-namespace-parent-ref");
    let accepted = condition(&p.conditions, "Accepted");
    assert!(!accepted.is_true());
    assert_eq!(accepted.reason, "NotAllowedByListeners");
    let resolved = condition(&p.conditions, "ResolvedRefs");
    assert!(
        resolved.is_true() && resolved.reason == "ResolvedRefs",
        "{resolved:#?}"
    );
    let s = t.gateway_status.gateway(INFRA, "same-namespace").unwrap();
    assert_eq!(s.listeners[0].attached_routes, 0);
    assert_eq!(get(&t, "/", &[]), Status(404));
}

#[test]
fn a_nonexistent_backend_ref_answers_500_and_is_reported() {
    let t = table("httproute-invalid-nonexistent-backendref");
    let p = parent(&t, INFRA, "invalid-nonexistent-backend-ref");
    assert!(condition(&p.conditions, "Accepted").is_true());
    let resolved = condition(&p.conditions, "ResolvedRefs");
    assert!(!resolved.is_true());
    assert_eq!(resolved.reason, "BackendNotFound");
    assert!(resolved.message.contains("nonexistent"), "{resolved:#?}");
    assert_eq!(get(&t, "/", &[]), Status(500));
}

#[test]
fn rewrite_path_rules_rewrite_as_the_suite_expects() {
    let t = table("httproute-rewrite-path");
    accepted_and_resolved(&t, INFRA, "rewrite-path", 0);
    let port = t.gateway_at(address(&t, "same-namespace", 80)).unwrap();
    let listener = port.listener(None).unwrap();
    let headers = HeaderMap::new();
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let view = RequestView {
            method: &Method::GET,
            path,
            query: None,
            headers: &headers,
        };
        let routed = listener.table.route(None, &view).unwrap();
        let rewrite = routed.rule.action.filters.rewrite_path.as_ref().unwrap();
        assert_eq!(
            rewrite.apply(&routed.rule.matcher.path, path),
            want,
            "{path}"
        );
    }
}

#[test]
fn request_header_modifier_sets_adds_and_removes_case_insensitively() {
    let t = table("httproute-request-header-modifier");
    accepted_and_resolved(&t, INFRA, "request-header-modifier", 0);
    let port = t.gateway_at(address(&t, "same-namespace", 80)).unwrap();
    let listener = port.listener(None).unwrap();
    let edit = |path: &str, headers: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let view = RequestView {
            method: &Method::GET,
            path,
            query: None,
            headers: &HeaderMap::new(),
        };
        let routed = listener.table.route(None, &view).unwrap();
        routed
            .rule
            .action
            .filters
            .request_headers
            .as_ref()
            .unwrap()
            .apply(&mut map);
        map
    };
    let joined = |m: &HeaderMap, name: &str| {
        m.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let m = edit(
        "/set",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
    );
    assert_eq!(joined(&m, "x-header-set"), "set-overwrites-values");
    assert_eq!(joined(&m, "some-other-header"), "val");
    let m = edit(
        "/add",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
    );
    assert_eq!(
        joined(&m, "x-header-add"),
        "some-other-value,add-appends-values"
    );
    let m = edit("/remove", &[("X-Header-Remove", "val")]);
    assert!(m.get("x-header-remove").is_none());
    let m = edit(
        "/multiple",
        &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
    );
    for (name, want) in [
        ("x-header-set-1", "header-set-1"),
        ("x-header-set-2", "header-set-2"),
        ("x-header-add-1", "header-add-1"),
        ("x-header-add-2", "add-val-2,header-add-2"),
        ("x-header-add-3", "header-add-3"),
        ("another-header", "another-header-val"),
    ] {
        assert_eq!(joined(&m, name), want, "{name}");
    }
    assert!(m.get("x-header-remove-1").is_none() && m.get("x-header-remove-2").is_none());
    let m = edit(
        "/case-insensitivity",
        &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
    );
    assert_eq!(joined(&m, "X-Header-Set"), "header-set");
    assert_eq!(joined(&m, "X-Header-Add"), "original-val-add,header-add");
    assert!(m.get("X-Header-Remove").is_none());
}

/// The stream route a connection to Gateway `gw`:`port` with TLS server
/// name `name` takes, as the backend Service (namespace/name:port).
fn stream_backend(t: &RouteTable, gw: &str, port: u16, name: Option<&str>) -> Option<String> {
    let listener = t.streams.get(&address(t, gw, port))?.listener(name)?;
    let route = listener.route(name)?;
    match &route.backends.pick()?.target {
        Target::Upstream(u) => Some(format!("{}:{}", u.service, u.port)),
        Target::Invalid(_) => None,
    }
}

#[test]
fn tcp_routes_both_attach_and_the_oldest_takes_the_traffic() {
    let mut st = state("tcproute-multiple-routes-attachment");
    // The suite creates the newer route (in Go) a second after the older one.
    let newer = format!("apiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {{name: tcproute-attach-newer, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: tcp-multi-route-attach-gateway, sectionName: tcp}}]\n  rules: [{{backendRefs: [{{name: tcp-attach-backend-2, port: 3000}}]}}]\n");
    let (objects, errors) = parse_documents("newer.yaml", &newer);
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut st, objects);
    for (name, time) in [
        ("tcproute-attach-older", "2026-12-02T10:00:00Z"),
        ("tcproute-attach-newer", "2026-12-02T10:00:01Z"),
    ] {
        let key = (
            weir::model::gateway::StreamKind::Tcp,
            weir::model::ObjectRef::new(INFRA, name),
        );
        st.gateway
            .stream_routes
            .get_mut(&key)
            .expect(name)
            .meta
            .creation = Some(time.into());
    }
    let t = build(&st, &config());
    for route in ["tcproute-attach-older", "tcproute-attach-newer"] {
        let r = t
            .gateway_status
            .route("TCPRoute", INFRA, route)
            .expect(route);
        let accepted = condition(&r.parents[0].conditions, "Accepted");
        assert!(
            accepted.is_true() && accepted.reason == "Accepted",
            "{route}: {accepted:#?}"
        );
    }
    let s = t
        .gateway_status
        .gateway(INFRA, "tcp-multi-route-attach-gateway")
        .unwrap();
    let l = &s.listeners[0];
    assert_eq!(l.attached_routes, 2);
    assert_eq!(l.supported_kinds[0].kind, "TCPRoute");
    assert!(condition(&l.conditions, "Accepted").is_true());
    for _ in 0..100 {
        assert_eq!(
            stream_backend(&t, "tcp-multi-route-attach-gateway", 9310, None).as_deref(),
            Some("gateway-conformance-infra/tcp-attach-backend-1:3000")
        );
    }
}

#[test]
fn tls_routes_pass_through_by_server_name() {
    let t = table("tlsroute-simple-same-namespace");
    let r = t
        .gateway_status
        .route("TLSRoute", INFRA, "gateway-conformance-infra-test")
        .unwrap();
    let accepted = condition(&r.parents[0].conditions, "Accepted");
    assert!(
        accepted.is_true() && accepted.reason == "Accepted",
        "{accepted:#?}"
    );
    let gw = "gateway-tlsroute";
    let port = t.streams.get(&address(&t, gw, 443)).unwrap();
    assert_eq!(
        port.mode(),
        Some(weir::routes::streams::StreamMode::TlsPassthrough)
    );
    assert_eq!(
        stream_backend(&t, gw, 443, Some("abc.example.com")).as_deref(),
        Some("gateway-conformance-infra/tcp-backend:8443")
    );
    // Outside the listener's *.example.com, or a name the route does not list: nothing.
    assert_eq!(stream_backend(&t, gw, 443, Some("abc.example.org")), None);
    assert_eq!(stream_backend(&t, gw, 443, Some("other.example.com")), None);
    assert_eq!(stream_backend(&t, gw, 443, None), None);
}

#[test]
fn grpc_methods_become_paths_and_h2c_ports_speak_http2() {
    let extra = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
    - matches: [{{method: {{method: Ping}}}}]
      backendRefs: [{{name: infra-backend-v2, port: 8080}}]
    - matches: [{{method: {{service: a.B, method: Ping}}}}]
      backendRefs: [{{name: infra-backend-v3, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h2c, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /h2c}}}}], backendRefs: [{{name: infra-backend-v1, port: 8081}}]}}]
"#
    );
    let mut st = state("httproute-exact-path-matching");
    let (objects, errors) = parse_documents("grpc.yaml", &extra);
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut st, objects);
    let t = build(&st, &config());
    let post = |path: &str| send(&t, "same-namespace", None, Method::POST, path, &[]);
    // The exact service/method beats the method-only match; the method-only
    // match takes any service.
    assert_eq!(post("/a.B/Ping"), backend("infra-backend-v3"));
    assert_eq!(post("/x.Y/Ping"), backend("infra-backend-v2"));
    assert_eq!(post("/x.Y/Pong"), Status(404));
    let upstream = |path: &str| {
        let listener = t
            .gateway_at(address(&t, "same-namespace", 80))
            .unwrap()
            .listener(None)
            .unwrap();
        let headers = HeaderMap::new();
        let view = RequestView {
            method: &Method::POST,
            path,
            query: None,
            headers: &headers,
        };
        let routed = listener.table.route(None, &view).unwrap();
        match &routed.rule.action.backends.entries[0].target {
            Target::Upstream(u) => u.h2c,
            Target::Invalid(w) => panic!("{w}"),
        }
    };
    assert!(upstream("/a.B/Ping"), "GRPCRoute backends speak HTTP/2");
    assert!(upstream("/h2c/x"), "appProtocol kubernetes.io/h2c");
    assert!(!upstream("/one"), "a plain port speaks HTTP/1.1");
    let r = t.gateway_status.route("GRPCRoute", INFRA, "grpc").unwrap();
    assert!(condition(&r.parents[0].conditions, "Accepted").is_true());
}

#[test]
fn two_gateways_on_one_address_and_port_the_younger_is_port_unavailable() {
    let extra = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: first, namespace: {INFRA}, creationTimestamp: "2026-12-01T00:00:00Z"}}
spec:
  gatewayClassName: weir
  addresses: [{{value: 198.19.9.9}}]
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: second, namespace: {INFRA}, creationTimestamp: "2026-12-02T00:00:00Z"}}
spec:
  gatewayClassName: weir
  addresses: [{{value: 198.19.9.9}}]
  listeners: [{{name: http, port: 80, protocol: HTTP}}, {{name: other, port: 8080, protocol: HTTP}}]
"#
    );
    let mut st = state("httproute-simple-same-namespace");
    let (objects, errors) = parse_documents("two.yaml", &extra);
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut st, objects);
    let t = build(&st, &config());
    let first = t.gateway_status.gateway(INFRA, "first").unwrap();
    assert!(condition(&first.listeners[0].conditions, "Accepted").is_true());
    let second = t.gateway_status.gateway(INFRA, "second").unwrap();
    let accepted = condition(&second.listeners[0].conditions, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "PortUnavailable")
    );
    assert!(
        accepted
            .message
            .contains("Gateway gateway-conformance-infra/first"),
        "{accepted:#?}"
    );
    assert!(!condition(&second.listeners[0].conditions, "Programmed").is_true());
    // Its other port is its own.
    assert!(condition(&second.listeners[1].conditions, "Programmed").is_true());
    let l = t.gateway_at("198.19.9.9:80".parse().unwrap()).unwrap();
    assert_eq!(l.listeners.len(), 1);
    assert!(l.listeners[0].name.contains("/first/"));
}

#[test]
fn a_gateway_with_ipv6_and_ipv4_addresses_listens_on_both_and_reports_both() {
    let extra = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: dual, namespace: {INFRA}}}
spec:
  gatewayClassName: weir
  addresses: [{{value: "2001:db8:0:9::9"}}, {{value: 198.19.9.8}}, {{type: Hostname, value: gw.example}}]
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
"#
    );
    let mut st = state("httproute-simple-same-namespace");
    let (objects, errors) = parse_documents("dual.yaml", &extra);
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut st, objects);
    let t = build(&st, &config());
    for addr in ["[2001:db8:0:9::9]:80", "198.19.9.8:80"] {
        let l = t.gateway_at(addr.parse().unwrap());
        assert!(
            l.is_some_and(|l| l.listeners[0].name.contains("/dual/")),
            "{addr}"
        );
    }
    let status = t.gateway_status.gateway(INFRA, "dual").unwrap();
    let listed: Vec<&str> = status.addresses.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(listed, ["2001:db8:0:9::9", "198.19.9.8"]);
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("spec.addresses[2]: Hostname \"gw.example\" is not supported")),
        "{:?}",
        t.warnings
    );
}
