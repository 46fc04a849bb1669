//! The L7 routing table, built from YAML as a user writes it. The cases
//! mirror the Kubernetes ingress-controller-conformance features:
//! default_backend, host_rules, path_rules, ingress_class, load_balancing.
use std::{net::SocketAddr, sync::Arc};

use weir::{
    model::{ClusterState, PathType},
    routes::{build, rule::Target, RequestView, RouteConfig, RouteTable, Upstream},
    source::{dir::insert_all, parse::parse_documents},
};

const CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: weir
spec:
  controller: weir.dev/ingress-controller
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: other
spec:
  controller: example.com/other
"#;

/// Services a, b, c, d in namespace "web", each with port 80 named "http"
/// (target 8080) and one ready endpoint 198.18.1.1x.
fn services() -> String {
    let mut y = String::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        y.push_str(&format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: web}}
spec:
  clusterIP: 198.19.0.{ip}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: web
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - {{addresses: ["198.18.1.{ep}"], conditions: {{ready: true}}}}
"#,
            ip = 10 + i,
            ep = 11 + i
        ));
    }
    y
}

fn state(extra: &str) -> ClusterState {
    let text = format!("{CLASS}{}\n---\n{extra}", services());
    let (objects, errors) = parse_documents("test.yaml", &text);
    assert!(errors.is_empty(), "{errors:#?}");
    let mut state = ClusterState::default();
    insert_all(&mut state, objects);
    state
}

fn table(extra: &str) -> RouteTable {
    build(&state(extra), &RouteConfig::default())
}

/// Which rule a GET request matched.
#[derive(Debug, PartialEq)]
enum Matched {
    Path {
        host: String,
        path_type: PathType,
        path: String,
    },
    DefaultBackend,
}

/// The upstream and rule for a GET of `path` at `host`, with no other headers.
fn route(t: &RouteTable, host: Option<&str>, path: &str) -> Option<(Arc<Upstream>, Matched)> {
    route_with_origin(t, host, path).map(|(u, m, _)| (u, m))
}

fn route_with_origin(
    t: &RouteTable,
    host: Option<&str>,
    path: &str,
) -> Option<(Arc<Upstream>, Matched, String)> {
    let headers = http::HeaderMap::new();
    let view = RequestView {
        method: &http::Method::GET,
        path,
        query: None,
        headers: &headers,
    };
    let routed = t.route(host, &view)?;
    let Target::Upstream(u) = &routed.rule.action.backends.entries[0].target else {
        panic!("an Ingress rule without an upstream");
    };
    let m = if routed.default {
        Matched::DefaultBackend
    } else {
        Matched::Path {
            host: routed.host.clone(),
            path_type: match routed.rule.matcher.path.kind() {
                "Exact" => PathType::Exact,
                "Prefix" => PathType::Prefix,
                _ => PathType::ImplementationSpecific,
            },
            path: match routed.rule.matcher.path.text().as_str() {
                "/" if routed.rule.matcher.path.kind() == "Prefix" => String::new(),
                p => p.to_string(),
            },
        }
    };
    Some((
        u.clone(),
        m,
        routed.rule.action.origin.object.name.to_string(),
    ))
}

/// The service that serves host + path, or None for 404.
fn served(t: &RouteTable, host: &str, path: &str) -> Option<String> {
    route(t, Some(host), path).map(|(u, _)| u.service.name.to_string())
}

fn ingress(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: web}}\nspec:\n{spec}"
    )
}

fn backend(svc: &str) -> String {
    format!("{{service: {{name: {svc}, port: {{number: 80}}}}}}")
}

#[test]
fn default_backend_serves_every_request_that_matches_no_rule() {
    let t = table(&ingress(
        "default",
        &format!(
            "  ingressClassName: weir\n  defaultBackend: {}\n",
            backend("a")
        ),
    ));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    for (host, path) in [("x.example", "/"), ("y", "/some/path"), ("", "/")] {
        let (u, m) = route(&t, Some(host), path).expect("default backend");
        assert_eq!(u.service.name, "a".into());
        assert_eq!(m, Matched::DefaultBackend);
    }
    let (u, _) = route(&t, None, "/").expect("no host");
    assert_eq!(
        u.endpoints,
        vec!["198.18.1.11:8080".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn host_rules_match_exact_hosts_and_wildcards_of_one_label() {
    let t = table(&ingress(
        "hosts",
        &format!(
            r#"  ingressClassName: weir
  rules:
    - host: foo.bar.com
      http: {{paths: [{{path: /, pathType: Prefix, backend: {a}}}]}}
    - host: "*.foo.com"
      http: {{paths: [{{path: /, pathType: Prefix, backend: {b}}}]}}
"#,
            a = backend("a"),
            b = backend("b")
        ),
    ));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(served(&t, "foo.bar.com", "/").as_deref(), Some("a"));
    assert_eq!(served(&t, "bar.foo.com", "/x").as_deref(), Some("b"));
    assert_eq!(served(&t, "baz.bar.foo.com", "/"), None, "two labels");
    assert_eq!(served(&t, "foo.com", "/"), None, "no label");
    assert_eq!(served(&t, "other.com", "/"), None);
}

#[test]
fn exact_host_beats_wildcard_which_beats_rules_without_host() {
    let t = table(&ingress(
        "prec",
        &format!(
            r#"  ingressClassName: weir
  rules:
    - http: {{paths: [{{path: /, pathType: Prefix, backend: {c}}}]}}
    - host: "*.foo.com"
      http: {{paths: [{{path: /, pathType: Prefix, backend: {b}}}]}}
    - host: www.foo.com
      http: {{paths: [{{path: /, pathType: Prefix, backend: {a}}}]}}
"#,
            a = backend("a"),
            b = backend("b"),
            c = backend("c")
        ),
    ));
    assert_eq!(served(&t, "www.foo.com", "/").as_deref(), Some("a"));
    assert_eq!(served(&t, "api.foo.com", "/").as_deref(), Some("b"));
    assert_eq!(served(&t, "elsewhere.org", "/").as_deref(), Some("c"));
}

fn path_table() -> RouteTable {
    table(&ingress(
        "paths",
        &format!(
            r#"  ingressClassName: weir
  defaultBackend: {d}
  rules:
    - host: p.example
      http:
        paths:
          - {{path: /foo, pathType: Exact, backend: {a}}}
          - {{path: /foo, pathType: Prefix, backend: {b}}}
          - {{path: /aaa/bbb/, pathType: Prefix, backend: {c}}}
          - {{path: /aaa, pathType: Prefix, backend: {a}}}
          - {{path: /impl, pathType: ImplementationSpecific, backend: {b}}}
"#,
            a = backend("a"),
            b = backend("b"),
            c = backend("c"),
            d = backend("d")
        ),
    ))
}

#[test]
fn exact_paths_are_case_sensitive_and_trailing_slash_strict_and_beat_prefix() {
    let t = path_table();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let (u, m) = route(&t, Some("p.example"), "/foo").unwrap();
    assert_eq!(u.service.name, "a".into());
    assert!(matches!(
        m,
        Matched::Path {
            path_type: PathType::Exact,
            ..
        }
    ));
    // /foo/ is not the Exact path; the Prefix /foo takes it.
    assert_eq!(served(&t, "p.example", "/foo/").as_deref(), Some("b"));
    // Case-sensitive: /FOO matches neither and goes to the default backend.
    assert_eq!(served(&t, "p.example", "/FOO").as_deref(), Some("d"));
}

#[test]
fn prefix_paths_match_whole_elements_and_the_longest_wins() {
    let t = path_table();
    for (path, svc) in [
        ("/foo/bar", "b"),
        ("/foobar", "d"),
        ("/aaa/bbb", "c"),
        ("/aaa/bbb/", "c"),
        ("/aaa/bbb/ccc", "c"),
        ("/aaa/bbbxyz", "a"),
        ("/aaa", "a"),
        ("/aaa/", "a"),
        ("/aa", "d"),
        ("/", "d"),
    ] {
        assert_eq!(
            served(&t, "p.example", path).as_deref(),
            Some(svc),
            "{path}"
        );
    }
}

#[test]
fn implementation_specific_is_a_plain_string_prefix() {
    let t = path_table();
    assert_eq!(served(&t, "p.example", "/impl").as_deref(), Some("b"));
    assert_eq!(
        served(&t, "p.example", "/implementation").as_deref(),
        Some("b")
    );
    assert_eq!(served(&t, "p.example", "/im").as_deref(), Some("d"));
}

#[test]
fn a_prefix_of_slash_matches_everything() {
    let t = table(&ingress(
        "root",
        &format!(
            "  ingressClassName: weir\n  rules:\n    - http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n",
            backend("a")
        ),
    ));
    for path in ["/", "/x", "/x/y/z"] {
        assert_eq!(served(&t, "any", path).as_deref(), Some("a"), "{path}");
    }
}

#[test]
fn ingresses_of_another_class_or_without_class_are_ignored() {
    let extra = format!(
        "{}\n---\n{}\n---\n{}",
        ingress(
            "mine",
            &format!("  ingressClassName: weir\n  rules:\n    - host: mine.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n", backend("a"))
        ),
        ingress(
            "theirs",
            &format!("  ingressClassName: other\n  rules:\n    - host: theirs.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n", backend("b"))
        ),
        ingress(
            "classless",
            &format!("  rules:\n    - host: none.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n", backend("c"))
        ),
    );
    let t = table(&extra);
    assert_eq!(served(&t, "mine.example", "/").as_deref(), Some("a"));
    assert_eq!(served(&t, "theirs.example", "/"), None);
    assert_eq!(served(&t, "none.example", "/"), None);
    // Once Weir's class is the default, the classless Ingress is served too.
    let default_class = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: weir\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: weir.dev/ingress-controller}\n";
    let t = table(&format!("{extra}\n---\n{default_class}"));
    assert_eq!(served(&t, "none.example", "/").as_deref(), Some("c"));
    assert_eq!(served(&t, "theirs.example", "/"), None);
}

#[test]
fn the_legacy_class_annotation_selects_too() {
    let t = table(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: legacy\n  namespace: web\n  annotations: {{kubernetes.io/ingress.class: weir}}\nspec:\n  defaultBackend: {}\n",
        backend("a")
    ));
    assert_eq!(served(&t, "x", "/").as_deref(), Some("a"));
}

#[test]
fn service_ports_by_number_or_name_resolve_to_target_ports_of_ready_endpoints() {
    let mut s = state(&ingress(
        "ports",
        r#"  ingressClassName: weir
  rules:
    - host: n.example
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: multi, port: {name: admin}}}}]}
    - host: m.example
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: multi, port: {number: 80}}}}]}
"#,
    ));
    let (objects, errors) = parse_documents(
        "multi.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: web}
spec:
  clusterIP: 198.19.0.50
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: multi-1, namespace: web, labels: {kubernetes.io/service-name: multi}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
endpoints:
  - {addresses: ["198.18.1.21"], conditions: {ready: true}}
  - {addresses: ["198.18.1.22"], conditions: {ready: false}}
  - {addresses: ["198.18.1.23"]}
"#,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut s, objects);
    let t = build(&s, &RouteConfig::default());
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let (admin, _) = route(&t, Some("n.example"), "/").unwrap();
    let eps = |v: &[&str]| {
        v.iter()
            .map(|s| s.parse::<SocketAddr>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        admin.endpoints,
        eps(&["198.18.1.21:9090", "198.18.1.23:9090"])
    );
    let (http, _) = route(&t, Some("m.example"), "/").unwrap();
    assert_eq!(
        http.endpoints,
        eps(&["198.18.1.21:8080", "198.18.1.23:8080"])
    );
}

#[test]
fn load_balancing_rotates_over_the_endpoints_and_retries_the_others() {
    let mut s = state(&ingress(
        "lb",
        "  ingressClassName: weir\n  defaultBackend: {service: {name: three, port: {number: 80}}}\n",
    ));
    let (objects, _) = parse_documents(
        "three.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: three, namespace: web}
spec: {clusterIP: 198.19.0.60, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: three-1, namespace: web, labels: {kubernetes.io/service-name: three}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
  - {addresses: ["198.18.1.31"]}
  - {addresses: ["198.18.1.32"]}
  - {addresses: ["198.18.1.33"]}
"#,
    );
    insert_all(&mut s, objects);
    let t = build(&s, &RouteConfig::default());
    let (u, _) = route(&t, None, "/").unwrap();
    let mut firsts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let order: Vec<SocketAddr> = u.attempt_order().collect();
        assert_eq!(order.len(), 3, "every endpoint is tried once");
        *firsts.entry(order[0]).or_insert(0) += 1;
    }
    assert_eq!(
        firsts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
}

#[test]
fn bad_backends_and_paths_skip_only_their_rule_and_name_the_ingress() {
    let t = table(&ingress(
        "broken",
        &format!(
            r#"  ingressClassName: weir
  rules:
    - host: ok.example
      http:
        paths:
          - {{path: /good, pathType: Prefix, backend: {a}}}
          - {{path: /missing, pathType: Prefix, backend: {{service: {{name: nope, port: {{number: 80}}}}}}}}
          - {{path: /badport, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 81}}}}}}}}
          - {{path: relative, pathType: Prefix, backend: {a}}}
    - host: "bad host!"
      http: {{paths: [{{path: /, pathType: Prefix, backend: {a}}}]}}
"#,
            a = backend("a")
        ),
    ));
    assert_eq!(served(&t, "ok.example", "/good").as_deref(), Some("a"));
    assert_eq!(served(&t, "ok.example", "/missing"), None);
    let w = t.warnings.join("\n");
    assert_eq!(t.warnings.len(), 4, "{w}");
    for needle in [
        "Ingress web/broken: spec.rules[0].http.paths[1].backend: Service web/nope not found",
        "spec.rules[0].http.paths[2].backend: Service web/a has no TCP port 81",
        "spec.rules[0].http.paths[3].path: invalid path \"relative\"",
        "spec.rules[1].host: invalid host \"bad host!\"",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in:\n{w}");
    }
    // The same problems by object, for Events on the Ingress.
    assert_eq!(t.problems.len(), 4);
    assert!(t
        .problems
        .iter()
        .all(|(id, _)| id.to_string() == "web/broken"));
    assert_eq!(
        t.problems[0].1,
        "spec.rules[0].http.paths[1].backend: Service web/nope not found; path skipped"
    );
}

#[test]
fn the_first_ingress_wins_a_conflict_and_the_other_is_reported() {
    let rule = |svc: &str| {
        format!(
            "  ingressClassName: weir\n  rules:\n    - host: same.example\n      http: {{paths: [{{path: /x, pathType: Prefix, backend: {}}}]}}\n",
            backend(svc)
        )
    };
    let t = table(&format!(
        "{}\n---\n{}",
        ingress("one", &rule("a")),
        ingress("two", &rule("b"))
    ));
    assert_eq!(served(&t, "same.example", "/x").as_deref(), Some("a"));
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains("Ingress web/two") && t.warnings[0].contains("web/one"));
}

#[test]
fn hosts_of_several_ingresses_merge() {
    let rule = |path: &str, svc: &str| {
        format!(
            "  ingressClassName: weir\n  rules:\n    - host: merge.example\n      http: {{paths: [{{path: {path}, pathType: Prefix, backend: {}}}]}}\n",
            backend(svc)
        )
    };
    let t = table(&format!(
        "{}\n---\n{}",
        ingress("one", &rule("/a", "a")),
        ingress("two", &rule("/b", "b"))
    ));
    assert_eq!(served(&t, "merge.example", "/a").as_deref(), Some("a"));
    assert_eq!(served(&t, "merge.example", "/b").as_deref(), Some("b"));
}

fn cert(hosts: &[&str]) -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .expect("generating a certificate");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn secret(name: &str, crt: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: web}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

#[test]
fn tls_certificates_are_chosen_by_host_and_bad_secrets_are_reported() {
    let (crt_a, key_a) = cert(&["a.example"]);
    let (crt_w, key_w) = cert(&["*.wild.example"]);
    let (crt_b, _) = cert(&["b.example"]);
    let objects = [
        secret("a-tls", &crt_a, &key_a),
        secret("wild-tls", &crt_w, &key_w),
        // The key of another certificate: a mismatch.
        secret("mismatch-tls", &crt_b, &key_a),
        secret("garbage-tls", "not a certificate", "not a key"),
        ingress(
            "tls",
            &format!(
                r#"  ingressClassName: weir
  tls:
    - {{hosts: [a.example], secretName: a-tls}}
    - {{hosts: ["*.wild.example"], secretName: wild-tls}}
    - {{hosts: [b.example], secretName: mismatch-tls}}
    - {{hosts: [c.example], secretName: garbage-tls}}
    - {{hosts: [d.example], secretName: absent-tls}}
  defaultBackend: {}
"#,
                backend("a")
            ),
        ),
    ];
    let t = table(&objects.join("\n---\n"));
    assert!(t.cert("a.example").is_some());
    assert!(t.cert("A.Example").is_some(), "SNI is case-insensitive");
    assert!(t.cert("x.wild.example").is_some());
    assert!(t.cert("y.x.wild.example").is_none());
    assert!(!std::sync::Arc::ptr_eq(
        t.cert("a.example").unwrap(),
        t.cert("x.wild.example").unwrap()
    ));
    for host in ["b.example", "c.example", "d.example"] {
        assert!(t.cert(host).is_none(), "{host}");
    }
    let w = t.warnings.join("\n");
    assert_eq!(t.warnings.len(), 3, "{w}");
    assert!(
        w.contains("Secret web/mismatch-tls: tls.key does not belong to the certificate"),
        "{w}"
    );
    assert!(
        w.contains("Secret web/garbage-tls: tls.crt holds no PEM certificate"),
        "{w}"
    );
    assert!(
        w.contains("Secret web/absent-tls (kubernetes.io/tls) not found"),
        "{w}"
    );
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
    let mut s = state(&ingress(
        "local",
        "  ingressClassName: weir\n  defaultBackend: {service: {name: loc, port: {number: 80}}}\n",
    ));
    let (objects, errors) = parse_documents(
        "loc.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: loc, namespace: web}
spec: {clusterIP: 198.19.0.70, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: loc-1, namespace: web, labels: {kubernetes.io/service-name: loc}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
  - {addresses: ["198.18.1.41"], nodeName: node-a}
  - {addresses: ["198.18.1.42"], nodeName: node-b}
"#,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut s, objects);
    let t = build(
        &s,
        &RouteConfig {
            node_name: "node-a".into(),
            ..Default::default()
        },
    );
    let (u, _) = route(&t, None, "/").unwrap();
    assert_eq!(
        u.endpoints,
        vec!["198.18.1.41:8080".parse::<SocketAddr>().unwrap()]
    );
}

/// One path rule line for `paths:` (path, type, service).
fn path_rule(path: &str, path_type: &str, svc: &str) -> String {
    format!(
        "          - {{path: {path}, pathType: {path_type}, backend: {}}}\n",
        backend(svc)
    )
}

/// An Ingress of class weir with rules for host `prec.example`.
fn host_ingress(name: &str, paths: &[(&str, &str, &str)]) -> String {
    let mut spec =
        "  ingressClassName: weir\n  rules:\n    - host: prec.example\n      http:\n        paths:\n"
            .to_string();
    for (path, path_type, svc) in paths {
        spec.push_str(&path_rule(path, path_type, svc));
    }
    ingress(name, &spec)
}

/// Asserts where each (path, service) pair is routed on prec.example (None: 404).
fn assert_routes(t: &RouteTable, cases: &[(&str, Option<&str>)]) {
    for (path, want) in cases {
        assert_eq!(
            served(t, "prec.example", path).as_deref(),
            *want,
            "prec.example{path}"
        );
    }
}

#[test]
fn overlapping_prefixes_pick_the_longest_by_whole_elements() {
    let t = table(&host_ingress(
        "overlap",
        &[("/app", "Prefix", "a"), ("/app/v2", "Prefix", "b")],
    ));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_routes(
        &t,
        &[
            ("/app/v2/x", Some("b")),
            ("/app/v2", Some("b")),
            ("/app/v2/", Some("b")),
            ("/app/v3", Some("a")),
            // /app/v2 matches whole elements only: /app/v20 is /app's.
            ("/app/v20", Some("a")),
            ("/app", Some("a")),
            ("/app/", Some("a")),
            ("/apps", None),
            ("/", None),
        ],
    );
}

#[test]
fn exact_beats_prefix_for_the_same_path_only() {
    let t = table(&host_ingress(
        "exact",
        // The Prefix rule is listed first: order in the object does not matter.
        &[("/app", "Prefix", "a"), ("/app", "Exact", "c")],
    ));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_routes(
        &t,
        &[
            ("/app", Some("c")),
            ("/app/", Some("a")),
            ("/app/x", Some("a")),
            ("/APP", None),
        ],
    );
}

#[test]
fn overlapping_rules_of_two_ingresses_for_one_host_merge_by_precedence() {
    // The same four rules split over two Ingresses, either way round, route
    // as one Ingress with all of them would: longest path first, Exact
    // before Prefix, whichever Ingress defines them.
    let one = [("/app", "Prefix", "a"), ("/app/v2", "Exact", "d")];
    let two = [("/app/v2", "Prefix", "b"), ("/app", "Exact", "c")];
    let cases = [
        ("/app/v2/x", Some("b")),
        ("/app/v2", Some("d")),
        ("/app/v2/", Some("b")),
        ("/app/v3", Some("a")),
        ("/app", Some("c")),
        ("/app/x", Some("a")),
        ("/other", None),
    ];
    for (first, second) in [(&one, &two), (&two, &one)] {
        let t = table(&format!(
            "{}\n---\n{}",
            host_ingress("first", first),
            host_ingress("second", second)
        ));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_routes(&t, &cases);
    }
    let all: Vec<_> = one.iter().chain(&two).copied().collect();
    assert_routes(&table(&host_ingress("all", &all)), &cases);
    // Each route names the Ingress that defined it.
    let t = table(&format!(
        "{}\n---\n{}",
        host_ingress("first", &one),
        host_ingress("second", &two)
    ));
    let by = |path: &str| route_with_origin(&t, Some("prec.example"), path).unwrap().2;
    assert_eq!(by("/app/v2/x"), "second");
    assert_eq!(by("/app/v3"), "first");
}

#[test]
fn only_the_default_class_annotation_set_to_true_selects_classless_ingresses() {
    let classless = ingress(
        "classless",
        &format!("  defaultBackend: {}\n", backend("a")),
    );
    let weir_class = |annotation: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: weir\n{annotation}spec: {{controller: weir.dev/ingress-controller}}\n"
        )
    };
    let default = |v: &str| {
        format!("  annotations: {{ingressclass.kubernetes.io/is-default-class: \"{v}\"}}\n")
    };
    for (annotation, served_) in [
        (String::new(), false),
        (default("false"), false),
        (default("true"), true),
    ] {
        let t = table(&format!("{classless}\n---\n{}", weir_class(&annotation)));
        assert_eq!(
            served(&t, "x", "/").is_some(),
            served_,
            "annotation {annotation:?}"
        );
    }
    // Another controller's default class does not make Weir serve them.
    let other_default = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: other\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: example.com/other}\n";
    let t = table(&format!("{classless}\n---\n{other_default}"));
    assert_eq!(served(&t, "x", "/"), None);
}

#[test]
fn the_class_field_beats_the_legacy_annotation_which_beats_the_default() {
    let with = |name: &str, annotation: &str, class: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: web\n  annotations: {{kubernetes.io/ingress.class: {annotation}}}\nspec:\n{class}  rules:\n    - host: {name}.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n",
            backend("a")
        )
    };
    let default_class = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: weir\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: weir.dev/ingress-controller}\n";
    let t = table(
        &[
            // The annotation names another class: not Weir's, although Weir's is the default.
            with("legacy-other", "other", ""),
            // spec.ingressClassName wins over the annotation, either way.
            with("field-weir", "other", "  ingressClassName: weir\n"),
            with("field-other", "weir", "  ingressClassName: other\n"),
            default_class.to_string(),
        ]
        .join("\n---\n"),
    );
    assert_eq!(served(&t, "legacy-other.example", "/"), None);
    assert_eq!(served(&t, "field-weir.example", "/").as_deref(), Some("a"));
    assert_eq!(served(&t, "field-other.example", "/"), None);
}

/// Service `cond` with one slice of these endpoints: (last octet, ready, serving, terminating).
fn conditions_table(endpoints: &[(u8, bool, bool, bool)]) -> RouteTable {
    let mut s = state(&ingress(
        "cond",
        "  ingressClassName: weir\n  defaultBackend: {service: {name: cond, port: {number: 80}}}\n",
    ));
    let mut y = "apiVersion: v1\nkind: Service\nmetadata: {name: cond, namespace: web}\nspec: {clusterIP: 198.19.0.80, ports: [{port: 80, targetPort: 8080}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: cond-1, namespace: web, labels: {kubernetes.io/service-name: cond}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n".to_string();
    for (last, ready, serving, terminating) in endpoints {
        y.push_str(&format!(
            "  - {{addresses: [\"198.18.1.{last}\"], conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}}}\n"
        ));
    }
    y.push_str("---\n");
    let (objects, errors) = parse_documents("cond.yaml", &y);
    assert!(errors.is_empty(), "{errors:#?}");
    insert_all(&mut s, objects);
    build(&s, &RouteConfig::default())
}

fn endpoints_of(t: &RouteTable) -> Vec<String> {
    let (u, _) = route(t, None, "/").expect("default backend");
    u.endpoints.iter().map(ToString::to_string).collect()
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    const READY: (bool, bool, bool) = (true, true, false);
    const NOT_READY: (bool, bool, bool) = (false, false, false);
    const SERVING_TERMINATING: (bool, bool, bool) = (false, true, true);
    const TERMINATING: (bool, bool, bool) = (false, false, true);
    let t = |eps: &[(u8, (bool, bool, bool))]| {
        conditions_table(
            &eps.iter()
                .map(|(n, (r, s, te))| (*n, *r, *s, *te))
                .collect::<Vec<_>>(),
        )
    };
    // A ready endpoint: the others are never used.
    let all = t(&[
        (51, READY),
        (52, NOT_READY),
        (53, SERVING_TERMINATING),
        (54, TERMINATING),
    ]);
    assert_eq!(endpoints_of(&all), ["198.18.1.51:8080"]);
    // None ready: the serving-and-terminating one, not the one that stopped serving.
    let fallback = t(&[
        (52, NOT_READY),
        (53, SERVING_TERMINATING),
        (54, TERMINATING),
    ]);
    assert_eq!(endpoints_of(&fallback), ["198.18.1.53:8080"]);
    // Nothing usable: no endpoints (the proxy answers 503).
    let none = t(&[(52, NOT_READY), (54, TERMINATING)]);
    assert!(endpoints_of(&none).is_empty());
}
