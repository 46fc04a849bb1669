//! `translation::Translation`: translating by change gives exactly what
//! `translate` gives for the whole state, over random sequences of Service
//! and EndpointSlice changes, including Services that contend for one
//! frontend (a shared external IP) or one health check port.
mod common;
use std::net::Ipv4Addr;

use weir::{
    model::{
        ClusterState, Endpoint, EndpointPort, EndpointSlice, ObjectRef, Protocol, Service,
        ServicePort, ServiceType,
    },
    translate::{translate, NodeFacts},
    translation::{Changed, Translation},
};

use common::Rng;

fn node() -> NodeFacts {
    NodeFacts {
        node_name: "node-a".into(),
        nodeport_addresses: vec![Ipv4Addr::new(198, 18, 100, 1).into()],
        ..NodeFacts::default()
    }
}

fn random_service(r: &mut Rng, i: u64) -> Service {
    let name = format!("svc-{i}");
    let mut svc = Service {
        id: ObjectRef::new("ns", &name),
        service_type: [
            ServiceType::ClusterIp,
            ServiceType::NodePort,
            ServiceType::LoadBalancer,
        ][r.below(3) as usize],
        cluster_ips: vec![Ipv4Addr::new(198, 19, 0, i as u8 + 1).into()],
        ..Default::default()
    };
    for p in 0..1 + r.below(2) {
        svc.ports.push(ServicePort {
            name: format!("p{p}"),
            port: 80 + p as u16,
            protocol: if r.chance(80) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            // Few node ports and external IPs, so that Services contend.
            node_port: (svc.service_type != ServiceType::ClusterIp)
                .then(|| 30000 + r.below(4) as u16),
            app_protocol: None,
        });
    }
    if r.chance(30) {
        svc.external_ips = vec![Ipv4Addr::new(198, 18, 200, r.below(3) as u8).into()];
    }
    if svc.service_type == ServiceType::LoadBalancer {
        svc.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 201, r.below(3) as u8).into()];
        svc.external_policy_local = r.chance(50);
        if svc.external_policy_local {
            svc.health_check_node_port = Some(32000 + r.below(3) as u16);
        }
        if r.chance(30) {
            svc.source_ranges = vec![(Ipv4Addr::new(198, 18, 0, 0).into(), 16)];
        }
    }
    svc.internal_policy_local = r.chance(20);
    if r.chance(10) {
        svc.session_affinity_timeout = Some(if r.chance(50) { 300 } else { -1 });
    }
    svc
}

fn random_slice(r: &mut Rng, service: u64, n: u64) -> EndpointSlice {
    EndpointSlice {
        id: ObjectRef::new("ns", format!("svc-{service}-{n}")),
        service_name: format!("svc-{service}"),
        family: weir::model::Family::V4,
        ports: (0..2)
            .map(|p| EndpointPort {
                name: format!("p{p}"),
                port: 8080 + p,
                protocol: Protocol::Tcp,
            })
            .collect(),
        endpoints: (0..r.below(4))
            .map(|_| Endpoint {
                node_name: r.chance(50).then(|| "node-a".into()),
                ready: r.chance(80),
                terminating: r.chance(20),
                ..Endpoint::ready(Ipv4Addr::new(198, 18, 1, r.below(20) as u8 + 1).into())
            })
            .collect(),
    }
}

#[test]
fn translating_by_change_gives_what_translating_everything_gives() {
    let mut r = Rng(0x5eed_7a51);
    let facts = node();
    let mut state = ClusterState::default();
    let mut before = ClusterState::default();
    let mut t = Translation::default();
    let mut by_change = 0;
    for step in 0..1_500 {
        for _ in 0..1 + r.below(3) {
            let i = r.below(12);
            match r.below(4) {
                0 => {
                    state
                        .services
                        .remove(&ObjectRef::new("ns", format!("svc-{i}")));
                }
                1 => {
                    let svc = random_service(&mut r, i);
                    state
                        .services
                        .insert(svc.id.clone(), std::sync::Arc::new(svc));
                }
                2 => {
                    let n = r.below(2);
                    state
                        .slices
                        .remove(&ObjectRef::new("ns", format!("svc-{i}-{n}")));
                }
                _ => {
                    let n = r.below(2);
                    let s = random_slice(&mut r, i, n);
                    state.slices.insert(s.id.clone(), std::sync::Arc::new(s));
                }
            }
        }
        let changes = state.changes_since(&before);
        let old = t.desired().clone();
        let changed = t.update(&before, &state, &facts, &changes);
        let want = translate(&state, &facts);
        assert_eq!(t.desired(), &want, "step {step}: {changes:?}");
        if let Changed::Keys(keys) = changed {
            by_change += 1;
            for k in old.frontends.keys().chain(want.frontends.keys()) {
                if old.frontends.get(k) != want.frontends.get(k) {
                    assert!(keys.contains(k), "step {step}: {k:?} changed, not reported");
                }
            }
        }
        before = state.clone();
    }
    assert!(by_change > 500, "only {by_change} updates by change");
}

/// A warning is reported once while it stands, again once it comes back.
#[test]
fn a_standing_warning_is_reported_once() {
    let facts = node();
    let mut svc = Service {
        id: ObjectRef::new("ns", "svc-0"),
        cluster_ips: vec![Ipv4Addr::new(198, 19, 0, 1).into()],
        session_affinity_timeout: Some(-1),
        ..Default::default()
    };
    svc.ports.push(ServicePort {
        name: "p0".into(),
        port: 80,
        protocol: Protocol::Tcp,
        node_port: None,
        app_protocol: None,
    });
    let mut state = ClusterState::default();
    state
        .services
        .insert(svc.id.clone(), std::sync::Arc::new(svc.clone()));
    let mut t = Translation::default();
    let empty = ClusterState::default();
    t.update(&empty, &state, &facts, &state.changes_since(&empty));
    let first = t.new_warnings();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(t.new_warnings().is_empty(), "reported again");

    let before = state.clone();
    svc.session_affinity_timeout = None;
    state
        .services
        .insert(svc.id.clone(), std::sync::Arc::new(svc.clone()));
    t.update(&before, &state, &facts, &state.changes_since(&before));
    assert!(t.new_warnings().is_empty());
    let before = state.clone();
    svc.session_affinity_timeout = Some(-1);
    state
        .services
        .insert(svc.id.clone(), std::sync::Arc::new(svc));
    t.update(&before, &state, &facts, &state.changes_since(&before));
    assert_eq!(
        t.new_warnings(),
        first,
        "a warning that came back was not reported"
    );
}
