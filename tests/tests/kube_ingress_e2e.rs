//! End to end with the Kubernetes source and the ingress proxy: the real
//! agent (`--source kube --ingress`) against the fake apiserver in the node
//! namespace. An Ingress is served through the sk_lookup hand-off, the node
//! address lands in its status.loadBalancer, and a rule pointing at a
//! missing Service, and a TLS entry whose Secret is garbage, become Warning
//! Events on it. Needs root.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::json;
use weir_tests::{http_backend::HttpBackend, ingress::curl, Agent, FakeApiserver, Sandbox};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn wait(what: &str, agent: &Agent, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "timed out waiting for {what}; agent log:\n{}",
        agent.log_text()
    )
}

#[test]
fn serves_ingresses_from_the_api_and_reports_status_and_events() -> Result<()> {
    let sandbox = Sandbox::standard(1)?;
    let be1 = sandbox.pod("be1").ip;
    let _backend = HttpBackend::start(&sandbox.pod("be1").netns.name, "be1", 8080)?;
    let api = FakeApiserver::start_in_netns(&sandbox.node.name)?;
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}]}}),
    )?;
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "app", "namespace": "e2e"},
        "spec": {"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}))?;
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "app-1", "namespace": "e2e", "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [be1.to_string()], "conditions": {"ready": true}, "nodeName": "node-a"}]}))?;
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "weir"}, "spec": {"controller": "weir.dev/ingress-controller"}}),
    )?;
    // A kubernetes.io/tls Secret of garbage ("not a certificate", "not a key").
    api.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "bad-tls", "namespace": "e2e"},
        "data": {"tls.crt": "bm90IGEgY2VydGlmaWNhdGU=", "tls.key": "bm90IGEga2V5"}}),
    )?;
    api.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "e2e"},
        "spec": {"ingressClassName": "weir",
        "tls": [{"hosts": ["shop.example"], "secretName": "bad-tls"}],
        "rules": [{"host": "shop.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"name": "http"}}}},
            {"path": "/gone", "pathType": "Prefix", "backend": {"service": {"name": "nope", "port": {"number": 80}}}}
        ]}}]}}))?;
    let master = format!("--master={}", api.url());
    let agent = Agent::start_source(
        &sandbox.node.name,
        "kube",
        &sandbox.tag,
        &[&master, "--min-sync-period=100ms", "--ingress"],
    )?;
    let client = sandbox.pod("client").netns.name.clone();
    let get = |path: &str| {
        curl(
            &client,
            &[
                "-H",
                "Host: shop.example",
                &format!("http://{NODE_IP}{path}"),
            ],
        )
    };
    wait("shop.example served by be1", &agent, || {
        get("/").is_ok_and(|r| r.status == 200 && r.backend().is_ok_and(|b| b == "be1"))
    })?;
    assert_eq!(
        get("/gone")?.backend()?,
        "be1",
        "/gone falls back to the / rule"
    );

    wait("the node address in status.loadBalancer", &agent, || {
        api.status_patches().iter().any(|(path, body)| {
            path.ends_with("/namespaces/e2e/ingresses/shop/status")
                && body["status"]["loadBalancer"]["ingress"] == json!([{"ip": NODE_IP.to_string()}])
        })
    })?;
    wait("a Warning Event on the Ingress", &agent, || {
        api.events().iter().any(|e| {
            e["involvedObject"]["name"] == "shop"
                && e["type"] == "Warning"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Service e2e/nope not found"))
        })
    })?;
    wait("a Warning Event for the malformed Secret", &agent, || {
        api.events().iter().any(|e| {
            e["involvedObject"]["name"] == "shop"
                && e["type"] == "Warning"
                && e["message"].as_str().is_some_and(|m| {
                    m.starts_with(
                        "spec.tls[0]: Secret e2e/bad-tls: tls.crt holds no PEM certificate",
                    ) && m.ends_with("get the default certificate")
                })
        })
    })?;
    // The host is still served over plain HTTP.
    assert_eq!(get("/")?.backend()?, "be1");
    Ok(())
}
