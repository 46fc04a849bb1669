//! Capacity limits: with a services map of two entries, a third frontend is
//! reported and left out whole, the others keep working, and it is
//! programmed as soon as there is room.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
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
    while !s.agent.log_text().contains("capacity/three: frontend 198.19.0.23:80 not programmed: the services map is full (2 frontends)") {
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
