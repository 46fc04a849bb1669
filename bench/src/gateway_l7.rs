//! Section 5: the Gateway API in the same proxy. wrk from a client pod
//! through a Gateway (its own address from `--gateway-address-pool`, handed
//! to the proxy by sk_lookup) whose HTTPRoutes hold 1,000 hostnames, each
//! with a header-matched rule, and through nginx in the same run with the
//! same hostnames and prefixes (nginx's `location` has no header match: it
//! does less per request). The two alternate.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{bail, Result};
use weir_tests::{
    cmd::ip,
    http_backend::HttpBackend,
    ingress::curl,
    manifests::{port, service, slice},
    nginx::{Nginx, Route, Upstream},
    scenario::Scenario,
    wrk::{self, WrkLoad, WrkResult},
};

use crate::{
    l7::{params, Test},
    report::{Section, Table},
    stats::{quantile, ratio, thousands},
    Mode,
};

const NGINX_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
const POOL: &str = "198.19.4.0/24";
/// HTTPRoutes (one hostname each) on the Gateway, and nginx server names.
const ROUTES: usize = 1_000;
const PATH: &str = "/api/items";
const APP_PORT: u16 = 8080;
const API_PORT: u16 = 8081;
const WORKERS: usize = 2;
const WRK_THREADS: usize = 2;

fn host(i: usize) -> String {
    format!("r{i}.gw.bench.example")
}

fn median(runs: &[WrkResult], f: impl Fn(&WrkResult) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    quantile(&mut v, 0.5)
}

/// The Services, their slices, the Gateway and one HTTPRoute per hostname:
/// `/api` with header `x-tier: gold` to `api`, `/api` to `app`, `/` to `app`.
fn write_manifests(s: &Scenario, ips: &[Ipv4Addr]) -> Result<()> {
    let eps: Vec<(Ipv4Addr, bool)> = ips.iter().map(|ip| (*ip, true)).collect();
    let mut yaml = vec![
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n".to_string(),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bench, namespace: bench}\nspec:\n  gatewayClassName: weir\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n".to_string(),
    ];
    for (name, target, vip) in [
        ("app", APP_PORT, Ipv4Addr::new(198, 19, 0, 10)),
        ("api", API_PORT, Ipv4Addr::new(198, 19, 0, 11)),
    ] {
        let ports = [port("http", 80, "TCP", target)];
        yaml.push(service("bench", name, vip, &ports));
        yaml.push(slice("bench", &format!("{name}-1"), name, &ports, &eps));
    }
    for i in 0..ROUTES {
        yaml.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: bench}}\nspec:\n  parentRefs: [{{name: bench}}]\n  hostnames: [{h}]\n  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-tier, value: gold}}]}}]\n      backendRefs: [{{name: api, port: 80}}]\n    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n      backendRefs: [{{name: app, port: 80}}]\n    - backendRefs: [{{name: app, port: 80}}]\n",
            h = host(i)
        ));
    }
    s.manifests.write("gateway.yaml", &yaml.join("\n---\n"))
}

/// The first Gateway's address, once `works(address)` (at most 30 s).
pub(crate) fn gateway_ready(
    s: &Scenario,
    mut works: impl FnMut(Ipv4Addr) -> bool,
) -> Result<Ipv4Addr> {
    for _ in 0..300 {
        let addr = s
            .agent
            .cli_json(&["gateway", "status"])
            .ok()
            .and_then(|st| {
                st["gateways"][0]["addresses"][0]["value"]
                    .as_str()?
                    .parse()
                    .ok()
            });
        if let Some(addr) = addr.filter(|a| works(*a)) {
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the Gateway never served; agent log:
{}",
        s.agent.log_text()
    )
}

pub fn run(mode: Mode) -> Result<Section> {
    let p = params(mode);
    eprintln!("bench: Gateway API, setting up {ROUTES} HTTPRoutes and nginx");
    let threads = format!("--ingress-threads={WORKERS}");
    let pool = format!("--gateway-address-pool={POOL}");
    let s = Scenario::start_with(2, &[], &["--ingress", &threads, &pool])?;
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
    ip(&["-n", &node_ns, "route", "add", "local", POOL, "dev", "lo"])?;
    let client = s.sandbox.pod("client").netns.name.clone();
    crate::e2e::sysctl(&client, crate::e2e::CLIENT_SYSCTLS)?;
    let pods = ["be1", "be2"];
    let ips: Vec<Ipv4Addr> = pods.iter().map(|b| s.backend_ip(b)).collect();
    let mut backends = Vec::new();
    for b in pods {
        let ns = &s.sandbox.pod(b).netns.name;
        backends.push(HttpBackend::start(ns, b, APP_PORT)?);
        backends.push(HttpBackend::start(ns, b, API_PORT)?);
    }
    let started = std::time::Instant::now();
    write_manifests(&s, &ips)?;
    let target = host(ROUTES / 2);
    let gw = gateway_ready(&s, |addr| {
        let host = format!("Host: {target}");
        let url = format!("http://{addr}{PATH}");
        curl(&client, &["-H", &host, "-H", "x-tier: gold", &url]).is_ok_and(|r| r.status == 200)
    })?;
    let programmed = started.elapsed();
    let upstream = |name: &str, port| Upstream {
        name: name.into(),
        servers: ips.iter().map(|ip| SocketAddrV4::new(*ip, port)).collect(),
    };
    let routes: Vec<Route> = (0..ROUTES)
        .flat_map(|i| {
            [("/", "app"), ("/api", "api")].map(|(prefix, upstream)| Route {
                host: host(i),
                prefix: prefix.into(),
                upstream: upstream.into(),
            })
        })
        .collect();
    let nginx = Nginx::start(
        &node_ns,
        &s.sandbox.tag,
        NGINX_IP,
        WORKERS,
        &[upstream("app", APP_PORT), upstream("api", API_PORT)],
        &routes,
    )?;
    let urls = [
        ("Weir (Gateway)", format!("http://{gw}{PATH}")),
        ("nginx", format!("http://{NGINX_IP}{PATH}")),
    ];
    let mut table = Table::new(&[
        "client connections",
        "test",
        "Weir requests/s",
        "nginx requests/s",
        "Weir / nginx",
        "Weir p50 / p99",
        "nginx p50 / p99",
        "errors (Weir / nginx)",
    ]);
    let ms = |us: f64| format!("{:.2} ms", us / 1e3);
    for &connections in &p.connections {
        for test in Test::ALL {
            let mut headers = vec![format!("Host: {target}"), "x-tier: gold".to_string()];
            if test == Test::NewConnection {
                headers.push("Connection: close".into());
            }
            let load = WrkLoad {
                threads: WRK_THREADS,
                connections,
                duration: p.duration,
                headers,
            };
            let mut runs: [Vec<WrkResult>; 2] = [Vec::new(), Vec::new()];
            for round in 0..p.rounds {
                eprintln!(
                    "bench: Gateway API, {}, {connections} connections, round {}",
                    test.name(),
                    round + 1
                );
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    runs[i].push(wrk::run(&client, &urls[i].1, &load)?);
                }
            }
            let rps = |i: usize| median(&runs[i], |r| r.requests_per_s);
            let lat = |i: usize| {
                format!(
                    "{} / {}",
                    ms(median(&runs[i], |r| r.p50_us)),
                    ms(median(&runs[i], |r| r.p99_us))
                )
            };
            let errors = |i: usize| {
                runs[i]
                    .iter()
                    .map(|r| r.non_2xx + r.socket_errors)
                    .sum::<u64>()
            };
            table.row(vec![
                connections.to_string(),
                test.name().into(),
                thousands(rps(0)),
                thousands(rps(1)),
                ratio(rps(0), rps(1)),
                lat(0),
                lat(1),
                format!("{} / {}", errors(0), errors(1)),
            ]);
        }
    }
    drop(nginx);
    drop(backends);
    drop(s);
    Ok(Section {
        title: "5. Gateway API: 1,000 HTTPRoutes with header matches, against nginx".into(),
        intro: format!(
            "wrk ({WRK_THREADS} threads, {secs} s per run, {rounds} run(s) each, alternating) from \
             the client pod, through a Gateway of Weir's embedded proxy (its own address {gw}:80 \
             from `--gateway-address-pool`, handed to the proxy by sk_lookup; \
             `--ingress-threads={WORKERS}`) and through nginx ({WORKERS} workers, on \
             {NGINX_IP}:80) in the same node namespace. The Gateway has {ROUTES} HTTPRoutes, one \
             hostname each, each with three rules: `/api` with header `x-tier: gold` to Service \
             `api`, `/api` to `app`, `/` to `app`. nginx has the same {ROUTES} server names with \
             `/` to `app` and `/api` to `api` (its `location` cannot match a header, so it does \
             less per request). wrk asks for `{PATH}` on `{target}` with `x-tier: gold`. From \
             writing the {ROUTES} routes to the first answer through the Gateway: {prog:.1} s.",
            secs = p.duration.as_secs(),
            rounds = p.rounds,
            prog = programmed.as_secs_f64(),
        ),
        tables: vec![(String::new(), table)],
        notes: Vec::new(),
        plots: Vec::new(),
    })
}
