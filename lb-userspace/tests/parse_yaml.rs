//! `source::parse::parse_documents`: multi-document YAML -> model objects, and
//! per-document errors that name the file, document, object and field.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use weir::{
    model::{
        Endpoint, EndpointPort, EndpointSlice, Family, Node, ObjectRef, Protocol, Service,
        ServicePort, ServiceType,
    },
    source::parse::{parse_documents, DocumentError, Object},
};

const FILE: &str = "cluster/demo.yaml";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_ok(text: &str) -> Vec<Object> {
    let (objects, errors) = parse_documents(FILE, text);
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    objects
}

fn only_service(text: &str) -> Service {
    match parse_ok(text).as_slice() {
        [Object::Service(s)] => s.clone(),
        other => panic!("expected one Service, got {other:#?}"),
    }
}

fn only_slice(text: &str) -> EndpointSlice {
    match parse_ok(text).as_slice() {
        [Object::EndpointSlice(s)] => s.clone(),
        other => panic!("expected one EndpointSlice, got {other:#?}"),
    }
}

/// The single error of `text`, and the objects that were still returned.
fn one_error(text: &str) -> (DocumentError, Vec<Object>) {
    let (objects, mut errors) = parse_documents(FILE, text);
    assert_eq!(errors.len(), 1, "expected exactly one error: {errors:#?}");
    (errors.remove(0), objects)
}

fn names(objects: &[Object]) -> Vec<String> {
    objects
        .iter()
        .map(|o| match o {
            Object::Service(s) => format!("Service {}", s.id),
            Object::EndpointSlice(s) => format!("EndpointSlice {}", s.id),
            Object::Node(n) => format!("Node {}", n.name),
            other => format!("{other:?}"),
        })
        .collect()
}

const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
  labels:
    app: echo
  annotations:
    weir.dev/lb-algorithm: hash
spec:
  type: ClusterIP
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10]
  selector:
    app: echo
  ports:
  - name: http
    port: 80
    targetPort: web
    protocol: TCP
  - name: dns
    port: 53
    targetPort: 5353
    protocol: UDP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-abc12
  namespace: demo
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
- name: dns
  port: 5353
  protocol: UDP
endpoints:
- addresses: [198.18.1.1]
  conditions: {}
  nodeName: node-a
  zone: zone-1
- addresses: [198.18.1.2]
  conditions:
    ready: false
    serving: true
    terminating: true
- addresses: [198.18.1.3]
  conditions:
    ready: false
- addresses: [198.18.1.4]
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    topology.kubernetes.io/zone: zone-1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels:
      app: echo
  template:
    metadata:
      labels:
        app: echo
    spec:
      containers:
      - name: echo
        image: example/echo
"#;

#[test]
fn multi_document_file_yields_the_expected_objects() {
    let objects = parse_ok(GOOD);
    let expected_service = Service {
        id: ObjectRef::new("demo", "echo"),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![Ipv4Addr::new(198, 19, 0, 10).into()],
        ports: vec![
            ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                node_port: None,
                app_protocol: None,
            },
            ServicePort {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::Udp,
                node_port: None,
                app_protocol: None,
            },
        ],
        labels: labels(&[("app", "echo")]),
        annotations: labels(&[("weir.dev/lb-algorithm", "hash")]),
        ..Default::default()
    };
    let endpoint = |last: u8, ready, serving, terminating| Endpoint {
        address: Ipv4Addr::new(198, 18, 1, last).into(),
        ready,
        serving,
        terminating,
        node_name: None,
        zone: None,
        hint_zones: None,
    };
    let expected_slice = EndpointSlice {
        id: ObjectRef::new("demo", "echo-abc12"),
        service_name: "echo".into(),
        family: weir::model::Family::V4,
        ports: vec![
            EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            EndpointPort {
                name: "dns".into(),
                port: 5353,
                protocol: Protocol::Udp,
            },
        ],
        endpoints: vec![
            // Empty conditions: ready (missing `ready` is ready), serving defaults to ready.
            Endpoint {
                node_name: Some("node-a".into()),
                zone: Some("zone-1".into()),
                ..endpoint(1, true, true, false)
            },
            endpoint(2, false, true, true),
            // ready: false, serving missing: serving defaults to ready (false).
            endpoint(3, false, false, false),
            // No conditions at all.
            endpoint(4, true, true, false),
        ],
    };
    let expected_node = Node {
        name: "node-a".into(),
        labels: labels(&[("topology.kubernetes.io/zone", "zone-1")]),
        addresses: vec![],
    };
    assert_eq!(
        objects,
        vec![
            Object::Service(expected_service),
            Object::EndpointSlice(expected_slice),
            Object::Node(expected_node),
        ]
    );
}

#[test]
fn defaults_namespace_protocol_and_type() {
    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: plain
spec:
  clusterIP: 198.19.0.11
  ports:
  - port: 443
"#,
    );
    assert_eq!(svc.id, ObjectRef::new("default", "plain"));
    assert_eq!(svc.service_type, ServiceType::ClusterIp);
    assert_eq!(svc.cluster_ips, vec![Ipv4Addr::new(198, 19, 0, 11)]);
    assert_eq!(
        svc.ports,
        vec![ServicePort {
            name: String::new(),
            port: 443,
            protocol: Protocol::Tcp,
            node_port: None,
            app_protocol: None,
        }]
    );
    assert!(svc.labels.is_empty());
    assert!(svc.annotations.is_empty());
}

#[test]
fn service_types_and_node_ports() {
    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: np, namespace: demo}
spec:
  type: NodePort
  clusterIP: 198.19.0.12
  ports:
  - {name: http, port: 80, nodePort: 30080, protocol: TCP}
"#,
    );
    assert_eq!(svc.service_type, ServiceType::NodePort);
    assert_eq!(svc.ports[0].node_port, Some(30080));

    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec:
  type: ExternalName
  externalName: echo.example.com
"#,
    );
    assert_eq!(svc.service_type, ServiceType::ExternalName);
    assert!(svc.cluster_ips.is_empty());
    assert!(svc.ports.is_empty());
}

#[test]
fn headless_service_has_no_cluster_ips() {
    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec:
  clusterIP: None
  ports:
  - {name: http, port: 80}
"#,
    );
    assert!(svc.cluster_ips.is_empty());
    assert_eq!(svc.ports.len(), 1);

    // As the apiserver returns it: clusterIPs mirrors clusterIP.
    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec:
  clusterIP: None
  clusterIPs: [None]
  ports:
  - {name: http, port: 80}
"#,
    );
    assert!(svc.cluster_ips.is_empty());
}

#[test]
fn dual_stack_service_keeps_both_families_in_spec_order() {
    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: demo}
spec:
  clusterIP: 2001:db8::10
  clusterIPs: [2001:db8::10, 198.19.0.13]
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [198.18.9.1, "2001:db8:9::1"]
  ports:
  - {port: 80}
"#,
    );
    let v6: IpAddr = "2001:db8::10".parse().unwrap();
    assert_eq!(
        svc.cluster_ips,
        vec![v6, Ipv4Addr::new(198, 19, 0, 13).into()]
    );
    assert_eq!(svc.primary_family(), Family::V6);
    assert_eq!(
        svc.external_ips,
        vec![
            IpAddr::from([198, 18, 9, 1]),
            "2001:db8:9::1".parse::<IpAddr>().unwrap()
        ]
    );
    assert!(svc.problems.is_empty(), "{:?}", svc.problems);
}

#[test]
fn a_cluster_ip_of_the_wrong_family_is_skipped_and_named_while_the_other_family_stays() {
    // clusterIPs[1] is IPv4 where ipFamilies[1] says IPv6; a third address
    // repeats a family.
    let svc = only_service(
        r#"
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: demo}
spec:
  clusterIPs: [198.19.0.14, 198.19.0.15, 198.19.0.16]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {port: 80}
"#,
    );
    assert_eq!(svc.cluster_ips, vec![IpAddr::from([198, 19, 0, 14])]);
    assert_eq!(svc.problems.len(), 2, "{:?}", svc.problems);
    assert!(
        svc.problems[0].starts_with(
            "spec.clusterIPs[1]: 198.19.0.15 is an IPv4 address but spec.ipFamilies[1] is \"IPv6\""
        ),
        "{}",
        svc.problems[0]
    );
    assert!(
        svc.problems[1].starts_with("spec.clusterIPs[2]: a second IPv4 cluster IP (198.19.0.16)"),
        "{}",
        svc.problems[1]
    );
}

#[test]
fn ipv6_slices_are_converted_and_fqdn_slices_skipped_without_error() {
    let objects = parse_ok(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v6
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["2001:db8::1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-fqdn
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: FQDN
endpoints:
- addresses: [echo.example.com]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v4
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.1]
"#,
    );
    assert_eq!(
        names(&objects),
        ["EndpointSlice demo/echo-v6", "EndpointSlice demo/echo-v4"]
    );
    let Object::EndpointSlice(v6) = &objects[0] else {
        panic!("{objects:?}")
    };
    assert_eq!(v6.family, Family::V6);
    assert_eq!(
        v6.endpoints[0].address,
        "2001:db8::1".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn a_slice_address_of_the_other_family_fails_that_slice_only() {
    let (error, objects) = one_error(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v6-bad
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["2001:db8::1"]
- addresses: [198.18.1.2]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v4
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.1]
"#,
    );
    assert_eq!(names(&objects), ["EndpointSlice demo/echo-v4"]);
    assert_eq!(
        error.object.as_deref(),
        Some("EndpointSlice demo/echo-v6-bad")
    );
    assert_eq!(error.field.as_deref(), Some("endpoints[1].addresses[0]"));
    assert!(
        error
            .to_string()
            .contains("\"198.18.1.2\" is not an IPv6 address (addressType IPv6)"),
        "{error}"
    );
}

#[test]
fn slice_endpoint_uses_first_address_and_port_defaults() {
    let slice = only_slice(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-x
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- port: 8080
- name: all-ports
endpoints:
- addresses: [198.18.1.7, 198.18.1.8]
  conditions: {ready: true, serving: true, terminating: false}
"#,
    );
    assert_eq!(slice.service_name, "echo");
    // Unnamed port: empty name, TCP. A port without a number is left out.
    assert_eq!(
        slice.ports,
        vec![EndpointPort {
            name: String::new(),
            port: 8080,
            protocol: Protocol::Tcp,
        }]
    );
    assert_eq!(slice.endpoints.len(), 1);
    assert_eq!(slice.endpoints[0].address, Ipv4Addr::new(198, 18, 1, 7));
}

#[test]
fn empty_documents_and_unknown_kinds_are_skipped() {
    let objects = parse_ok(
        r#"
---
# only a comment
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: demo}
data: {a: b}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
"#,
    );
    assert_eq!(names(&objects), ["Node node-b"]);
    let (objects, errors) = parse_documents(FILE, "");
    assert!(objects.is_empty() && errors.is_empty());
}

/// A file of good and bad documents, interleaved.
const MIXED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: good-a, namespace: demo}
spec:
  clusterIP: 198.19.0.20
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: demo}
spec:
  clusterIP: 198.19.0.21
  ports: [{name: http, port: 70000}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-proto, namespace: demo}
spec:
  clusterIP: 198.19.0.22
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: ping, port: 7, protocol: ICMP}
---
apiVersion: v1
kind: Service
metadata: {name: bad-ip, namespace: demo}
spec:
  clusterIP: not-an-ip
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {namespace: demo}
spec:
  clusterIP: 198.19.0.23
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: good-a-1
  namespace: demo
  labels: {kubernetes.io/service-name: good-a}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.1]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orphan-1
  namespace: demo
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.2]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: wrong-type
  namespace: demo
  labels: {kubernetes.io/service-name: good-a}
addressType: IPv4
endpoints: 5
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
"#;

struct Expect {
    document: usize,
    object: Option<&'static str>,
    field: &'static str,
    reason_contains: &'static str,
}

#[test]
fn bad_documents_are_reported_and_good_ones_kept() {
    let (objects, errors) = parse_documents(FILE, MIXED);
    assert_eq!(
        names(&objects),
        [
            "Service demo/good-a",
            "EndpointSlice demo/good-a-1",
            "Node node-a",
        ]
    );
    let expected = [
        Expect {
            document: 1,
            object: Some("Service demo/bad-port"),
            field: "spec.ports[0].port",
            reason_contains: "70000",
        },
        Expect {
            document: 2,
            object: Some("Service demo/bad-proto"),
            field: "spec.ports[1].protocol",
            reason_contains: "ICMP",
        },
        Expect {
            document: 3,
            object: Some("Service demo/bad-ip"),
            field: "spec.clusterIP",
            reason_contains: "not-an-ip",
        },
        Expect {
            document: 4,
            // No name, so no label to show.
            object: None,
            field: "metadata.name",
            reason_contains: "missing",
        },
        Expect {
            document: 6,
            object: Some("EndpointSlice demo/orphan-1"),
            field: "metadata.labels.kubernetes.io/service-name",
            reason_contains: "missing",
        },
        Expect {
            document: 7,
            object: Some("EndpointSlice demo/wrong-type"),
            field: "endpoints",
            reason_contains: "invalid type",
        },
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, want) in errors.iter().zip(&expected) {
        assert_eq!(error.file, FILE, "{error:?}");
        assert_eq!(error.document, want.document, "{error:?}");
        assert_eq!(error.object.as_deref(), want.object, "{error:?}");
        assert_eq!(error.field.as_deref(), Some(want.field), "{error:?}");
        assert!(
            error.reason.contains(want.reason_contains),
            "reason of {error:?} should mention {:?}",
            want.reason_contains
        );
    }
}

#[test]
fn document_error_display() {
    let (error, objects) = one_error(
        r#"
apiVersion: v1
kind: Service
metadata: {name: good, namespace: demo}
spec:
  clusterIP: 198.19.0.30
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: demo}
spec:
  clusterIP: 198.19.0.31
  ports: [{port: 70000}]
"#,
    );
    assert_eq!(names(&objects), ["Service demo/good"]);
    assert_eq!(
        error.to_string(),
        "cluster/demo.yaml document 1 (Service demo/bad-port): spec.ports[0].port: port 70000 out of range 1-65535"
    );
}

#[test]
fn port_zero_and_negative_are_out_of_range() {
    for bad in ["0", "-1"] {
        let (error, objects) = one_error(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: p, namespace: demo}}\nspec:\n  clusterIP: 198.19.0.32\n  ports: [{{port: {bad}}}]\n"
        ));
        assert!(objects.is_empty());
        assert_eq!(error.field.as_deref(), Some("spec.ports[0].port"));
        assert_eq!(error.object.as_deref(), Some("Service demo/p"));
    }
}

#[test]
fn invalid_endpoint_address_names_the_field() {
    let (error, objects) = one_error(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-bad
  namespace: demo
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
endpoints:
- addresses: [198.18.1.1]
- addresses: [198.18.1.999]
"#,
    );
    assert!(objects.is_empty());
    assert_eq!(error.document, 0);
    assert_eq!(error.object.as_deref(), Some("EndpointSlice demo/echo-bad"));
    assert_eq!(error.field.as_deref(), Some("endpoints[1].addresses[0]"));
}

#[test]
fn wrong_field_type_in_a_service_names_the_path() {
    let (error, _) = one_error(
        r#"
apiVersion: v1
kind: Service
metadata: {name: typed, namespace: demo}
spec:
  clusterIP: 198.19.0.33
  ports:
  - {name: http, port: eighty}
"#,
    );
    assert_eq!(error.object.as_deref(), Some("Service demo/typed"));
    assert_eq!(error.field.as_deref(), Some("spec.ports[0].port"));
}

#[test]
fn missing_kind_or_api_version_is_an_error() {
    let (error, _) = one_error("kind: Service\nmetadata: {name: x, namespace: demo}\n");
    assert_eq!(error.field.as_deref(), Some("apiVersion"));
    assert_eq!(error.object.as_deref(), Some("Service demo/x"));
    let (error, _) = one_error("apiVersion: v1\nmetadata: {name: x, namespace: demo}\n");
    assert_eq!(error.field.as_deref(), Some("kind"));
}

#[test]
fn yaml_syntax_error_keeps_the_documents_before_it() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: before, namespace: demo}
spec:
  clusterIP: 198.19.0.40
  ports: [{port: 80}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: demo
spec:
  ports: [{port: 80}]
"#;
    let (error, objects) = one_error(text);
    assert_eq!(names(&objects), ["Service demo/before", "Node node-a"]);
    assert_eq!(error.file, FILE);
    assert_eq!(error.document, 2);
    assert_eq!(error.object, None);
    assert_eq!(error.field, None);
    assert!(error.reason.starts_with("invalid YAML"), "{error}");
}

const LB_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
ANNOTATIONS
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.30
  ports:
  - port: 80
    nodePort: 30080
RANGES
";

fn lb_service(annotations: &str, ranges: &str) -> String {
    LB_SERVICE
        .replace("ANNOTATIONS\n", annotations)
        .replace("RANGES\n", ranges)
}

#[test]
fn load_balancer_source_ranges_come_from_the_spec_or_else_the_annotation() {
    let spec = only_service(&lb_service(
        "",
        "  loadBalancerSourceRanges:\n  - 198.18.50.0/24\n  - 198.18.60.7/32\n  - 2001:db8::/32\n",
    ));
    assert_eq!(
        spec.source_ranges,
        vec![
            (Ipv4Addr::new(198, 18, 50, 0).into(), 24),
            (Ipv4Addr::new(198, 18, 60, 7).into(), 32),
            ("2001:db8::".parse().unwrap(), 32)
        ]
    );
    let annotated = only_service(&lb_service(
        "  annotations:\n    service.beta.kubernetes.io/load-balancer-source-ranges: \"198.18.70.0/24, 198.18.80.0/28\"\n",
        "",
    ));
    assert_eq!(
        annotated.source_ranges,
        vec![
            (Ipv4Addr::new(198, 18, 70, 0).into(), 24),
            (Ipv4Addr::new(198, 18, 80, 0).into(), 28)
        ]
    );
    assert!(only_service(&lb_service("", "")).source_ranges.is_empty());
}

#[test]
fn an_invalid_source_range_fails_the_service_closed_and_names_the_entry() {
    for bad in ["198.18.50.0", "198.18.50.0/33", "not-a-cidr/8"] {
        let text = format!(
            "{}---\n{}",
            lb_service("", &format!("  loadBalancerSourceRanges:\n  - 198.18.1.0/24\n  - {bad}\n")),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: other\nspec:\n  clusterIP: 198.19.0.31\n  ports:\n  - port: 80\n"
        );
        let (error, objects) = one_error(&text);
        assert_eq!(error.object.as_deref(), Some("Service shop/web"), "{bad}");
        assert_eq!(
            error.field.as_deref(),
            Some("spec.loadBalancerSourceRanges[1]"),
            "{bad}"
        );
        // The other service in the file is still there.
        assert_eq!(names(&objects), vec!["Service default/other"], "{bad}");
    }
}
