//! Section 4: L7. wrk from a client pod through Weir's ingress proxy (the
//! agent with `--ingress`: an sk_lookup program hands connections to the
//! node's address on port 80 to the proxy) and through nginx in the same
//! node namespace on another address, configured for the same routes and
//! the same backends, in the same run. The two alternate, so that neither
//! always runs first.
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
    wrk::{self, WrkLoad, WrkResult},
};

use crate::{
    report::{Plot, Section, Series, Table},
    stats::{quantile, ratio, thousands},
    workload::NODE_IP,
    Mode,
};

/// nginx listens here in the node namespace (not an ingress address).
const NGINX_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
/// Hosts h0.bench.example ..: each routes `/` to `app` and `/api` to `api`.
const HOSTS: usize = 10;
/// The request measured: the middle host, the longer of its two prefixes.
const PATH: &str = "/api/items";
const APP_PORT: u16 = 8080;
const API_PORT: u16 = 8081;
/// Proxy worker threads (Weir's `--ingress-threads`) and nginx workers.
const WORKERS: usize = 2;
const WRK_THREADS: usize = 2;

pub(crate) struct Params {
    pub(crate) connections: Vec<usize>,
    pub(crate) duration: Duration,
    pub(crate) rounds: usize,
}

pub(crate) fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            connections: vec![8, 64],
            duration: Duration::from_secs(3),
            rounds: 1,
        },
        Mode::Full => Params {
            connections: vec![8, 32, 128],
            duration: Duration::from_secs(10),
            rounds: 2,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Weir,
    Nginx,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Weir => "Weir",
            Proxy::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Test {
    /// wrk's default: each connection stays open for many requests.
    KeepAlive,
    /// `Connection: close`: a new client connection per request.
    NewConnection,
}

impl Test {
    pub(crate) const ALL: [Test; 2] = [Test::KeepAlive, Test::NewConnection];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Test::KeepAlive => "kept-alive connections",
            Test::NewConnection => "a new connection per request",
        }
    }
}

fn host(i: usize) -> String {
    format!("h{i}.bench.example")
}

/// The middle host, the one wrk asks for.
fn target_host() -> String {
    host(HOSTS / 2)
}

struct Cell {
    proxy: Proxy,
    test: Test,
    connections: usize,
    runs: Vec<WrkResult>,
}

impl Cell {
    fn median(&self, f: impl Fn(&WrkResult) -> f64) -> f64 {
        let mut v: Vec<f64> = self.runs.iter().map(f).collect();
        quantile(&mut v, 0.5)
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.non_2xx + r.socket_errors).sum()
    }
}

pub fn run(mode: Mode) -> Result<Section> {
    let p = params(mode);
    eprintln!("bench: L7, setting up Weir's ingress proxy and nginx");
    let threads = format!("--ingress-threads={WORKERS}");
    let s = Scenario::start_with(2, &[], &["--ingress", &threads])?;
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
    write_manifests(&s, &ips)?;
    let upstream = |name: &str, port| Upstream {
        name: name.into(),
        servers: ips.iter().map(|ip| SocketAddrV4::new(*ip, port)).collect(),
    };
    let routes: Vec<Route> = (0..HOSTS)
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
    let url = |proxy: Proxy| match proxy {
        Proxy::Weir => format!("http://{NODE_IP}{PATH}"),
        Proxy::Nginx => format!("http://{NGINX_IP}{PATH}"),
    };
    for proxy in [Proxy::Weir, Proxy::Nginx] {
        ready(&client, &url(proxy)).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}\nagent log:\n{}\nnginx log:\n{}",
                proxy.name(),
                s.agent.log_text(),
                nginx.log()
            )
        })?;
    }
    let mut cells = Vec::new();
    for &connections in &p.connections {
        for test in Test::ALL {
            let mut headers = vec![format!("Host: {}", target_host())];
            if test == Test::NewConnection {
                headers.push("Connection: close".into());
            }
            let load = WrkLoad {
                threads: WRK_THREADS,
                connections,
                duration: p.duration,
                headers,
            };
            let mut weir = Cell {
                proxy: Proxy::Weir,
                test,
                connections,
                runs: Vec::new(),
            };
            let mut ngx = Cell {
                proxy: Proxy::Nginx,
                test,
                connections,
                runs: Vec::new(),
            };
            for round in 0..p.rounds {
                eprintln!(
                    "bench: L7, {}, {connections} connections, round {}",
                    test.name(),
                    round + 1
                );
                let order = if round % 2 == 0 {
                    [Proxy::Weir, Proxy::Nginx]
                } else {
                    [Proxy::Nginx, Proxy::Weir]
                };
                for proxy in order {
                    let r = wrk::run(&client, &url(proxy), &load)?;
                    match proxy {
                        Proxy::Weir => weir.runs.push(r),
                        Proxy::Nginx => ngx.runs.push(r),
                    }
                }
            }
            cells.push(weir);
            cells.push(ngx);
        }
    }
    drop(nginx);
    drop(backends);
    drop(s);
    Ok(section(&p, &cells))
}

/// The Services, their slices and one Ingress with every host's two routes.
fn write_manifests(s: &Scenario, ips: &[Ipv4Addr]) -> Result<()> {
    let eps: Vec<(Ipv4Addr, bool)> = ips.iter().map(|ip| (*ip, true)).collect();
    let mut yaml = Vec::new();
    for (name, target, vip) in [
        ("app", APP_PORT, Ipv4Addr::new(198, 19, 0, 10)),
        ("api", API_PORT, Ipv4Addr::new(198, 19, 0, 11)),
    ] {
        let ports = [port("http", 80, "TCP", target)];
        yaml.push(service("bench", name, vip, &ports));
        yaml.push(slice("bench", &format!("{name}-1"), name, &ports, &eps));
    }
    let mut rules = String::from("  rules:\n");
    for i in 0..HOSTS {
        rules.push_str(&format!(
            "    - host: {}\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}, {{path: /api, pathType: Prefix, backend: {}}}]}}\n",
            host(i),
            backend("app", 80),
            backend("api", 80)
        ));
    }
    yaml.push(ingress("bench", "routes", &rules));
    s.manifests
        .write("class.yaml", &ingress_class("weir", true))?;
    s.manifests.write("node.yaml", &node("node-a", NODE_IP))?;
    s.manifests.write("app.yaml", &yaml.join("\n---\n"))?;
    Ok(())
}

/// Waits (at most 10 s) until `url` answers 200 for the target host.
fn ready(client: &str, url: &str) -> Result<()> {
    let host = format!("Host: {}", target_host());
    for _ in 0..100 {
        if curl(client, &["-H", &host, url]).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} never answered 200")
}

fn section(p: &Params, cells: &[Cell]) -> Section {
    let find = |proxy, test, c| {
        cells
            .iter()
            .find(|x| x.proxy == proxy && x.test == test && x.connections == c)
    };
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
    let latency = |c: &Cell| {
        format!(
            "{} / {}",
            ms(c.median(|r| r.p50_us)),
            ms(c.median(|r| r.p99_us))
        )
    };
    for test in Test::ALL {
        for &c in &p.connections {
            let (Some(w), Some(n)) = (find(Proxy::Weir, test, c), find(Proxy::Nginx, test, c))
            else {
                continue;
            };
            let (rw, rn) = (
                w.median(|r| r.requests_per_s),
                n.median(|r| r.requests_per_s),
            );
            table.row(vec![
                c.to_string(),
                test.name().into(),
                thousands(rw),
                thousands(rn),
                ratio(rw, rn),
                latency(w),
                latency(n),
                format!("{} / {}", w.errors(), n.errors()),
            ]);
        }
    }
    let mut series = Vec::new();
    for test in Test::ALL {
        for proxy in [Proxy::Weir, Proxy::Nginx] {
            series.push(Series {
                name: format!("{} ({})", proxy.name(), test.name()),
                points: p
                    .connections
                    .iter()
                    .filter_map(|&c| {
                        find(proxy, test, c).map(|x| (c as f64, x.median(|r| r.requests_per_s)))
                    })
                    .collect(),
            });
        }
    }
    let runs = if p.rounds > 1 {
        format!(
            "{} runs each, alternating which goes first; the tables give the medians",
            p.rounds
        )
    } else {
        "one run each".into()
    };
    Section {
        title: "4. L7: Weir's ingress proxy against nginx".into(),
        intro: format!(
            "wrk ({WRK_THREADS} threads, {secs} s per run, {runs}) from the client pod, through \
             Weir's ingress proxy (the agent with `--ingress --ingress-threads={WORKERS}`: an \
             sk_lookup program hands connections to the node's address {NODE_IP}:80 to the \
             proxy) and through nginx ({WORKERS} worker processes, its own configuration file, \
             started in the node namespace on {NGINX_IP}:80). Both serve the same routes: \
             {HOSTS} hosts, each with `/` to Service `app` and `/api` to Service `api` \
             (Prefix), both Services on the same two backend pods (Rust hyper servers answering \
             each request with a small JSON document), with keep-alive connections to the \
             backends (Weir's pool; nginx `keepalive 64`) and X-Forwarded-* headers set. wrk \
             asks for `{PATH}` on host `{host}`. *kept-alive connections*: wrk's connections \
             stay open; *a new connection per request*: wrk sends `Connection: close`, so every \
             request costs a TCP handshake through the proxy's listener (Weir: through the \
             sk_lookup hand-off). Everything (wrk, both proxies, the backends) shares the \
             machine's cores.",
            secs = p.duration.as_secs(),
            host = target_host(),
        ),
        tables: vec![(String::new(), table)],
        notes: Vec::new(),
        plots: vec![Plot {
            file: "l7.png".into(),
            title: "Requests/s through the proxy against client connections".into(),
            x_label: "client connections (wrk -c)".into(),
            y_label: "requests/s".into(),
            log_x: true,
            series,
        }],
    }
}
