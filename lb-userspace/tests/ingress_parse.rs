//! Ingress, IngressClass and kubernetes.io/tls Secret documents -> model.
use weir::{
    model::{IngressBackend, PathType, ServicePortRef},
    source::parse::{parse_documents, Object},
};

const GOOD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: web
spec:
  ingressClassName: weir
  defaultBackend: {service: {name: fallback, port: {number: 8080}}}
  tls:
    - hosts: [Shop.Example]
      secretName: shop-tls
  rules:
    - host: Shop.Example
      http:
        paths:
          - path: /api
            pathType: Prefix
            backend: {service: {name: api, port: {name: http}}}
          - path: /exact
            pathType: Exact
            backend: {service: {name: api, port: {number: 80}}}
    - http:
        paths:
          - pathType: ImplementationSpecific
            backend: {service: {name: any, port: {number: 80}}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: weir
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: weir.dev/ingress-controller}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-tls, namespace: web}
type: kubernetes.io/tls
data:
  tls.crt: Y2VydA==
  tls.key: a2V5
---
apiVersion: v1
kind: Secret
metadata: {name: opaque, namespace: web}
type: Opaque
data: {password: cGFzcw==}
"#;

#[test]
fn parses_ingress_class_and_tls_secret_and_ignores_other_secrets() {
    let (objects, errors) = parse_documents("good.yaml", GOOD);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(objects.len(), 3, "{objects:#?}");
    let Object::Ingress(ing) = &objects[0] else {
        panic!("{:?}", objects[0])
    };
    assert_eq!(ing.id.to_string(), "web/shop");
    assert_eq!(ing.class_name.as_deref(), Some("weir"));
    assert_eq!(
        ing.default_backend,
        Some(IngressBackend {
            service: "fallback".into(),
            port: ServicePortRef::Number(8080)
        })
    );
    assert_eq!(ing.tls[0].hosts, ["shop.example"]);
    assert_eq!(ing.tls[0].secret_name.as_deref(), Some("shop-tls"));
    assert_eq!(ing.rules[0].host, "shop.example");
    assert_eq!(ing.rules[0].paths[0].path_type, PathType::Prefix);
    assert_eq!(
        ing.rules[0].paths[0].backend.port,
        ServicePortRef::Name("http".into())
    );
    assert_eq!(ing.rules[0].paths[1].path_type, PathType::Exact);
    assert_eq!(ing.rules[1].host, "");
    assert_eq!(ing.rules[1].paths[0].path, "/", "an omitted path is /");
    let Object::IngressClass(class) = &objects[1] else {
        panic!("{:?}", objects[1])
    };
    assert_eq!(class.controller, "weir.dev/ingress-controller");
    assert!(class.is_default);
    let Object::TlsSecret(secret) = &objects[2] else {
        panic!("{:?}", objects[2])
    };
    assert_eq!(secret.id.to_string(), "web/shop-tls");
    assert_eq!(secret.cert_pem, b"cert");
    assert_eq!(secret.key_pem, b"key");
    assert!(
        !format!("{secret:?}").contains("key\""),
        "Debug hides the key"
    );
}

#[test]
fn structural_errors_name_the_object_and_field_and_spare_the_rest() {
    let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: resource, namespace: web}
spec:
  defaultBackend: {resource: {apiGroup: k8s.example.com, kind: Bucket, name: b}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: badtype, namespace: web}
spec:
  rules:
    - http: {paths: [{path: /, pathType: Regex, backend: {service: {name: a, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: noport, namespace: web}
spec:
  defaultBackend: {service: {name: a}}
---
apiVersion: v1
kind: Secret
metadata: {name: half, namespace: web}
type: kubernetes.io/tls
data: {tls.crt: Y2VydA==}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fine, namespace: web}
spec:
  defaultBackend: {service: {name: a, port: {number: 80}}}
"#;
    let (objects, errors) = parse_documents("bad.yaml", text);
    assert_eq!(objects.len(), 1, "{objects:#?}");
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            "bad.yaml document 0 (Ingress web/resource): spec.defaultBackend: resource backends are not supported (only service backends)",
            "bad.yaml document 1 (Ingress web/badtype): spec.rules[0].http.paths[0].pathType: unknown path type \"Regex\" (Exact, Prefix or ImplementationSpecific)",
            "bad.yaml document 2 (Ingress web/noport): spec.defaultBackend.service.port: missing",
            "bad.yaml document 3 (Secret web/half): data.tls.key: missing",
        ]
    );
}
