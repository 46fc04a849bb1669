//! Capacity limits: with a services map of two entries, a third frontend is
//! reported and left out whole, the others keep working, and it is
//! programmed as soon as there is room.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use weir_tests::{
    echo::Proto,
    manifests::{port, service, slice},
    scenario::{backends_of, names, Scenario},
    EchoReply,
};

const NS: &str = "capacity";

#[test]
fn a_full_services_map_leaves_new_frontends_out_whole_and_keeps_the_rest() -> Result<()> {
    let mut s = Scenario::start_with(1, &[(Proto::Tcp, 8080)], &["--max-services=2"])?;
    let ports = [port("http", 80, "TCP", 8080)];
    let eps = [(s.backend_ip("be1"), true)];
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        let ip = Ipv4Addr::new(198, 19, 0, 21 + i as u8);
        s.manifests
            .write(&format!("{name}.yaml"), &service(NS, name, ip, &ports))?;
        s.manifests.write(
            &format!("{name}-slice.yaml"),
            &slice(NS, &format!("{name}-1"), name, &ports, &eps),
        )?;
    }
    let rows = s
        .agent
        .wait_for("two frontends", Duration::from_secs(15), |rows| {
            rows.len() == 2
        })?;
    let programmed: Vec<&str> = rows.iter().map(|r| r.frontend.as_str()).collect();
    assert_eq!(programmed, ["198.19.0.21:80/TCP", "198.19.0.22:80/TCP"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.agent.log_text().contains("capacity/three: frontend 198.19.0.23:80/TCP not programmed: the services map is full (2 frontends)") {
        assert!(std::time::Instant::now() < deadline, "no report of the full map; log:\n{}", s.agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = weir_tests::http::get(
        &s.sandbox.node.name,
        std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
        "/metrics",
    )?;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "weir_frontends_skipped 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.lines().any(|l| l == "weir_frontends 2"),
        "{}",
        metrics.body
    );
    for ip in [Ipv4Addr::new(198, 19, 0, 21), Ipv4Addr::new(198, 19, 0, 22)] {
        let replies: Vec<EchoReply> = s
            .send("client", Proto::Tcp, ip, 80, 3)?
            .into_iter()
            .collect::<Result<_>>()?;
        assert_eq!(backends_of(&replies), names(&["be1"]));
    }

    // Room again: the third frontend is programmed and serves.
    s.manifests.remove("one.yaml")?;
    s.agent.wait_frontend("198.19.0.23:80/TCP", 1)?;
    let replies: Vec<EchoReply> = s
        .send("client", Proto::Tcp, Ipv4Addr::new(198, 19, 0, 23), 80, 3)?
        .into_iter()
        .collect::<Result<_>>()?;
    assert_eq!(backends_of(&replies), names(&["be1"]));
    Ok(())
}

/// Waits (bounded) until the agent's log contains `line`.
fn wait_log(s: &Scenario, line: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.agent.log_text().contains(line) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no {line:?} in the log:\n{}",
            s.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One metric's value from /metrics of the scenario's agent (three tries:
/// a debug-build agent on a loaded machine can miss the client's timeout).
fn metric(s: &Scenario, name: &str) -> Result<f64> {
    let scrape = || {
        weir_tests::http::get(
            &s.sandbox.node.name,
            std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
            "/metrics",
        )
    };
    let metrics = scrape().or_else(|_| scrape()).or_else(|_| scrape())?;
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("no {name} in\n{}", metrics.body))
}

#[test]
fn full_backends_and_slots_maps_leave_new_frontends_out_whole() -> Result<()> {
    // Three backends fit, and four slots: `one` (two endpoints) fits both;
    // `two` would need a fourth backend, `three` a fifth slot.
    let mut s = Scenario::start_with(
        4,
        &[(Proto::Tcp, 8080)],
        &["--max-backends=3", "--max-slots=4"],
    )?;
    let ports = [port("http", 80, "TCP", 8080)];
    let ep = |b: &str| (s.backend_ip(b), true);
    let services = [
        ("one", vec![ep("be1"), ep("be2")]),
        ("two", vec![ep("be3"), ep("be4")]),
        ("three", vec![ep("be1"), ep("be2"), ep("be3")]),
    ];
    for (i, (name, eps)) in services.iter().enumerate() {
        let ip = Ipv4Addr::new(198, 19, 0, 21 + i as u8);
        s.manifests
            .write(&format!("{name}.yaml"), &service(NS, name, ip, &ports))?;
        s.manifests.write(
            &format!("{name}-slice.yaml"),
            &slice(NS, &format!("{name}-1"), name, &ports, eps),
        )?;
    }
    wait_log(
        &s,
        "capacity/two: frontend 198.19.0.22:80/TCP not programmed: the backends map is full (3 backends)",
    )?;
    wait_log(
        &s,
        "capacity/three: frontend 198.19.0.23:80/TCP not programmed: the slots map is full (4 backend slots)",
    )?;
    let rows = s.agent.wait_frontend("198.19.0.21:80/TCP", 2)?;
    assert_eq!(rows.backends.len(), 2);
    let programmed = s.agent.programmed()?;
    assert_eq!(programmed.services.len(), 1, "{programmed:?}");
    assert_eq!(metric(&s, "weir_frontends_skipped")?, 2.0);
    let replies: Vec<EchoReply> = s
        .send("client", Proto::Tcp, Ipv4Addr::new(198, 19, 0, 21), 80, 12)?
        .into_iter()
        .collect::<Result<_>>()?;
    assert_eq!(backends_of(&replies), names(&["be1", "be2"]));
    Ok(())
}

#[test]
fn a_full_conntrack_map_is_reported_in_the_log_and_the_metrics() -> Result<()> {
    // An LRU map that is full evicts up to 128 entries at once and keeps up
    // to 128 free entries per CPU aside, so a small one never looks more
    // than about 75% full: 4096 entries is the smallest size that shows it.
    let mut s = Scenario::start_with(
        1,
        &[(Proto::Udp, 5353)],
        &[
            "--conntrack-min=4096",
            "--conntrack-max-per-core=1",
            "--conntrack-gc-interval=100ms",
        ],
    )?;
    let ports = [port("dns", 53, "UDP", 5353)];
    let eps = [(s.backend_ip("be1"), true)];
    let vip = Ipv4Addr::new(198, 19, 0, 21);
    s.manifests
        .write("one.yaml", &service(NS, "one", vip, &ports))?;
    s.manifests
        .write("one-slice.yaml", &slice(NS, "one-1", "one", &ports, &eps))?;
    s.agent.wait_frontend("198.19.0.21:53/UDP", 1)?;
    assert_eq!(metric(&s, "weir_map_capacity{map=\"CT_V2\"}")?, 4096.0);
    assert!(!s.agent.log_text().contains("conntrack map CT_V2 is full"));
    // Each datagram from a new socket is a flow of two entries, kept 30 s.
    let replies = s.send("client", Proto::Udp, vip, 53, 2400)?;
    let answered = replies.iter().filter(|r| r.is_ok()).count();
    assert!(answered >= 2300, "{answered} of 2400 answered");
    wait_log(&s, "conntrack map CT_V2 is full (")?;
    let pressure = metric(&s, "weir_map_pressure{map=\"CT_V2\"}")?;
    assert!(pressure >= 0.9, "map pressure {pressure}");
    Ok(())
}
