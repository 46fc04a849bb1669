//! End-to-end tests of the embedded L7 ingress proxy: clients in a pod
//! namespace connect to the node's address (and an extra ingress address) on
//! ports 80 and 443, where nothing listens; the sk_lookup hand-off gives the
//! connections to the agent's proxy, which routes by Ingress rules to HTTP
//! backends in pod namespaces. The cases follow the
//! ingress-controller-conformance features (default_backend, host_rules,
//! path_rules, ingress_class, load_balancing).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use weir_tests::{
    cmd::ip,
    http::keepalive_get,
    http_backend::HttpBackend,
    ingress::{backend, curl, ingress, ingress_class, node, tls_secret, Curl},
    manifests::{port, service, slice, slice_eps, Ep},
    netns::in_netns,
    scenario::Scenario,
};

const NS: &str = "e2e";
/// The node's address (its Node object's InternalIP): the gateway every pod routes through.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// An extra ingress address (--ingress-addresses), routed to the node.
const EXTRA_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
const CLIENT_IP: &str = "198.18.1.2";

/// A scenario with HTTP backends on :8080 in be1..beN and the agent serving Ingresses.
struct Setup {
    backends: Vec<Option<HttpBackend>>,
    s: Scenario,
}

impl Setup {
    fn start(n: u8, extra_args: &[&str]) -> Result<Self> {
        let mut args = vec!["--ingress", "--ingress-addresses=198.19.1.1"];
        args.extend_from_slice(extra_args);
        let s = Scenario::start_with(n, &[], &args)?;
        ip(&[
            "-n",
            &s.sandbox.node.name,
            "addr",
            "add",
            "198.19.1.1/32",
            "dev",
            "lo",
        ])?;
        let backends = (1..=n)
            .map(|i| {
                let name = format!("be{i}");
                HttpBackend::start(&s.sandbox.pod(&name).netns.name, &name, 8080).map(Some)
            })
            .collect::<Result<_>>()?;
        s.manifests
            .write("class.yaml", &ingress_class("weir", false))?;
        s.manifests.write("node.yaml", &node("node-a", NODE_IP))?;
        Ok(Self { backends, s })
    }

    /// Service `name` (port 80 -> 8080) with the endpoints of `pods` (e.g. ["be1"]).
    fn service(&self, name: &str, ip_last: u8, pods: &[&str]) -> Result<()> {
        let ports = [port("http", 80, "TCP", 8080)];
        let eps: Vec<(Ipv4Addr, bool)> =
            pods.iter().map(|p| (self.s.backend_ip(p), true)).collect();
        self.s.manifests.write(
            &format!("svc-{name}.yaml"),
            &format!(
                "{}\n---\n{}",
                service(NS, name, Ipv4Addr::new(198, 19, 0, ip_last), &ports),
                slice(NS, &format!("{name}-1"), name, &ports, &eps)
            ),
        )
    }

    /// Service `name` (port 80 -> 8080) with endpoints of `pods` in the given
    /// conditions: (pod, ready, serving, terminating).
    fn service_conditions(
        &self,
        name: &str,
        ip_last: u8,
        pods: &[(&str, bool, bool, bool)],
    ) -> Result<()> {
        let ports = [port("http", 80, "TCP", 8080)];
        let eps: Vec<Ep> = pods
            .iter()
            .map(|(p, ready, serving, terminating)| Ep {
                addr: self.s.backend_ip(p),
                ready: *ready,
                serving: *serving,
                terminating: *terminating,
                node: "node-a",
            })
            .collect();
        self.s.manifests.write(
            &format!("svc-{name}.yaml"),
            &format!(
                "{}\n---\n{}",
                service(NS, name, Ipv4Addr::new(198, 19, 0, ip_last), &ports),
                slice_eps(NS, &format!("{name}-1"), name, &ports, &eps)
            ),
        )
    }

    fn client(&self) -> &str {
        &self.s.sandbox.pod("client").netns.name
    }

    /// GET http://ADDR/PATH with Host `host` from the client pod.
    fn get(&self, addr: Ipv4Addr, host: &str, path: &str) -> Result<Curl> {
        curl(
            self.client(),
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://{addr}{path}"),
            ],
        )
    }

    /// Retries `f` until it returns Ok(true) (at most 15 s).
    fn wait(&self, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            match f() {
                Ok(true) => return Ok(()),
                Ok(false) => last = "condition not met".into(),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out waiting for {what} ({last}); agent log:\n{}",
            self.s.agent.log_text()
        )
    }

    /// Waits until host/path on the node address is served by `backend`.
    fn wait_served(&self, host: &str, path: &str, backend: &str) -> Result<()> {
        self.wait(&format!("{host}{path} served by {backend}"), || {
            let r = self.get(NODE_IP, host, path)?;
            Ok(r.status == 200 && r.backend()? == backend)
        })
    }
}

fn served_by(r: &Curl) -> String {
    r.backend()
        .unwrap_or_else(|_| format!("status {}", r.status))
}

#[test]
fn routes_hosts_and_paths_through_the_sk_lookup_handoff() -> Result<()> {
    let s = Setup::start(3, &[])?;
    s.service("a", 10, &["be1"])?;
    s.service("b", 11, &["be2"])?;
    s.service("c", 12, &["be3"])?;
    s.service("ab", 13, &["be1", "be2"])?;
    let m = &s.s.manifests;
    m.write("other-class.yaml", "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: other}\nspec: {controller: example.com/other}\n")?;
    m.write(
        "routes.yaml",
        &ingress(
            NS,
            "routes",
            &format!(
                r#"  ingressClassName: weir
  defaultBackend: {c}
  rules:
    - host: foo.example
      http:
        paths:
          - {{path: /app, pathType: Prefix, backend: {a}}}
          - {{path: /exact, pathType: Exact, backend: {b}}}
    - host: "*.wild.example"
      http: {{paths: [{{path: /, pathType: Prefix, backend: {a}}}]}}
    - host: lb.example
      http: {{paths: [{{path: /, pathType: Prefix, backend: {ab}}}]}}
"#,
                a = backend("a", 80),
                b = backend("b", 80),
                c = backend("c", 80),
                ab = backend("ab", 80)
            ),
        ),
    )?;
    m.write(
        "theirs.yaml",
        &ingress(
            NS,
            "theirs",
            &format!(
                "  ingressClassName: other\n  rules:\n    - host: other.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n",
                backend("a", 80)
            ),
        ),
    )?;
    s.wait_served("foo.example", "/app", "be1")?;

    // The backend saw the request as the client sent it, plus X-Forwarded-*.
    let r = s.get(NODE_IP, "foo.example", "/app/x?q=1")?;
    assert_eq!(r.status, 200);
    let seen = r.json()?;
    assert_eq!(seen["backend"], "be1");
    assert_eq!(seen["path"], "/app/x?q=1");
    assert_eq!(seen["host"], "foo.example");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["headers"]["x-forwarded-for"], CLIENT_IP);
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(seen["headers"]["x-forwarded-host"], "foo.example");

    // host_rules, path_rules, default_backend and ingress_class.
    for (host, path, want) in [
        ("foo.example", "/app", "be1"),
        ("foo.example", "/app/", "be1"),
        ("foo.example", "/apple", "be3"),
        ("foo.example", "/exact", "be2"),
        ("foo.example", "/exact/", "be3"),
        ("foo.example", "/EXACT", "be3"),
        ("x.wild.example", "/", "be1"),
        ("a.x.wild.example", "/", "be3"),
        ("wild.example", "/", "be3"),
        ("other.example", "/", "be3"),
        ("unknown.example", "/anything", "be3"),
    ] {
        let r = s.get(NODE_IP, host, path)?;
        assert_eq!(served_by(&r), want, "{host}{path}");
    }

    // load_balancing: both endpoints answer.
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(served_by(&s.get(NODE_IP, "lb.example", "/")?));
    }
    assert_eq!(seen, BTreeSet::from(["be1".to_string(), "be2".to_string()]));

    // The extra ingress address is handed off too.
    assert_eq!(served_by(&s.get(EXTRA_IP, "foo.example", "/app")?), "be1");

    // Nothing listens on :80 or :443 in the node; other ports are untouched.
    let ss = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", s.s.sandbox.node.name))
        .args(["--", "ss", "-Hltn"])
        .output()?;
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        !ss.lines()
            .any(|l| l.contains(":80 ") || l.contains(":443 ")),
        "something listens on :80/:443:\n{ss}"
    );
    let refused = curl(s.client(), &[&format!("http://{NODE_IP}:81/")]);
    assert!(refused.is_err(), "port 81 answered: {refused:?}");
    let not_ingress = curl(s.client(), &["http://198.18.1.11:80/"]);
    assert!(not_ingress.is_err(), "be1:80 answered: {not_ingress:?}");
    Ok(())
}

fn self_signed(host: &str) -> Result<(String, String)> {
    self_signed_for(&[host])
}

/// A self-signed certificate (PEM) for these names, and its key.
fn self_signed_for(hosts: &[&str]) -> Result<(String, String)> {
    let c = rcgen::generate_simple_self_signed(
        hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    )?;
    Ok((c.cert.pem(), c.signing_key.serialize_pem()))
}

/// A temporary file removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("weir-ingress-{}-{name}", std::process::id()));
        std::fs::write(&path, text)?;
        Ok(Self(path))
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// GET https://HOST/ through the node address, trusting only `ca`.
fn get_tls(s: &Setup, host: &str, ca: &TempFile, extra: &[&str]) -> Result<Curl> {
    get_tls_port(s, host, 443, ca, extra)
}

/// GET https://HOST:PORT/ through the node address, trusting only `ca`.
fn get_tls_port(s: &Setup, host: &str, port: u16, ca: &TempFile, extra: &[&str]) -> Result<Curl> {
    let resolve = format!("{host}:{port}:{NODE_IP}");
    let url = format!("https://{host}:{port}/");
    let mut args = vec!["--resolve", &resolve, "--cacert", ca.path()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(s.client(), &args)
}

#[test]
fn https_picks_certificates_by_sni_speaks_http2_and_follows_rotation() -> Result<()> {
    let (default_crt, default_key) = self_signed("default.example")?;
    let default_crt_file = TempFile::new("default.crt", &default_crt)?;
    let default_key_file = TempFile::new("default.key", &default_key)?;
    let cert_flag = format!("--ingress-default-cert={}", default_crt_file.path());
    let key_flag = format!("--ingress-default-key={}", default_key_file.path());
    let s = Setup::start(2, &[&cert_flag, &key_flag])?;
    s.service("a", 10, &["be1"])?;
    s.service("b", 11, &["be2"])?;
    let (a_crt, a_key) = self_signed("a.example")?;
    let (b_crt, b_key) = self_signed("b.example")?;
    let a_ca = TempFile::new("a.crt", &a_crt)?;
    let b_ca = TempFile::new("b.crt", &b_crt)?;
    let m = &s.s.manifests;
    m.write("a-tls.yaml", &tls_secret(NS, "a-tls", &a_crt, &a_key))?;
    m.write("b-tls.yaml", &tls_secret(NS, "b-tls", &b_crt, &b_key))?;
    m.write(
        "tls.yaml",
        &ingress(
            NS,
            "tls",
            &format!(
                r#"  ingressClassName: weir
  tls:
    - {{hosts: [a.example], secretName: a-tls}}
    - {{hosts: [b.example], secretName: b-tls}}
  rules:
    - host: a.example
      http: {{paths: [{{path: /, pathType: Prefix, backend: {a}}}]}}
    - host: b.example
      http: {{paths: [{{path: /, pathType: Prefix, backend: {b}}}]}}
    - host: default.example
      http: {{paths: [{{path: /, pathType: Prefix, backend: {b}}}]}}
"#,
                a = backend("a", 80),
                b = backend("b", 80)
            ),
        ),
    )?;
    s.wait("a.example over TLS", || {
        Ok(get_tls(&s, "a.example", &a_ca, &[])?.status == 200)
    })?;

    // Each host gets its own certificate (curl trusts only that one), over
    // HTTP/2 or HTTP/1.1 as ALPN decides; the backend sees HTTP/1.1.
    let r = get_tls(&s, "a.example", &a_ca, &["--http2"])?;
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"));
    let seen = r.json()?;
    assert_eq!(seen["backend"], "be1");
    assert_eq!(seen["host"], "a.example");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-for"], CLIENT_IP);
    let r = get_tls(&s, "b.example", &b_ca, &["--http1.1"])?;
    assert_eq!((r.status, r.http_version.as_str()), (200, "1.1"));
    assert_eq!(r.backend()?, "be2");
    assert!(
        get_tls(&s, "b.example", &a_ca, &[]).is_err(),
        "b.example must not present a.example's certificate"
    );
    // A name without a Secret gets the default certificate.
    let r = get_tls(&s, "default.example", &default_crt_file, &[])?;
    assert_eq!(r.backend()?, "be2");
    // TLS 1.1 is refused; 1.2 and 1.3 work.
    assert!(get_tls(&s, "a.example", &a_ca, &["--tls-max", "1.1"]).is_err());
    for v in ["1.2", "1.3"] {
        let r = get_tls(
            &s,
            "a.example",
            &a_ca,
            &["--tls-max", v, &format!("--tlsv{v}")],
        )?;
        assert_eq!(r.status, 200, "TLS {v}");
    }

    // Rotation: a new certificate in the Secret is served without a restart.
    let (a2_crt, a2_key) = self_signed("a.example")?;
    let a2_ca = TempFile::new("a2.crt", &a2_crt)?;
    m.write("a-tls.yaml", &tls_secret(NS, "a-tls", &a2_crt, &a2_key))?;
    s.wait("the rotated certificate", || {
        Ok(get_tls(&s, "a.example", &a2_ca, &[]).is_ok_and(|r| r.status == 200))
    })?;
    assert!(
        get_tls(&s, "a.example", &a_ca, &[]).is_err(),
        "old certificate still served"
    );
    Ok(())
}

#[test]
fn websocket_upgrades_are_tunnelled_to_the_backend() -> Result<()> {
    let s = Setup::start(1, &[])?;
    s.service("ws", 10, &["be1"])?;
    s.s.manifests.write(
        "ws.yaml",
        &ingress(
            NS,
            "ws",
            &format!(
                "  ingressClassName: weir\n  rules:\n    - host: ws.example\n      http: {{paths: [{{path: /ws, pathType: Exact, backend: {}}}]}}\n",
                backend("ws", 80)
            ),
        ),
    )?;
    s.wait_served("ws.example", "/ws", "be1")?;
    let replies = in_netns(s.client(), || -> Result<Vec<String>> {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let io = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(SocketAddr::from((NODE_IP, 80))),
            )
            .await??;
            let (mut ws, resp) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::client_async("ws://ws.example/ws", io),
            )
            .await??;
            anyhow::ensure!(resp.status() == 101, "status {}", resp.status());
            let mut out = Vec::new();
            for i in 0..3 {
                ws.send(Message::text(format!("hello {i}"))).await?;
                let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await?
                    .context("stream ended")??;
                out.push(msg.into_text()?.to_string());
            }
            ws.close(None).await?;
            Ok(out)
        })
    })??;
    assert_eq!(replies, ["be1: hello 0", "be1: hello 1", "be1: hello 2"]);
    Ok(())
}

#[test]
fn a_backend_going_away_mid_test_fails_no_request() -> Result<()> {
    let mut s = Setup::start(2, &[])?;
    s.service("app", 10, &["be1", "be2"])?;
    s.s.manifests
        .write("app.yaml", &default_backend_ingress())?;
    s.wait_served("any.example", "/", "be1")?;
    s.wait_served("any.example", "/", "be2")?;
    // be1's server stops: its endpoint is still listed, connections to it are
    // refused, and every request is retried on be2.
    s.backends[0] = None;
    for i in 0..20 {
        let r = s.get(NODE_IP, "any.example", "/")?;
        assert_eq!(
            (r.status, served_by(&r)),
            (200, "be2".to_string()),
            "request {i}"
        );
    }
    // The EndpointSlice catches up: be1 is removed.
    s.service("app", 10, &["be2"])?;
    for i in 0..10 {
        let r = s.get(NODE_IP, "any.example", "/")?;
        assert_eq!(served_by(&r), "be2", "request {i}");
    }
    // No endpoint accepts: 502; no endpoint at all: 503.
    s.backends[1] = None;
    assert_eq!(s.get(NODE_IP, "any.example", "/")?.status, 502);
    s.service("app", 10, &[])?;
    s.wait("503 without endpoints", || {
        Ok(s.get(NODE_IP, "any.example", "/")?.status == 503)
    })?;
    Ok(())
}

/// Sends one HTTP/1.1 request for `/` over `conn` and reads the response (status, body).
fn keepalive_request(conn: &mut TcpStream, host: &str) -> Result<(u16, String)> {
    keepalive_get(conn, host, "/")
}

#[test]
fn configuration_changes_under_load_fail_no_request() -> Result<()> {
    let s = Setup::start(3, &[])?;
    s.service("app", 10, &["be1", "be2"])?;
    let app = |extra_rules: &str| {
        ingress(
            NS,
            "app",
            &format!(
                "  ingressClassName: weir\n  rules:\n    - host: load.example\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n{extra_rules}",
                backend("app", 80)
            ),
        )
    };
    s.s.manifests.write("app.yaml", &app(""))?;
    s.wait_served("load.example", "/", "be1")?;

    // Four clients, each on one keep-alive connection, request as fast as they
    // can (bounded in count and time) while the configuration changes.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, ns) = (stop.clone(), ok.clone(), s.client().to_string());
            std::thread::spawn(move || -> Result<Vec<String>> {
                let mut failures = Vec::new();
                let result = in_netns(&ns, move || -> Result<Vec<String>> {
                    let started = Instant::now();
                    let mut conn = TcpStream::connect_timeout(
                        &SocketAddr::from((NODE_IP, 80)),
                        Duration::from_secs(2),
                    )?;
                    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                    for i in 0..20_000 {
                        if stop.load(Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(60)
                        {
                            break;
                        }
                        match keepalive_request(&mut conn, "load.example") {
                            Ok((200, body)) if body.contains("\"be") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, body)) => {
                                failures.push(format!("request {i}: {status} {body}"))
                            }
                            Err(e) => {
                                failures.push(format!("request {i}: {e:#}"));
                                break;
                            }
                        }
                    }
                    Ok(failures)
                })??;
                Ok(result)
            })
        })
        .collect();

    // Twenty changes: Ingresses added and removed, rules added, endpoints
    // scaled between be1+be2 and be1+be2+be3.
    for i in 0..20 {
        if i % 2 == 0 {
            s.s.manifests.write(
                "app.yaml",
                &app(&format!(
                    "    - host: extra{i}.example\n      http: {{paths: [{{path: /x, pathType: Exact, backend: {}}}]}}\n",
                    backend("app", 80)
                )),
            )?;
            s.service("app", 10, &["be1", "be2", "be3"])?;
            s.s.manifests.write(
                "other.yaml",
                &ingress(
                    NS,
                    "other",
                    &format!(
                        "  ingressClassName: weir\n  defaultBackend: {}\n",
                        backend("app", 80)
                    ),
                ),
            )?;
        } else {
            s.s.manifests.write("app.yaml", &app(""))?;
            s.service("app", 10, &["be1", "be2"])?;
            s.s.manifests.remove("other.yaml")?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    let updates =
        s.s.agent
            .log_text()
            .matches("ingress routes updated")
            .count();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
    assert!(updates >= 10, "only {updates} routing table swaps");
    Ok(())
}

/// Sends raw bytes to the node's port 80 and returns the status line's code.
fn raw_status(s: &Setup, request: Vec<u8>) -> Result<u16> {
    in_netns(s.client(), move || -> Result<u16> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((NODE_IP, 80)), Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(&request)?;
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {text:?}"))
    })?
}

#[test]
fn bad_input_is_reported_and_skipped_and_bad_requests_get_400_and_431() -> Result<()> {
    let s = Setup::start(1, &[])?;
    s.service("good", 10, &["be1"])?;
    s.s.manifests.write(
        "broken.yaml",
        &ingress(
            NS,
            "broken",
            &format!(
                r#"  ingressClassName: weir
  tls:
    - {{hosts: [ok.example], secretName: missing-tls}}
  rules:
    - host: ok.example
      http:
        paths:
          - {{path: /missing, pathType: Prefix, backend: {missing}}}
          - {{path: /good, pathType: Prefix, backend: {good}}}
          - {{path: nope, pathType: Prefix, backend: {good}}}
"#,
                missing = backend("nope", 80),
                good = backend("good", 80)
            ),
        ),
    )?;
    s.wait_served("ok.example", "/good", "be1")?;
    assert_eq!(s.get(NODE_IP, "ok.example", "/missing")?.status, 404);
    let log = s.s.agent.log_text();
    for needle in [
        "Ingress e2e/broken: spec.rules[0].http.paths[0].backend: Service e2e/nope not found; path skipped",
        "Ingress e2e/broken: spec.rules[0].http.paths[2].path: invalid path \"nope\"",
        "Ingress e2e/broken: spec.tls[0]: Secret e2e/missing-tls (kubernetes.io/tls) not found",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }

    assert_eq!(raw_status(&s, b"NOT HTTP AT ALL\r\n\r\n".to_vec())?, 400);
    let mut big = b"GET / HTTP/1.1\r\nHost: ok.example\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_status(&s, big)?, 431);
    // The proxy is still serving.
    assert_eq!(served_by(&s.get(NODE_IP, "ok.example", "/good")?), "be1");
    Ok(())
}

#[test]
fn serves_h2c_and_keeps_serving_after_an_agent_restart() -> Result<()> {
    let mut s = Setup::start(1, &[])?;
    s.service("app", 10, &["be1"])?;
    s.s.manifests
        .write("app.yaml", &default_backend_ingress())?;
    s.wait_served("h.example", "/", "be1")?;
    // HTTP/2 with prior knowledge on the plain port.
    let r = curl(
        s.client(),
        &[
            "--http2-prior-knowledge",
            "-H",
            "Host: h.example",
            &format!("http://{NODE_IP}/"),
        ],
    )?;
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"));
    assert_eq!(r.backend()?, "be1");
    // A restarted agent attaches the hand-off anew (the old link went with
    // the old process) and serves again.
    s.s.agent.restart()?;
    s.wait_served("h.example", "/", "be1")?;
    let links = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", s.s.sandbox.node.name))
        .args(["--", "bpftool", "-j", "link", "show"])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&links.stdout).unwrap_or_default();
    let netns_ino = std::fs::metadata(format!("/var/run/netns/{}", s.s.sandbox.node.name))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
    let ours = links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| {
                    l["type"] == "netns"
                        && l["netns_ino"] == netns_ino
                        && l["attach_type"] == "sk_lookup"
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(ours, 1, "sk_lookup links on the node's netns: {links}");
    Ok(())
}

#[test]
fn reuses_upstream_connections_and_closes_slow_clients_without_stalling_others() -> Result<()> {
    let s = Setup::start(1, &["--ingress-header-timeout=1s"])?;
    s.service("app", 10, &["be1"])?;
    s.s.manifests
        .write("app.yaml", &default_backend_ingress())?;
    s.wait_served("r.example", "/", "be1")?;

    // A client that never finishes its headers (slowloris) holds one connection...
    let slow = in_netns(s.client(), || -> Result<TcpStream> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((NODE_IP, 80)), Duration::from_secs(2))?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: r.example\r\nX-Slow: ")?;
        Ok(conn)
    })??;
    // ...while 20 separate client connections are served, over fewer upstream connections.
    let mut upstream_connections = BTreeSet::new();
    for i in 0..20 {
        let r = s.get(NODE_IP, "r.example", "/")?;
        assert_eq!(r.status, 200, "request {i}");
        upstream_connections.insert(r.json()?["connection"].as_u64().context("connection")?);
    }
    assert!(
        upstream_connections.len() < 20,
        "every request opened its own upstream connection: {upstream_connections:?}"
    );
    // The slow client is closed after the header timeout (bounded wait).
    let mut slow = slow;
    slow.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 512];
    let n = match slow.read(&mut buf) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("the slow client is still open after 10 s")
        }
        // Reset: closed too.
        Err(_) => 0,
    };
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 408"),
        "the slow client got {answer:?} instead of a close"
    );
    Ok(())
}

/// An Ingress of class weir for host `host` with these (path, pathType, service) rules.
fn path_ingress(name: &str, host: &str, paths: &[(&str, &str, &str)]) -> String {
    let mut spec = format!(
        "  ingressClassName: weir\n  rules:\n    - host: {host}\n      http:\n        paths:\n"
    );
    for (path, path_type, svc) in paths {
        spec.push_str(&format!(
            "          - {{path: {path}, pathType: {path_type}, backend: {}}}\n",
            backend(svc, 80)
        ));
    }
    ingress(NS, name, &spec)
}

#[test]
fn overlapping_paths_of_two_ingresses_route_longest_first_and_exact_before_prefix() -> Result<()> {
    let s = Setup::start(3, &[])?;
    s.service("app", 10, &["be1"])?;
    s.service("v2", 11, &["be2"])?;
    s.service("exact", 12, &["be3"])?;
    let m = &s.s.manifests;
    m.write(
        "app.yaml",
        &path_ingress(
            "app",
            "prec.example",
            &[("/app", "Prefix", "app"), ("/app", "Exact", "exact")],
        ),
    )?;
    m.write(
        "v2.yaml",
        &path_ingress("v2", "prec.example", &[("/app/v2", "Prefix", "v2")]),
    )?;
    s.wait_served("prec.example", "/app/v2/x", "be2")?;
    s.wait_served("prec.example", "/app/x", "be1")?;
    for (path, want) in [
        ("/app/v2/x", "be2"),
        ("/app/v2", "be2"),
        ("/app/v2/", "be2"),
        ("/app/v3", "be1"),
        ("/app/v20", "be1"),
        ("/app", "be3"),
        ("/app/", "be1"),
        ("/app/x", "be1"),
        ("/apps", "status 404"),
    ] {
        let r = s.get(NODE_IP, "prec.example", path)?;
        assert_eq!(served_by(&r), want, "prec.example{path}");
    }
    let log = s.s.agent.log_text();
    assert!(
        !log.contains("already defined"),
        "overlapping rules are not conflicts:\n{log}"
    );
    Ok(())
}

#[test]
fn classless_ingresses_are_served_only_while_weirs_class_is_the_default() -> Result<()> {
    let s = Setup::start(2, &[])?;
    s.service("a", 10, &["be1"])?;
    s.service("b", 11, &["be2"])?;
    let m = &s.s.manifests;
    let rule = |host: &str, svc: &str| {
        format!(
            "  rules:\n    - host: {host}\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n",
            backend(svc, 80)
        )
    };
    m.write(
        "classed.yaml",
        &ingress(
            NS,
            "classed",
            &format!("  ingressClassName: weir\n{}", rule("classed.example", "a")),
        ),
    )?;
    m.write(
        "classless.yaml",
        &ingress(NS, "classless", &rule("none.example", "b")),
    )?;
    m.write(
        "legacy.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: legacy\n  namespace: {NS}\n  annotations: {{kubernetes.io/ingress.class: weir}}\nspec:\n{}",
            rule("legacy.example", "b")
        ),
    )?;
    // Setup's IngressClass "weir" has no default annotation.
    s.wait_served("classed.example", "/", "be1")?;
    assert_eq!(served_by(&s.get(NODE_IP, "legacy.example", "/")?), "be2");
    assert_eq!(s.get(NODE_IP, "none.example", "/")?.status, 404);

    // Weir's class becomes the default: the classless Ingress is served.
    m.write("class.yaml", &ingress_class("weir", true))?;
    s.wait_served("none.example", "/", "be2")?;
    // ...and stops being served once the annotation says "false".
    m.write(
        "class.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: weir\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"false\"}\nspec:\n  controller: weir.dev/ingress-controller\n",
    )?;
    s.wait("none.example no longer served", || {
        Ok(s.get(NODE_IP, "none.example", "/")?.status == 404)
    })?;
    assert_eq!(served_by(&s.get(NODE_IP, "classed.example", "/")?), "be1");
    assert_eq!(served_by(&s.get(NODE_IP, "legacy.example", "/")?), "be2");
    Ok(())
}

#[test]
fn malformed_certificates_are_reported_and_their_hosts_get_the_default_certificate() -> Result<()> {
    // The default certificate names the hosts whose Secrets are broken, so
    // that curl, trusting only it, proves which certificate was served.
    let (default_crt, default_key) =
        self_signed_for(&["default.example", "g.example", "m.example"])?;
    let default_ca = TempFile::new("fallback-default.crt", &default_crt)?;
    let default_key_file = TempFile::new("fallback-default.key", &default_key)?;
    let cert_flag = format!("--ingress-default-cert={}", default_ca.path());
    let key_flag = format!("--ingress-default-key={}", default_key_file.path());
    let s = Setup::start(2, &[&cert_flag, &key_flag])?;
    s.service("a", 10, &["be1"])?;
    s.service("b", 11, &["be2"])?;
    let (a_crt, a_key) = self_signed("a.example")?;
    let (c_crt, c_key) = self_signed("c.example")?;
    let (m_crt, _) = self_signed("m.example")?;
    let a_ca = TempFile::new("fallback-a.crt", &a_crt)?;
    let c_ca = TempFile::new("fallback-c.crt", &c_crt)?;
    let m_ca = TempFile::new("fallback-m.crt", &m_crt)?;
    let m = &s.s.manifests;
    m.write("a-tls.yaml", &tls_secret(NS, "a-tls", &a_crt, &a_key))?;
    m.write("c-tls.yaml", &tls_secret(NS, "c-tls", &c_crt, &c_key))?;
    m.write(
        "garbage-tls.yaml",
        &tls_secret(
            NS,
            "garbage-tls",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        ),
    )?;
    // m.example's certificate with a.example's key.
    m.write(
        "mismatch-tls.yaml",
        &tls_secret(NS, "mismatch-tls", &m_crt, &a_key),
    )?;
    let host_rule = |host: &str, svc: &str| {
        format!(
            "    - host: {host}\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}\n",
            backend(svc, 80)
        )
    };
    m.write(
        "good.yaml",
        &ingress(
            NS,
            "good",
            &format!(
                "  ingressClassName: weir\n  tls:\n    - {{hosts: [a.example], secretName: a-tls}}\n  rules:\n{}",
                host_rule("a.example", "a")
            ),
        ),
    )?;
    m.write(
        "bad.yaml",
        &ingress(
            NS,
            "bad",
            &format!(
                "  ingressClassName: weir\n  tls:\n    - {{hosts: [g.example], secretName: garbage-tls}}\n    - {{hosts: [m.example], secretName: mismatch-tls}}\n    - {{hosts: [c.example], secretName: c-tls}}\n  rules:\n{}{}{}",
                host_rule("g.example", "b"),
                host_rule("m.example", "b"),
                host_rule("c.example", "b")
            ),
        ),
    )?;
    // bad.yaml is written last: once c.example is served, so are the others.
    s.wait("c.example over TLS", || {
        Ok(get_tls(&s, "c.example", &c_ca, &[])?.status == 200)
    })?;

    // Hosts with good Secrets keep their certificates, in either Ingress.
    assert_eq!(get_tls(&s, "a.example", &a_ca, &[])?.backend()?, "be1");
    assert_eq!(get_tls(&s, "c.example", &c_ca, &[])?.backend()?, "be2");
    // The hosts of broken Secrets get the default certificate and are still routed.
    for host in ["g.example", "m.example"] {
        let r = get_tls(&s, host, &default_ca, &[])?;
        assert_eq!((r.status, r.backend()?.as_str()), (200, "be2"), "{host}");
    }
    assert!(
        get_tls(&s, "m.example", &m_ca, &[]).is_err(),
        "the certificate of a mismatched pair must not be served"
    );
    let log = s.s.agent.log_text();
    for needle in [
        "Ingress e2e/bad: spec.tls[0]: Secret e2e/garbage-tls: tls.crt: not an X.509 certificate",
        "hosts [\"g.example\"] get the default certificate",
        "Ingress e2e/bad: spec.tls[1]: Secret e2e/mismatch-tls: tls.key does not belong to the certificate in tls.crt; hosts [\"m.example\"] get the default certificate",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    assert!(
        !log.contains("Secret e2e/c-tls") && !log.contains("Secret e2e/a-tls"),
        "good Secrets reported:\n{log}"
    );

    // Repairing the Secret gives its host its own certificate again.
    let (g_crt, g_key) = self_signed("g.example")?;
    let g_ca = TempFile::new("fallback-g.crt", &g_crt)?;
    m.write(
        "garbage-tls.yaml",
        &tls_secret(NS, "garbage-tls", &g_crt, &g_key),
    )?;
    s.wait("the repaired certificate", || {
        Ok(get_tls(&s, "g.example", &g_ca, &[]).is_ok_and(|r| r.status == 200))
    })?;
    Ok(())
}

/// Default-backend Ingress "app" for Service app.
fn default_backend_ingress() -> String {
    ingress(
        NS,
        "app",
        &format!(
            "  ingressClassName: weir\n  defaultBackend: {}\n",
            backend("app", 80)
        ),
    )
}

#[test]
fn a_slow_upstream_gets_504_after_the_upstream_timeout() -> Result<()> {
    let s = Setup::start(1, &["--ingress-upstream-timeout=1s"])?;
    s.service("app", 10, &["be1"])?;
    s.s.manifests
        .write("app.yaml", &default_backend_ingress())?;
    s.wait_served("slow.example", "/", "be1")?;
    // The backend would answer after 5 s: the proxy gives up after 1 s.
    let started = Instant::now();
    let r = s.get(NODE_IP, "slow.example", "/?delay_ms=5000")?;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "504 after {took:?}"
    );
    // An answer within the limit is passed on, and later requests are served.
    let r = s.get(NODE_IP, "slow.example", "/?delay_ms=300")?;
    assert_eq!((r.status, served_by(&r)), (200, "be1".to_string()));
    for i in 0..5 {
        let r = s.get(NODE_IP, "slow.example", "/")?;
        assert_eq!(r.status, 200, "request {i} after the timeout");
    }
    Ok(())
}

#[test]
fn idle_client_connections_close_after_the_idle_timeout_while_busy_ones_are_served() -> Result<()> {
    let s = Setup::start(1, &["--ingress-idle-timeout=1s"])?;
    s.service("app", 10, &["be1"])?;
    s.s.manifests
        .write("app.yaml", &default_backend_ingress())?;
    s.wait_served("idle.example", "/", "be1")?;
    let connect = || -> Result<TcpStream> {
        let conn =
            TcpStream::connect_timeout(&SocketAddr::from((NODE_IP, 80)), Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(conn)
    };

    // A busy client: requests 400 ms apart, then one whose answer takes 2.5 s
    // (longer than the idle timeout: waiting for the upstream is not idle),
    // then one more, all on one connection.
    let ns = s.client().to_string();
    let busy = std::thread::spawn(move || {
        in_netns(&ns, move || -> Result<Vec<u16>> {
            let mut conn = connect()?;
            let mut statuses = Vec::new();
            for i in 0..6 {
                let (status, _) = keepalive_get(&mut conn, "idle.example", "/")
                    .with_context(|| format!("request {i}"))?;
                statuses.push(status);
                std::thread::sleep(Duration::from_millis(400));
            }
            for path in ["/?delay_ms=2500", "/"] {
                let (status, body) = keepalive_get(&mut conn, "idle.example", path)
                    .with_context(|| format!("request for {path}"))?;
                anyhow::ensure!(body.contains("\"be1\""), "{path}: {body}");
                statuses.push(status);
            }
            Ok(statuses)
        })
    });

    // Meanwhile an idle client: one request, then silence until the proxy closes.
    let closed_after = in_netns(s.client(), move || -> Result<Duration> {
        let mut conn = connect()?;
        let (status, _) = keepalive_get(&mut conn, "idle.example", "/")?;
        anyhow::ensure!(status == 200, "status {status}");
        let answered = Instant::now();
        let mut buf = [0u8; 256];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => bail!(
                "unexpected bytes on the idle connection: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("the idle connection is still open after 10 s")
            }
            // Reset: closed too.
            Err(_) => {}
        }
        Ok(answered.elapsed())
    })??;
    let statuses = busy
        .join()
        .map_err(|_| anyhow::anyhow!("busy client panicked"))???;
    // Closed by the idle timeout, not before (a little slack for the clock
    // starting at the proxy's last write, just before `answered`).
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_secs(5),
        "idle connection closed after {closed_after:?}"
    );
    assert_eq!(statuses, [200; 8]);
    Ok(())
}

#[test]
fn not_ready_endpoints_get_no_requests_and_terminating_ones_only_without_a_ready_one() -> Result<()>
{
    let s = Setup::start(3, &[])?;
    s.s.manifests
        .write("app.yaml", &default_backend_ingress())?;
    // Every backend's server runs: only the conditions decide.
    const READY: (bool, bool, bool) = (true, true, false);
    const NOT_READY: (bool, bool, bool) = (false, false, false);
    const SERVING_TERMINATING: (bool, bool, bool) = (false, true, true);
    const TERMINATING: (bool, bool, bool) = (false, false, true);
    let set = |eps: &[(&str, (bool, bool, bool))]| {
        let eps: Vec<(&str, bool, bool, bool)> = eps
            .iter()
            .map(|(p, (r, sv, t))| (*p, *r, *sv, *t))
            .collect();
        s.service_conditions("app", 10, &eps)
    };
    let count = |n: usize| -> Result<BTreeMap<String, usize>> {
        let mut by = BTreeMap::new();
        for _ in 0..n {
            *by.entry(served_by(&s.get(NODE_IP, "ep.example", "/")?))
                .or_insert(0) += 1;
        }
        Ok(by)
    };
    let only = |backend: &str, n: usize| BTreeMap::from([(backend.to_string(), n)]);

    set(&[
        ("be1", READY),
        ("be2", NOT_READY),
        ("be3", SERVING_TERMINATING),
    ])?;
    s.wait_served("ep.example", "/", "be1")?;
    assert_eq!(count(30)?, only("be1", 30));

    // No ready endpoint: the serving-and-terminating one, never the not-ready one.
    set(&[("be2", NOT_READY), ("be3", SERVING_TERMINATING)])?;
    s.wait_served("ep.example", "/", "be3")?;
    assert_eq!(count(30)?, only("be3", 30));

    // A ready endpoint again: the terminating one gets nothing.
    set(&[
        ("be1", READY),
        ("be2", NOT_READY),
        ("be3", SERVING_TERMINATING),
    ])?;
    s.wait_served("ep.example", "/", "be1")?;
    assert_eq!(count(30)?, only("be1", 30));

    // Terminating and no longer serving, or not ready: nothing to use, 503.
    set(&[("be2", NOT_READY), ("be3", TERMINATING)])?;
    s.wait("503 without usable endpoints", || {
        Ok(s.get(NODE_IP, "ep.example", "/")?.status == 503)
    })?;
    Ok(())
}

#[test]
fn non_default_ports_are_handed_off_and_80_and_443_are_left_alone() -> Result<()> {
    let s = Setup::start(
        1,
        &["--ingress-http-port=8081", "--ingress-https-port=8444"],
    )?;
    s.service("app", 10, &["be1"])?;
    let (crt, key) = self_signed("p.example")?;
    let ca = TempFile::new("ports.crt", &crt)?;
    let m = &s.s.manifests;
    m.write("p-tls.yaml", &tls_secret(NS, "p-tls", &crt, &key))?;
    m.write(
        "app.yaml",
        &ingress(
            NS,
            "app",
            &format!(
                "  ingressClassName: weir\n  tls:\n    - {{hosts: [p.example], secretName: p-tls}}\n  defaultBackend: {}\n",
                backend("app", 80)
            ),
        ),
    )?;
    let get = |addr: Ipv4Addr, port: u16| {
        curl(
            s.client(),
            &["-H", "Host: p.example", &format!("http://{addr}:{port}/")],
        )
    };
    s.wait("plain HTTP on :8081", || {
        Ok(get(NODE_IP, 8081)?.status == 200)
    })?;
    assert_eq!(served_by(&get(NODE_IP, 8081)?), "be1");
    assert_eq!(served_by(&get(EXTRA_IP, 8081)?), "be1");
    s.wait("HTTPS on :8444", || {
        Ok(get_tls_port(&s, "p.example", 8444, &ca, &[])?.status == 200)
    })?;
    assert_eq!(
        get_tls_port(&s, "p.example", 8444, &ca, &[])?.backend()?,
        "be1"
    );
    // The default ports are not taken over (nothing listens there).
    let plain = get(NODE_IP, 80);
    assert!(plain.is_err(), ":80 answered: {plain:?}");
    let tls = get_tls_port(&s, "p.example", 443, &ca, &[]);
    assert!(tls.is_err(), ":443 answered: {tls:?}");
    // Without --ingress-default-cert, a name with no certificate is refused
    // in the handshake (-k: not for want of trust).
    let refused = get_tls_port(&s, "nocert.example", 8444, &ca, &["-k"]);
    assert!(refused.is_err(), "no certificate, yet: {refused:?}");
    Ok(())
}
