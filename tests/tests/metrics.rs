//! Metrics after known traffic: the counters say exactly what was sent.
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use weir_tests::{
    echo::Proto,
    http::get,
    manifests::{port, service, slice},
    scenario::{Scenario, CLUSTER_IP},
};

const NS: &str = "metrics";

/// The value of the sample `name` (with its labels, as exposed) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn counters_follow_known_traffic() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080)])?;
    let ports = [port("http", 80, "TCP", 8080)];
    let eps: Vec<_> = ["be1", "be2"]
        .iter()
        .map(|b| (s.backend_ip(b), true))
        .collect();
    s.manifests
        .write("svc.yaml", &service(NS, "counted", CLUSTER_IP, &ports))?;
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "counted-1", "counted", &ports, &eps),
    )?;
    let empty_ip = Ipv4Addr::new(198, 19, 0, 11);
    s.manifests
        .write("empty.yaml", &service(NS, "empty", empty_ip, &ports))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    s.agent.wait_frontend("198.19.0.11:80/TCP", 0)?;

    let node = s.sandbox.node.name.clone();
    let metrics = || -> Result<String> {
        let r = get(
            &node,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
            "/metrics",
        )?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
        Ok(r.body)
    };
    let before = metrics()?;
    assert!(
        sample(&before, "weir_sync_proxy_rules_duration_seconds_count")
            .context("sync histogram")?
            >= 1.0
    );
    assert!(
        sample(&before, "weir_sync_proxy_rules_last_timestamp_seconds").context("last sync")?
            > 1.6e9
    );
    assert_eq!(
        sample(&before, r#"weir_map_entries{map="SERVICES_V1"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&before, r#"weir_frontends"#), Some(2.0));

    s.send_ok(Proto::Tcp, 80, 10)?;
    let rejected = s.send("client", Proto::Tcp, empty_ip, 80, 3)?;
    assert!(rejected.iter().all(Result::is_err));

    let after = metrics()?;
    // The frontend, and the Service port it serves.
    let labels = format!(
        r#"frontend="198.19.0.10:80/TCP",namespace="{NS}",name="counted",port_name="http""#
    );
    let flows = format!("weir_service_flows_total{{{labels}}}");
    let flows = flows.as_str();
    assert_eq!(sample(&after, flows), Some(10.0), "{after}");
    // Each connection: SYN, ACK, FIN, ACK at least, all from the client.
    assert!(
        sample(&after, &format!("weir_service_packets_total{{{labels}}}")).unwrap_or(0.0) >= 40.0
    );
    assert_eq!(
        sample(&after, r#"weir_drops_total{reason="no_endpoint"}"#),
        Some(3.0),
        "{after}"
    );

    // A second scrape adds nothing without new traffic.
    let again = metrics()?;
    assert_eq!(sample(&again, flows), Some(10.0));
    Ok(())
}

/// Runs `weir monitor -o json ARGS` until it has printed `count` events,
/// sending requests from the client (one every 200 ms) while it runs.
fn monitor_while(
    s: &Scenario,
    args: &[&str],
    count: u64,
    addr: Ipv4Addr,
) -> Result<Vec<serde_json::Value>> {
    let mut monitor = s.agent.monitor(Some(count), 15, args)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while monitor.running()? && std::time::Instant::now() < deadline {
        let _ = s.send("client", Proto::Tcp, addr, 80, 1)?;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    monitor.events()
}

#[test]
fn weir_monitor_shows_drops_with_their_reason_and_optionally_every_flow() -> Result<()> {
    let mut s = Scenario::start(1, &[(Proto::Tcp, 8080)])?;
    let ports = [port("http", 80, "TCP", 8080)];
    s.manifests
        .write("svc.yaml", &service(NS, "seen", CLUSTER_IP, &ports))?;
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "seen-1", "seen", &ports, &[(s.backend_ip("be1"), true)]),
    )?;
    let empty_ip = Ipv4Addr::new(198, 19, 0, 11);
    s.manifests
        .write("empty.yaml", &service(NS, "empty", empty_ip, &ports))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 1)?;
    s.agent.wait_frontend("198.19.0.11:80/TCP", 0)?;

    let drops = monitor_while(&s, &[], 1, empty_ip)?;
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0]["event"], "drop");
    assert_eq!(drops[0]["reason"], "no_endpoint");
    let tuple = drops[0]["tuple"].as_str().unwrap_or_default();
    assert!(
        tuple.starts_with("198.18.1.2:") && tuple.ends_with("-> 198.19.0.11:80/TCP"),
        "{tuple}"
    );

    // Served flows are reported only with --flows.
    let flows = monitor_while(&s, &["--flows"], 2, CLUSTER_IP)?;
    assert_eq!(flows.len(), 2, "{flows:?}");
    for f in &flows {
        assert_eq!(f["event"], "flow");
        assert_eq!(f["backend"], format!("{}:8080", s.backend_ip("be1")));
        assert!(f["tuple"]
            .as_str()
            .unwrap_or_default()
            .ends_with("-> 198.19.0.10:80/TCP"));
    }
    // The flag is off again: served traffic alone produces no event.
    let quiet = s.agent.monitor(None, 2, &[])?;
    s.send_ok(Proto::Tcp, 80, 3)?;
    let quiet = quiet.events()?;
    assert!(quiet.is_empty(), "{quiet:?}");
    Ok(())
}
