//! A quick L7 measurement, not a test (ignored by default; no timing is
//! asserted): requests per second and p99 latency with wrk through Weir's
//! ingress proxy and through nginx configured for the same route and
//! backends, in the same run and sandbox. `cargo xtask bench --sections 4`
//! measures more (routes, concurrency, new connections) for RESULTS.md.
//!
//! Run: `WEIR_BIN=target/release/weir cargo test -p weir-tests --test ingress_bench -- --ignored --nocapture`
//! (needs root, wrk and nginx: `cargo xtask setup --bench`).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{bail, Result};
use weir_tests::{
    cmd::ip,
    http_backend::HttpBackend,
    ingress::{backend, curl, ingress, ingress_class, node},
    manifests::{port, service, slice},
    nginx::{Nginx, Route, Upstream},
    scenario::Scenario,
    wrk::{self, WrkLoad},
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// nginx listens here in the node namespace (not an ingress address).
const NGINX_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure_weir_ingress_against_nginx() -> Result<()> {
    let s = Scenario::start_with(2, &[], &["--ingress"])?;
    let node_ns = s.sandbox.node.name.clone();
    ip(&[
        "-n",
        &node_ns,
        "addr",
        "add",
        &format!("{NGINX_IP}/32"),
        "dev",
        "lo",
    ])?;
    let ips = [s.backend_ip("be1"), s.backend_ip("be2")];
    let _backends: Vec<HttpBackend> = ["be1", "be2"]
        .iter()
        .map(|b| HttpBackend::start(&s.sandbox.pod(b).netns.name, b, 8080))
        .collect::<Result<_>>()?;
    let ports = [port("http", 80, "TCP", 8080)];
    let eps: Vec<(Ipv4Addr, bool)> = ips.iter().map(|ip| (*ip, true)).collect();
    s.manifests
        .write("class.yaml", &ingress_class("weir", true))?;
    s.manifests.write("node.yaml", &node("node-a", NODE_IP))?;
    s.manifests.write(
        "app.yaml",
        &format!(
            "{}\n---\n{}\n---\n{}",
            service("bench", "app", Ipv4Addr::new(198, 19, 0, 10), &ports),
            slice("bench", "app-1", "app", &ports, &eps),
            ingress(
                "bench",
                "app",
                &format!(
                    "  rules:\n    - host: bench.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n",
                    backend("app", 80)
                )
            )
        ),
    )?;
    let _nginx = Nginx::start(
        &node_ns,
        &s.sandbox.tag,
        NGINX_IP,
        2,
        &[Upstream {
            name: "app".into(),
            servers: ips.iter().map(|ip| SocketAddrV4::new(*ip, 8080)).collect(),
        }],
        &[Route {
            host: "bench.example".into(),
            prefix: "/".into(),
            upstream: "app".into(),
        }],
    )?;
    let client = s.sandbox.pod("client").netns.name.clone();
    let ready = |url: &str| -> Result<()> {
        for _ in 0..100 {
            if curl(&client, &["-H", "Host: bench.example", url]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{url} never answered 200; agent log:\n{}",
            s.agent.log_text()
        )
    };
    let weir_url = format!("http://{NODE_IP}/");
    let nginx_url = format!("http://{NGINX_IP}/");
    ready(&weir_url)?;
    ready(&nginx_url)?;
    let load = WrkLoad {
        threads: 2,
        connections: 32,
        duration: Duration::from_secs(10),
        headers: vec!["Host: bench.example".into()],
    };
    let mut rows = Vec::new();
    // Alternate, twice each, so that neither always runs first.
    for round in 0..2 {
        for (name, url) in [("weir", &weir_url), ("nginx", &nginx_url)] {
            let r = wrk::run(&client, url, &load)?;
            rows.push(format!(
                "| {name} | {round} | {:.0} | {:.2} ms | {} |",
                r.requests_per_s,
                r.p99_us / 1e3,
                r.non_2xx + r.socket_errors
            ));
        }
    }
    println!("\n| proxy | round | requests/s | p99 | errors |\n| --- | --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
