//! Health responses in kube-proxy's format, and what translate reports per
//! healthCheckNodePort.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use hyper::StatusCode;
use weir::{
    health::{proxy_response, service_response, ProxyHealth, ServiceHealth, HEALTH_TIMEOUT},
    model::{
        ClusterState, Endpoint, EndpointPort, EndpointSlice, ObjectRef, Protocol, Service,
        ServicePort, ServiceType,
    },
    translate::{translate, NodeFacts},
};

#[test]
fn a_service_with_local_endpoints_answers_200_with_kube_proxys_body() {
    let h = ServiceHealth {
        service: ObjectRef::new("web", "shop"),
        local_endpoints: 2,
    };
    let (status, body) = service_response(&h);
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"service": {"namespace": "web", "name": "shop"}, "localEndpoints": 2, "serviceProxyHealthy": true})
    );
}

#[test]
fn a_service_without_local_endpoints_answers_503() {
    let h = ServiceHealth {
        service: ObjectRef::new("web", "shop"),
        local_endpoints: 0,
    };
    let (status, body) = service_response(&h);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
}

#[test]
fn the_proxy_is_unhealthy_before_its_first_sync_and_when_a_change_waits_too_long() {
    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let fresh = ProxyHealth::default();
    assert_eq!(
        proxy_response(&fresh, now, wall).0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let synced = ProxyHealth {
        last_updated: Some(wall),
        queued_since: None,
        source: "dir:/x".into(),
    };
    let (status, body) = proxy_response(&synced, now, wall);
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["lastUpdated"], "2023-11-14T22:13:20Z");
    assert_eq!(json["currentTime"], "2023-11-14T22:13:20Z");
    assert_eq!(json["source"], "dir:/x");

    let pending_briefly = ProxyHealth {
        queued_since: Some(now),
        ..synced.clone()
    };
    assert_eq!(
        proxy_response(&pending_briefly, now + Duration::from_secs(1), wall).0,
        StatusCode::OK
    );
    let stuck = ProxyHealth {
        queued_since: Some(now),
        ..synced
    };
    assert_eq!(
        proxy_response(&stuck, now + HEALTH_TIMEOUT + Duration::from_secs(1), wall).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

fn endpoint(last: u8, node: &str, ready: bool, terminating: bool) -> Endpoint {
    Endpoint {
        address: Ipv4Addr::new(198, 18, 1, last).into(),
        ready,
        serving: true,
        terminating,
        node_name: Some(node.into()),
        zone: None,
        hint_zones: None,
    }
}

fn lb_state(
    service_type: ServiceType,
    local_policy: bool,
    endpoints: Vec<Endpoint>,
) -> ClusterState {
    let id = ObjectRef::new("web", "shop");
    let svc = Service {
        id: id.clone(),
        service_type,
        cluster_ips: vec![Ipv4Addr::new(198, 19, 0, 20).into()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: Some(30080),
            app_protocol: None,
        }],
        external_policy_local: local_policy,
        health_check_node_port: Some(32000),
        ..Default::default()
    };
    let slice = EndpointSlice {
        id: ObjectRef::new("web", "shop-1"),
        service_name: "shop".into(),
        family: weir::model::Family::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints,
    };
    let mut state = ClusterState::default();
    state.services.insert(id, std::sync::Arc::new(svc));
    state
        .slices
        .insert(slice.id.clone(), std::sync::Arc::new(slice));
    state
}

fn node_a() -> NodeFacts {
    NodeFacts {
        node_name: "node-a".into(),
        ..Default::default()
    }
}

#[test]
fn translate_counts_ready_local_endpoints_for_the_health_check_node_port() {
    let eps = vec![
        endpoint(1, "node-a", true, false),
        endpoint(2, "node-a", true, false),
        endpoint(3, "node-b", true, false),
    ];
    let d = translate(&lb_state(ServiceType::LoadBalancer, true, eps), &node_a());
    let h = &d.health_checks[&32000];
    assert_eq!(
        (h.service.to_string(), h.local_endpoints),
        ("web/shop".into(), 2)
    );
}

#[test]
fn only_terminating_local_endpoints_make_the_health_check_fail() {
    let eps = vec![
        endpoint(1, "node-a", false, true),
        endpoint(3, "node-b", true, false),
    ];
    let d = translate(&lb_state(ServiceType::LoadBalancer, true, eps), &node_a());
    assert_eq!(d.health_checks[&32000].local_endpoints, 0);
    assert_eq!(
        service_response(&d.health_checks[&32000]).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn only_local_policy_load_balancers_get_a_health_check() {
    let eps = vec![endpoint(1, "node-a", true, false)];
    assert!(translate(
        &lb_state(ServiceType::LoadBalancer, false, eps.clone()),
        &node_a()
    )
    .health_checks
    .is_empty());
    assert!(
        translate(&lb_state(ServiceType::NodePort, true, eps), &node_a())
            .health_checks
            .is_empty()
    );
}
