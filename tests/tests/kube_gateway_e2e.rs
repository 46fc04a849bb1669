//! End to end with the Kubernetes source and the Gateway API: the real agent
//! (`--source kube --ingress --gateway-address-pool`) against the fake
//! apiserver in the node namespace. Without the Gateway API's CRDs the
//! agent serves what it has and says once that Gateway API objects are not
//! served; with them, an HTTPRoute is watched, served through the hand-off
//! on its Gateway's own address, and the status of the GatewayClass, the
//! Gateway and the route is written through the status subresources (other
//! controllers' parent entries kept). Needs root.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weir_tests::{
    cmd::ip, fake_apiserver::Kind, http_backend::HttpBackend, ingress::curl, Agent, FakeApiserver,
    Sandbox,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const POOL: &str = "198.19.3.0/24";

fn wait(what: &str, agent: &Agent, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
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

fn condition<'a>(conditions: &'a Value, kind: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)
}

fn is_true(conditions: &Value, kind: &str, reason: &str) -> bool {
    condition(conditions, kind).is_some_and(|c| c["status"] == "True" && c["reason"] == reason)
}

#[test]
fn gateway_api_objects_from_the_apiserver_are_served_and_their_status_written() -> Result<()> {
    let sandbox = Sandbox::standard(1)?;
    ip(&[
        "-n",
        &sandbox.node.name,
        "route",
        "add",
        "local",
        POOL,
        "dev",
        "lo",
    ])?;
    let be1 = sandbox.pod("be1").ip;
    let _backend = HttpBackend::start(&sandbox.pod("be1").netns.name, "be1", 3000)?;
    let api = FakeApiserver::start_in_netns(&sandbox.node.name)?;
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}]}}),
    )?;
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "app", "namespace": "web"},
        "spec": {"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 3000}]}}))?;
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "app-1", "namespace": "web", "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
        "endpoints": [{"addresses": [be1.to_string()], "conditions": {"ready": true}, "nodeName": "node-a"}]}))?;
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {"team": "web"}}}))?;

    // No CRDs, and no grant on Namespaces: the agent runs, serves
    // Services, and says so once per kind.
    api.forbid(Kind::Namespace, true);
    let master = format!("--master={}", api.url());
    let pool = format!("--gateway-address-pool={POOL}");
    let agent = Agent::start_source(
        &sandbox.node.name,
        "kube",
        &sandbox.tag,
        &[&master, "--min-sync-period=100ms", "--ingress", &pool],
    )?;
    wait(
        "the cluster state published without the Gateway API",
        &agent,
        || agent.log_text().contains("publishing the cluster state"),
    )?;
    wait(
        "one line per Gateway API kind that is not installed",
        &agent,
        || {
            agent
                .log_text()
                .matches("objects are not served: the API is not installed")
                .count()
                == 7
        },
    )?;

    wait("the missing grant named", &agent, || {
        agent.log_text().contains(
            "Namespace objects are not served: the agent may not list them (apply manifests/gateway/rbac.yaml)",
        )
    })?;
    // The grant and the CRDs appear, then the objects.
    api.forbid(Kind::Namespace, false);
    api.install_gateway_crds();
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "weir", "generation": 1},
        "spec": {"controllerName": "weir.dev/gateway-controller"}}),
    )?;
    api.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "infra", "generation": 2},
        "spec": {"gatewayClassName": "weir", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "web"}}}}}]}}))?;
    api.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "web", "generation": 3},
        "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                 "hostnames": ["shop.example"],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}],
                            "filters": [{"type": "RequestHeaderModifier",
                                         "requestHeaderModifier": {"set": [{"name": "X-Via", "value": "weir"}]}}],
                            "backendRefs": [{"name": "app", "port": 8080}]}]},
        // Another controller's entry, which Weir must keep.
        "status": {"parents": [{"parentRef": {"name": "other-gw"}, "controllerName": "example.com/other",
                                "conditions": []}]}}))?;

    // Served through the hand-off on the Gateway's own address (after the
    // agent looks for the APIs again).
    let mut address = None;
    wait_long("the Gateway's address in its status", &agent, || {
        address = api.object(Kind::Gateway, "infra", "gw").and_then(|g| {
            g["status"]["addresses"][0]["value"]
                .as_str()
                .map(str::to_string)
        });
        address.is_some()
    })?;
    let address = address.context("no address")?;
    let client = sandbox.pod("client").netns.name.clone();
    let get = |path: &str| {
        curl(
            &client,
            &[
                "-H",
                "Host: shop.example",
                &format!("http://{address}{path}"),
            ],
        )
    };
    wait("shop.example/cart served by be1", &agent, || {
        get("/cart/items").is_ok_and(|r| r.status == 200 && r.backend().is_ok_and(|b| b == "be1"))
    })?;
    let seen = get("/cart/items")?.json()?;
    assert_eq!(seen["headers"]["x-via"], "weir");
    assert_eq!(get("/other")?.status, 404);

    // Status, through the status subresources.
    wait(
        "the status of the class, the Gateway and the route",
        &agent,
        || {
            let class = api.object(Kind::GatewayClass, "", "weir");
            let gw = api.object(Kind::Gateway, "infra", "gw");
            let route = api.object(Kind::HttpRoute, "web", "shop");
            let (Some(class), Some(gw), Some(route)) = (class, gw, route) else {
                return false;
            };
            let ours = route["status"]["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["controllerName"] == "weir.dev/gateway-controller");
            is_true(&class["status"]["conditions"], "Accepted", "Accepted")
                && is_true(&gw["status"]["conditions"], "Programmed", "Programmed")
                && gw["status"]["listeners"][0]["attachedRoutes"] == 1
                && ours.is_some_and(|p| {
                    is_true(&p["conditions"], "Accepted", "Accepted")
                        && is_true(&p["conditions"], "ResolvedRefs", "ResolvedRefs")
                        && p["parentRef"]["namespace"] == "infra"
                        && p["conditions"][0]["observedGeneration"] == 3
                        && p["conditions"][0]["lastTransitionTime"].is_string()
                })
        },
    )?;
    let route = api
        .object(Kind::HttpRoute, "web", "shop")
        .context("route")?;
    assert!(
        route["status"]["parents"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["controllerName"] == "example.com/other")),
        "another controller's parent entry was dropped: {route:#}"
    );
    let gw = api
        .object(Kind::Gateway, "infra", "gw")
        .context("gateway")?;
    let gen = &gw["status"]["conditions"][0]["observedGeneration"];
    assert_eq!(gen, 2, "{gw:#}");

    // A route pointing at a missing Service: 500, and the reason in status.
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "broken", "namespace": "web", "generation": 1},
        "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                 "hostnames": ["broken.example"],
                 "rules": [{"backendRefs": [{"name": "nope", "port": 80}]}]}}),
    )?;
    wait("500 for the missing backend", &agent, || {
        curl(
            &client,
            &["-H", "Host: broken.example", &format!("http://{address}/")],
        )
        .is_ok_and(|r| r.status == 500)
    })?;
    wait("BackendNotFound in the route's status", &agent, || {
        api.object(Kind::HttpRoute, "web", "broken")
            .is_some_and(|r| {
                r["status"]["parents"][0]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == "ResolvedRefs"
                            && c["status"] == "False"
                            && c["reason"] == "BackendNotFound"
                    })
            })
    })?;
    Ok(())
}

/// As `wait`, for up to 45 s (the agent looks for a missing API again with
/// its watch backoff, at most 30 s apart).
fn wait_long(what: &str, agent: &Agent, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "timed out waiting for {what}; agent log:\n{}",
        agent.log_text()
    )
}
