//! End-to-end tests of the Gateway API in the embedded proxy: the upstream
//! conformance manifests (tests/data/gateway-conformance, unchanged) are
//! served by the agent from its directory source; clients in a pod
//! namespace connect to each Gateway's own address (from
//! --gateway-address-pool, routed local on the node) on the listener port,
//! where nothing listens: the sk_lookup hand-off gives the connections to
//! the proxy, which routes them by HTTPRoute to HTTP backends in pod
//! namespaces. Each backend answers with JSON of what it saw; what the
//! client and the backend see is what the upstream Go tests check.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use weir_tests::{
    cmd::ip,
    http_backend::HttpBackend,
    ingress::{curl, Curl},
    manifests::{port, slice_eps, Ep},
    scenario::Scenario,
};

const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";
const POOL: &str = "198.19.2.0/24";
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/gateway-conformance");
const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n";

fn manifest(name: &str) -> Result<String> {
    let path = format!("{DATA}/{name}.yaml");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .replace("{GATEWAY_CLASS_NAME}", "weir"))
}

/// The sandbox: backends standing for the suite's pods (be1 = infra-backend-v1,
/// be2 = -v2, be3 = -v3, be4 = web-backend), their EndpointSlices, and the
/// suite's base manifests.
struct Suite {
    backends: Vec<HttpBackend>,
    s: Scenario,
}

/// (pod, its name as the suite's backend, Service namespace, Service, port name).
const PODS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "be1",
        "infra-backend-v1-pod-a",
        INFRA,
        "infra-backend-v1",
        "first-port",
    ),
    (
        "be2",
        "infra-backend-v2-pod-a",
        INFRA,
        "infra-backend-v2",
        "",
    ),
    (
        "be3",
        "infra-backend-v3-pod-a",
        INFRA,
        "infra-backend-v3",
        "",
    ),
    ("be4", "web-backend-pod-a", WEB, "web-backend", ""),
];

impl Suite {
    fn start() -> Result<Self> {
        let pool = format!("--gateway-address-pool={POOL}");
        let s = Scenario::start_with(4, &[], &["--ingress", &pool])?;
        // The pool is routed to the node and local on it (as LoadBalancer
        // addresses are on a real node).
        ip(&[
            "-n",
            &s.sandbox.node.name,
            "route",
            "add",
            "local",
            POOL,
            "dev",
            "lo",
        ])?;
        let mut backends = Vec::new();
        let mut slices = Vec::new();
        for (pod, name, ns, svc, port_name) in PODS {
            backends.push(HttpBackend::start(
                &s.sandbox.pod(pod).netns.name,
                name,
                3000,
            )?);
            let ports = [port(port_name, 8080, "TCP", 3000)];
            let eps = [Ep::ready(s.backend_ip(pod), "node-a")];
            slices.push(slice_eps(ns, &format!("{svc}-1"), svc, &ports, &eps));
        }
        s.manifests.write("class.yaml", CLASS)?;
        s.manifests.write("slices.yaml", &slices.join("\n---\n"))?;
        s.manifests
            .write("base.yaml", &manifest("base-manifests")?)?;
        Ok(Self { backends, s })
    }

    fn apply(&self, test: &str) -> Result<()> {
        self.s
            .manifests
            .write(&format!("{test}.yaml"), &manifest(test)?)
    }

    fn client(&self) -> &str {
        &self.s.sandbox.pod("client").netns.name
    }

    fn status(&self) -> Result<serde_json::Value> {
        self.s.agent.cli_json(&["gateway", "status"])
    }

    /// The address of Gateway `gw` in the infra namespace, once it has one.
    fn address(&self, gw: &str) -> Result<Ipv4Addr> {
        let mut found = None;
        self.wait(&format!("an address for Gateway {gw}"), || {
            let status = self.status()?;
            let g = status["gateways"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["namespace"] == INFRA && g["name"] == gw);
            found = g
                .and_then(|g| g["addresses"][0]["value"].as_str())
                .and_then(|a| a.parse().ok());
            Ok(found.is_some())
        })?;
        found.context("no address")
    }

    /// curl from the client pod to the Gateway address on port 80 with extra arguments.
    fn request(&self, addr: Ipv4Addr, path: &str, args: &[&str]) -> Result<Curl> {
        let url = format!("http://{addr}{path}");
        let mut all: Vec<&str> = args.to_vec();
        all.push(&url);
        curl(self.client(), &all)
    }

    /// Retries `f` until it returns Ok(true) (at most 20 s).
    fn wait(&self, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
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

    /// Waits until `path` on `addr` is answered by a backend whose name starts with `prefix`.
    fn wait_backend(
        &self,
        addr: Ipv4Addr,
        path: &str,
        args: &[&str],
        prefix: &str,
    ) -> Result<Curl> {
        let mut last = None;
        self.wait(&format!("{path} served by {prefix}"), || {
            let r = self.request(addr, path, args)?;
            let ok = r.status == 200 && r.backend()?.starts_with(prefix);
            last = Some(r);
            Ok(ok)
        })?;
        last.context("no answer")
    }
}

/// The element of JSON array `list` whose `key` is `value`.
fn find<'a>(
    list: &'a serde_json::Value,
    key: &str,
    value: impl PartialEq<serde_json::Value>,
) -> Option<&'a serde_json::Value> {
    list.as_array()?.iter().find(|x| value == x[key])
}

/// curl arguments that print the redirect's Location as the body (and the status as usual).
const REDIRECT_URL: &[&str] = &[
    "-o",
    "/dev/null",
    "-w",
    "%{redirect_url}\n%{http_code} %{http_version}",
];

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen["headers"][name.to_ascii_lowercase()].as_str()
}

#[test]
fn httproutes_from_the_conformance_suite_through_the_handoff() -> Result<()> {
    let suite = Suite::start()?;
    // HTTPRouteSimpleSameNamespace: the backend sees the request as sent.
    suite.apply("httproute-simple-same-namespace")?;
    let addr = suite.address("same-namespace")?;
    let r = suite.wait_backend(addr, "/", &[], "infra-backend-v1")?;
    let seen = r.json()?;
    assert_eq!(seen["path"], "/");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["host"], addr.to_string());

    // HTTPRouteExactPathMatching.
    suite.apply("httproute-exact-path-matching")?;
    suite.wait_backend(addr, "/two", &[], "infra-backend-v2")?;
    // The catch-all of the first test still serves /, and Exact is trailing-slash strict.
    let r = suite.request(addr, "/two/", &[])?;
    assert_eq!(r.backend()?, "infra-backend-v1-pod-a");
    suite
        .s
        .manifests
        .remove("httproute-simple-same-namespace.yaml")?;
    suite.wait("the catch-all route removed", || {
        Ok(suite.request(addr, "/", &[])?.status == 404)
    })?;
    assert_eq!(suite.request(addr, "/Two", &[])?.status, 404);
    assert_eq!(suite.request(addr, "/one/example", &[])?.status, 404);

    // HTTPRouteRequestHeaderModifier: what the backend sees.
    suite.apply("httproute-request-header-modifier")?;
    let r = suite.wait_backend(
        addr,
        "/add",
        &["-H", "X-Header-Add: some-other-value"],
        "infra-backend-v1",
    )?;
    assert_eq!(
        header(&r.json()?, "X-Header-Add"),
        Some("some-other-value,add-appends-values")
    );
    let seen = suite
        .request(
            addr,
            "/set",
            &[
                "-H",
                "X-Header-Set: some-other-value",
                "-H",
                "Some-Other-Header: val",
            ],
        )?
        .json()?;
    assert_eq!(header(&seen, "X-Header-Set"), Some("set-overwrites-values"));
    assert_eq!(header(&seen, "Some-Other-Header"), Some("val"));
    let seen = suite
        .request(
            addr,
            "/case-insensitivity",
            &[
                "-H",
                "x-header-set: original-val-set",
                "-H",
                "x-header-add: original-val-add",
                "-H",
                "x-header-remove: original-val-remove",
            ],
        )?
        .json()?;
    assert_eq!(header(&seen, "X-Header-Set"), Some("header-set"));
    assert_eq!(
        header(&seen, "X-Header-Add"),
        Some("original-val-add,header-add")
    );
    assert_eq!(header(&seen, "X-Header-Remove"), None);

    // HTTPRouteRewritePath: the backend sees the rewritten path.
    suite.apply("httproute-rewrite-path")?;
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        let r = suite.wait_backend(addr, path, &[], "infra-backend-v1")?;
        assert_eq!(r.json()?["path"], want, "{path}");
    }

    // HTTPRouteRedirectHostAndStatus: an absolute Location, no port for http on 80.
    suite.apply("httproute-redirect-host-and-status")?;
    let mut location = String::new();
    suite.wait("the redirect", || {
        let r = suite.request(addr, "/hostname-redirect", REDIRECT_URL)?;
        location = r.body.clone();
        Ok(r.status == 302)
    })?;
    assert_eq!(location.trim(), "http://example.org/hostname-redirect");
    let r = suite.request(addr, "/host-and-status", REDIRECT_URL)?;
    assert_eq!(
        (r.status, r.body.trim()),
        (301, "http://example.org/host-and-status")
    );

    // HTTPRouteInvalidNonExistentBackendRef: 500, and the status says why.
    suite.apply("httproute-invalid-nonexistent-backendref")?;
    suite.wait("500 for the missing backend", || {
        Ok(suite.request(addr, "/", &[])?.status == 500)
    })?;
    let status = suite.status()?;
    let route = find(&status["routes"], "name", "invalid-nonexistent-backend-ref")
        .context("no status for the route")?;
    let resolved = find(&route["parents"][0]["conditions"], "type", "ResolvedRefs")
        .context("no ResolvedRefs")?;
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("BackendNotFound"))
    );

    // HTTPRouteHostnameIntersection: on the Gateway's own address, the Host
    // is matched without its port and forwarded unchanged.
    suite.apply("httproute-hostname-intersection")?;
    let hi = suite.address("httproute-hostname-intersection")?;
    assert_ne!(hi, addr, "each Gateway has its own address");
    let r = suite.wait_backend(
        hi,
        "/s1",
        &["-H", "Host: very.specific.com:1234"],
        "infra-backend-v1",
    )?;
    assert_eq!(r.json()?["host"], "very.specific.com:1234");
    let r = suite.request(hi, "/s2", &["-H", "Host: foo.bar.wildcard.io"])?;
    assert_eq!(r.backend()?, "infra-backend-v2-pod-a");
    assert_eq!(
        suite
            .request(hi, "/s1", &["-H", "Host: foo.wildcard.io"])?
            .status,
        404
    );
    assert_eq!(
        suite
            .request(hi, "/s2", &["-H", "Host: wildcard.io"])?
            .status,
        404
    );

    // HTTPRouteCrossNamespace: a route in the web namespace on the Selector Gateway.
    suite.apply("httproute-cross-namespace")?;
    let bn = suite.address("backend-namespaces")?;
    suite.wait_backend(bn, "/", &[], "web-backend")?;

    // `weir routes` names the object behind each rule, and where it listens.
    let rules = suite.s.agent.cli_json(&["routes"])?;
    let rule = find(
        &rules,
        "origin",
        "HTTPRoute gateway-conformance-infra/rewrite-path spec.rules[0]",
    )
    .with_context(|| format!("no rule of rewrite-path: {rules:#}"))?;
    assert_eq!(rule["path"], "/prefix/one");
    assert_eq!(rule["address"], format!("{addr}:80"));
    assert_eq!(
        rule["listener"],
        "gateway-conformance-infra/same-namespace/http"
    );
    assert_eq!(
        rule["service"],
        "gateway-conformance-infra/infra-backend-v1"
    );
    let table = suite.s.agent.cli(&["routes"])?;
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("LISTENER")),
        "{table}"
    );
    Ok(())
}

#[test]
fn weighted_backends_split_500_requests_70_30_and_weight_0_gets_none() -> Result<()> {
    let suite = Suite::start()?;
    suite.apply("httproute-weight")?;
    let addr = suite.address("same-namespace")?;
    suite.wait_backend(addr, "/", &[], "infra-backend-v")?;
    // One curl process, 500 requests, each on a new connection (as the suite sends them).
    let url = format!("http://{addr}/");
    let mut args = vec!["-sS", "--max-time", "30", "-H", "Connection: close"];
    for _ in 0..500 {
        args.extend_from_slice(&[url.as_str(), "-w", "\n"]);
    }
    let out = std::process::Command::new("nsenter")
        .arg(format!(
            "--net={}",
            weir_tests::netns::path(suite.client()).display()
        ))
        .arg("--")
        .arg("curl")
        .args(&args)
        .output()
        .context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        *counts
            .entry(v["backend"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let total: usize = counts.values().sum();
    assert_eq!(total, 500, "{counts:?}");
    let share = |n: &str| counts.get(n).copied().unwrap_or(0) as f64 / 500.0;
    assert!(
        (share("infra-backend-v1-pod-a") - 0.7).abs() <= 0.05,
        "{counts:?}"
    );
    assert!(
        (share("infra-backend-v2-pod-a") - 0.3).abs() <= 0.05,
        "{counts:?}"
    );
    assert_eq!(counts.get("infra-backend-v3-pod-a"), None, "{counts:?}");
    Ok(())
}

#[test]
fn an_https_listener_terminates_tls_with_its_certificate_refs() -> Result<()> {
    let suite = Suite::start()?;
    let c = rcgen::generate_simple_self_signed(vec![
        "second-example.org".to_string(),
        "*.wildcard.org".to_string(),
    ])?;
    suite.s.manifests.write(
        "validity-secret.yaml",
        &weir_tests::ingress::tls_secret(
            INFRA,
            "tls-validity-checks-certificate",
            &c.cert.pem(),
            &c.signing_key.serialize_pem(),
        ),
    )?;
    suite.s.manifests.write(
        "https-route.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: secure, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace-with-https-listener}}]\n  hostnames: [second-example.org]\n  rules: [{{backendRefs: [{{name: infra-backend-v2, port: 8080}}]}}]\n"
        ),
    )?;
    let addr = suite.address("same-namespace-with-https-listener")?;
    let ca = std::env::temp_dir().join(format!("weir-gateway-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, c.cert.pem())?;
    let resolve = format!("second-example.org:443:{addr}");
    let ca_path = ca.display().to_string();
    let get = || {
        curl(
            suite.client(),
            &[
                "--resolve",
                &resolve,
                "--cacert",
                &ca_path,
                "https://second-example.org/secure",
            ],
        )
    };
    let mut answer = None;
    let waited = suite.wait("HTTPS served by infra-backend-v2", || {
        let r = get()?;
        let ok = r.status == 200 && r.backend()? == "infra-backend-v2-pod-a";
        answer = Some(r);
        Ok(ok)
    });
    let _ = std::fs::remove_file(&ca);
    waited?;
    let seen = answer.context("no answer")?.json()?;
    assert_eq!(seen["path"], "/secure");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    // The status says the listeners are programmed now.
    let status = suite.status()?;
    let gw = find(
        &status["gateways"],
        "name",
        "same-namespace-with-https-listener",
    )
    .context("no status")?;
    for l in gw["listeners"].as_array().context("listeners")? {
        let programmed = find(&l["conditions"], "type", "Programmed").context("no Programmed")?;
        assert_eq!(programmed["status"], "True", "{l:#}");
    }
    Ok(())
}

/// `openssl s_server -www` in a pod: a TLS backend (it answers GET with a
/// status page). Killed on drop; it lives at most as long as the test.
struct TlsServer(std::process::Child);

impl TlsServer {
    fn start(ns: &str, port: u16, cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", weir_tests::netns::path(ns).display()))
            .args([
                "--", "timeout", "300", "openssl", "s_server", "-quiet", "-www",
            ])
            .args(["-accept", &port.to_string()])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting openssl s_server (cargo xtask setup installs openssl)")?;
        Ok(Self(child))
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tcp_and_tls_listeners_splice_to_their_routes_backends() -> Result<()> {
    let suite = Suite::start()?;
    let be3 = suite.s.sandbox.pod("be3").netns.name.clone();
    let _echo = weir_tests::EchoServer::start(
        &suite.s.sandbox.pod("be1").netns.name,
        "be1",
        &[(weir_tests::echo::Proto::Tcp, 9000)],
    )?;
    let dir = std::env::temp_dir().join(format!("weir-gateway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: &str| -> Result<std::path::PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    // The passthrough backend's own certificate, and the terminating listener's.
    let pass = rcgen::generate_simple_self_signed(vec!["pass.example".to_string()])?;
    let term = rcgen::generate_simple_self_signed(vec!["term.example".to_string()])?;
    let pass_crt = write("pass.crt", &pass.cert.pem())?;
    let pass_key = write("pass.key", &pass.signing_key.serialize_pem())?;
    let term_ca = write("term.crt", &term.cert.pem())?;
    let _tls_backend = TlsServer::start(&be3, 8443, &pass_crt, &pass_key)?;
    let be1 = suite.s.backend_ip("be1");
    let be3_ip = suite.s.backend_ip("be3");
    let ep = |ip: Ipv4Addr| {
        format!("[{{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node-a}}]")
    };
    suite.s.manifests.write(
        "streams.yaml",
        &format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: {INFRA}}}
spec: {{ports: [{{name: tcp, port: 9000, protocol: TCP, targetPort: 9000}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: tcp-echo-1, namespace: {INFRA}, labels: {{kubernetes.io/service-name: tcp-echo}}}}
addressType: IPv4
ports: [{{name: tcp, port: 9000, protocol: TCP}}]
endpoints: {tcp}
---
apiVersion: v1
kind: Service
metadata: {{name: tls-backend, namespace: {INFRA}}}
spec: {{ports: [{{name: tls, port: 443, protocol: TCP, targetPort: 8443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: tls-backend-1, namespace: {INFRA}, labels: {{kubernetes.io/service-name: tls-backend}}}}
addressType: IPv4
ports: [{{name: tls, port: 8443, protocol: TCP}}]
endpoints: {tls}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: streams, namespace: {INFRA}}}
spec:
  gatewayClassName: weir
  listeners:
    - {{name: tcp, port: 9310, protocol: TCP, allowedRoutes: {{kinds: [{{kind: TCPRoute}}]}}}}
    - {{name: pass, port: 443, protocol: TLS, hostname: "*.example", tls: {{mode: Passthrough}}, allowedRoutes: {{kinds: [{{kind: TLSRoute}}]}}}}
    - {{name: term, port: 8443, protocol: TLS, hostname: term.example, tls: {{mode: Terminate, certificateRefs: [{{name: term-cert}}]}}, allowedRoutes: {{kinds: [{{kind: TLSRoute}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: echo, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: streams, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: tcp-echo, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: pass, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: streams, sectionName: pass}}]
  hostnames: [pass.example]
  rules: [{{backendRefs: [{{name: tls-backend, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: term, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: streams, sectionName: term}}]
  hostnames: [term.example]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
"#,
            tcp = ep(be1),
            tls = ep(be3_ip),
        ),
    )?;
    suite.s.manifests.write(
        "term-cert.yaml",
        &weir_tests::ingress::tls_secret(
            INFRA,
            "term-cert",
            &term.cert.pem(),
            &term.signing_key.serialize_pem(),
        ),
    )?;
    let addr = suite.address("streams")?;

    // TCPRoute: the echo server answers, and names itself.
    suite.wait("the TCP echo through the TCPRoute", || {
        let replies = weir_tests::echo::requests(
            suite.client(),
            weir_tests::echo::Proto::Tcp,
            std::net::SocketAddrV4::new(addr, 9310),
            3,
            Duration::from_secs(2),
        )?;
        Ok(replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.backend == "be1")))
    })?;

    // TLSRoute passthrough: the client verifies the backend's own certificate
    // (the proxy never holds it), so the bytes went through untouched.
    let resolve = format!("pass.example:443:{addr}");
    let pass_ca = pass_crt.display().to_string();
    suite.wait("openssl's page through the passthrough", || {
        let r = curl(
            suite.client(),
            &[
                "--resolve",
                &resolve,
                "--cacert",
                &pass_ca,
                "https://pass.example/",
            ],
        )?;
        Ok(r.status == 200 && r.body.contains("s_server"))
    })?;
    // A server name no route lists gets nothing.
    let other = format!("other.example:443:{addr}");
    assert!(curl(
        suite.client(),
        &["--resolve", &other, "-k", "https://other.example/"]
    )
    .is_err());

    // TLSRoute terminate: the proxy's certificate, then plain bytes (here
    // HTTP) to the backend.
    let resolve = format!("term.example:8443:{addr}");
    let term_ca = term_ca.display().to_string();
    let mut seen = None;
    suite.wait(
        "the HTTP backend behind the terminating TLS listener",
        || {
            let r = curl(
                suite.client(),
                &[
                    "--resolve",
                    &resolve,
                    "--cacert",
                    &term_ca,
                    "https://term.example:8443/plain",
                ],
            )?;
            let ok = r.status == 200 && r.backend()? == "infra-backend-v1-pod-a";
            seen = Some(r);
            Ok(ok)
        },
    )?;
    assert_eq!(seen.context("no answer")?.json()?["path"], "/plain");
    let _ = std::fs::remove_dir_all(&dir);

    // Status: each listener serves its route kind, with its route attached.
    let status = suite.status()?;
    let gw = find(&status["gateways"], "name", "streams").context("no status")?;
    for l in gw["listeners"].as_array().context("listeners")? {
        assert_eq!(l["attachedRoutes"], 1, "{l:#}");
    }
    // `weir routes` lists them with the listener mode and the route behind each.
    let rules = suite.s.agent.cli_json(&["routes"])?;
    let modes: std::collections::BTreeSet<(String, String)> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["listener"]
                .as_str()
                .is_some_and(|l| l.contains("/streams/"))
        })
        .map(|r| {
            (
                r["path_type"].as_str().unwrap_or("").to_string(),
                r["origin"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: std::collections::BTreeSet<(String, String)> = [
        (
            "TCP",
            "TCPRoute gateway-conformance-infra/echo spec.rules[0]",
        ),
        (
            "TLSPassthrough",
            "TLSRoute gateway-conformance-infra/pass spec.rules[0]",
        ),
        (
            "TLSTerminate",
            "TLSRoute gateway-conformance-infra/term spec.rules[0]",
        ),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(modes, want);
    Ok(())
}

#[test]
fn route_and_gateway_changes_under_load_fail_no_request() -> Result<()> {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    let suite = Suite::start()?;
    suite.apply("httproute-weight")?;
    let addr = suite.address("same-namespace")?;
    suite.wait_backend(addr, "/", &[], "infra-backend-v")?;

    // Four clients, each on one keep-alive connection to the Gateway's
    // address, request as fast as they can (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, ns) = (stop.clone(), ok.clone(), suite.client().to_string());
            std::thread::spawn(move || -> Result<Vec<String>> {
                weir_tests::netns::in_netns(&ns, move || -> Result<Vec<String>> {
                    let mut failures = Vec::new();
                    let started = Instant::now();
                    let mut conn = std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::from((addr, 80)),
                        Duration::from_secs(2),
                    )?;
                    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let host = addr.to_string();
                    for i in 0..20_000 {
                        if stop.load(Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(60)
                        {
                            break;
                        }
                        match weir_tests::http::keepalive_get(&mut conn, &host, "/") {
                            Ok((200, body)) if body.contains("infra-backend-v") => {
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
                })?
            })
        })
        .collect();

    // Twenty changes: the weights, a second route with header matches, and a
    // second Gateway that sorts before this one (its address must not move).
    for i in 0..20 {
        if i % 2 == 0 {
            let w = 10 + i * 4;
            suite.s.manifests.write(
                "httproute-weight.yaml",
                &manifest("httproute-weight")?.replace("weight: 70", &format!("weight: {w}")),
            )?;
            suite.apply("httproute-header-matching")?;
            suite.s.manifests.write(
                "extra-gateway.yaml",
                &format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: aaa-extra, namespace: {INFRA}}}\nspec:\n  gatewayClassName: weir\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"),
            )?;
        } else {
            suite.apply("httproute-weight")?;
            suite.s.manifests.remove("httproute-header-matching.yaml")?;
            suite.s.manifests.remove("extra-gateway.yaml")?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok >= 100, "only {ok} requests");
    let swaps = suite
        .s
        .agent
        .log_text()
        .matches("ingress routes updated")
        .count();
    assert!(swaps >= 10, "only {swaps} routing table swaps");
    assert_eq!(
        suite.address("same-namespace")?,
        addr,
        "the Gateway's address moved"
    );
    Ok(())
}

#[test]
fn grpc_routes_match_service_method_and_headers_and_reach_h2c_backends() -> Result<()> {
    let suite = Suite::start()?;
    suite.s.manifests.write(
        "grpc.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
    - matches: [{{method: {{service: weir.test.Echo, method: Hello}}}}]
      backendRefs: [{{name: infra-backend-v2, port: 8080}}]
    - matches: [{{method: {{service: weir.test.Echo, method: Hello}}, headers: [{{name: x-tenant, value: gold}}]}}]
      backendRefs: [{{name: infra-backend-v3, port: 8080}}]
    - matches: [{{method: {{service: weir.test.Admin}}}}]
      backendRefs: [{{name: infra-backend-v1, port: 8080}}]
"#
        ),
    )?;
    let addr = suite.address("same-namespace")?;
    let call = |path: &str, extra: &[&str]| {
        let mut args = vec![
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ];
        args.extend_from_slice(extra);
        suite.request(addr, path, &args)
    };
    let r = suite.wait_backend(
        addr,
        "/weir.test.Echo/Hello",
        &[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
        ],
        "infra-backend-v2",
    )?;
    let seen = r.json()?;
    // The backend is spoken to over HTTP/2 (a GRPCRoute's backends always are).
    assert_eq!(seen["version"], "HTTP/2.0", "{seen:#}");
    assert_eq!(seen["method"], "POST");
    let seen = call("/weir.test.Echo/Hello", &[])?.json()?;
    assert_eq!(seen["headers"]["te"], "trailers", "{seen:#}");
    assert_eq!(
        call("/weir.test.Echo/Hello", &["-H", "x-tenant: gold"])?.backend()?,
        "infra-backend-v3-pod-a"
    );
    assert_eq!(
        call("/weir.test.Admin/Reset", &[])?.backend()?,
        "infra-backend-v1-pod-a"
    );
    assert_eq!(call("/weir.test.Echo/Other", &[])?.status, 404);
    // Status: accepted on the HTTP listener, whose supported kinds include GRPCRoute.
    let status = suite.status()?;
    let route = find(&status["routes"], "kind", "GRPCRoute").context("no GRPCRoute status")?;
    assert_eq!(
        route["parents"][0]["conditions"][0]["status"], "True",
        "{route:#}"
    );
    let gw = find(&status["gateways"], "name", "same-namespace").context("no Gateway")?;
    let kinds: Vec<&str> = gw["listeners"][0]["supportedKinds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
    Ok(())
}

#[test]
fn request_mirrors_get_a_copy_of_their_share_and_the_client_only_the_main_answer() -> Result<()> {
    let suite = Suite::start()?;
    suite.s.manifests.write(
        "mirror.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirror, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
    - filters:
        - {{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, port: 8080}}}}}}
        - {{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v3, port: 8080}}, percent: 50}}}}
      backendRefs: [{{name: infra-backend-v1, port: 8080}}]
"#
        ),
    )?;
    let addr = suite.address("same-namespace")?;
    suite.wait_backend(addr, "/", &[], "infra-backend-v1")?;
    // The copies of those first requests arrive on their own time: count
    // from when they have (no change for 300 ms; at most 10 s).
    let counts = || (suite.backends[1].requests(), suite.backends[2].requests());
    let mut last = counts();
    for _ in 0..33 {
        std::thread::sleep(Duration::from_millis(300));
        let now = counts();
        if now == last {
            break;
        }
        last = now;
    }
    let (v2, v3) = last;
    for i in 0..20 {
        let body = format!("payload-{i}");
        let r = suite.request(addr, "/m", &["-X", "POST", "--data", &body])?;
        assert_eq!(
            r.backend()?,
            "infra-backend-v1-pod-a",
            "the client sees the main backend only"
        );
    }
    // Mirrored copies arrive on their own time: wait for them (bounded).
    suite.wait("the mirrors' copies", || {
        Ok(suite.backends[1].requests() - v2 >= 20 && suite.backends[2].requests() - v3 >= 10)
    })?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        suite.backends[1].requests() - v2,
        20,
        "every request mirrored to v2"
    );
    assert_eq!(suite.backends[2].requests() - v3, 10, "half mirrored to v3");
    Ok(())
}

#[test]
fn retries_resend_on_listed_codes_until_attempts_run_out() -> Result<()> {
    let suite = Suite::start()?;
    suite.s.manifests.write(
        "retry.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: retry, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /fail-first}}}}]
      retry: {{codes: [503], attempts: 2, backoff: 10ms}}
      backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /}}}}]
      backendRefs: [{{name: infra-backend-v2, port: 8080}}]
"#
        ),
    )?;
    let addr = suite.address("same-namespace")?;
    suite.wait_backend(addr, "/", &[], "infra-backend-v2")?;
    // Two failures, two retries: the client gets the third answer, a 200.
    let before = suite.backends[0].requests();
    let r = suite.request(addr, "/fail-first/2", &["-X", "POST", "--data", "body"])?;
    assert_eq!(
        (r.status, r.backend()?.as_str()),
        (200, "infra-backend-v1-pod-a")
    );
    assert_eq!(suite.backends[0].requests() - before, 3);
    // The backend has counted 3 such requests: /fail-first/9 fails 6 more
    // times, more than two retries cover: the client sees the 503.
    let before = suite.backends[0].requests();
    let r = suite.request(addr, "/fail-first/9", &[])?;
    assert_eq!(r.status, 503);
    assert_eq!(
        suite.backends[0].requests() - before,
        3,
        "one try and two retries"
    );
    Ok(())
}

#[test]
fn extended_filters_redirects_rewrites_timeouts_and_reference_grants() -> Result<()> {
    let suite = Suite::start()?;
    suite.s.manifests.write(
        "extended.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: extended, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  hostnames: [ext.example]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /resp}}}}]
      filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Resp, value: set-by-weir}}], remove: [Content-Type]}}}}]
      backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /to-https}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, statusCode: 308}}}}]
    - matches: [{{path: {{type: PathPrefix, value: /to-port}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{port: 8443, path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 307}}}}]
    - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}, statusCode: 303}}}}]
    - matches: [{{path: {{type: PathPrefix, value: /host}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{hostname: rewritten.example}}}}]
      backendRefs: [{{name: infra-backend-v1, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
      timeouts: {{request: 300ms}}
      backendRefs: [{{name: infra-backend-v1, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: granted, namespace: {WEB}}}
spec:
  parentRefs: [{{name: backend-namespaces, namespace: {INFRA}}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /granted}}}}]
      backendRefs: [{{name: infra-backend-v2, namespace: {INFRA}, port: 8080}}]
    - matches: [{{path: {{type: PathPrefix, value: /denied}}}}]
      backendRefs: [{{name: infra-backend-v3, namespace: {INFRA}, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: web-to-v2, namespace: {INFRA}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {WEB}}}]
  to: [{{group: "", kind: Service, name: infra-backend-v2}}]
"#
        ),
    )?;
    let addr = suite.address("same-namespace")?;
    let host = ["-H", "Host: ext.example"];
    suite.wait_backend(addr, "/resp", &host, "infra-backend-v1")?;
    // ResponseHeaderModifier: what the client sees.
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = host.iter().map(|s| s.to_string()).collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let args = with(&[
        "-o",
        "/dev/null",
        "-w",
        "%header{x-resp}|%header{content-type}\n%{http_code} %{http_version}",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = suite.request(addr, "/resp", &refs)?;
    assert_eq!((r.status, r.body.trim()), (200, "set-by-weir|"));
    // Redirects: scheme (its own port left out), port and full path, prefix.
    for (path, status, location) in [
        (
            "/to-https/a?q=1",
            308,
            "https://ext.example/to-https/a?q=1".to_string(),
        ),
        ("/to-port/a", 307, "http://ext.example:8443/new".to_string()),
        ("/old/x/y", 303, "http://ext.example/v2/x/y".to_string()),
    ] {
        let args = with(REDIRECT_URL);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = suite.request(addr, path, &refs)?;
        assert_eq!(
            (r.status, r.body.trim()),
            (status, location.as_str()),
            "{path}"
        );
    }
    // URLRewrite of the host: the backend sees the new one.
    let r = suite.request(addr, "/host/x", &host)?;
    assert_eq!(r.json()?["host"], "rewritten.example");
    // timeouts.request: 504, and soon.
    let started = Instant::now();
    let r = suite.request(addr, "/slow?delay_ms=3000", &host)?;
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A backend in another namespace: served with a ReferenceGrant, 500 without.
    let bn = suite.address("backend-namespaces")?;
    suite.wait_backend(bn, "/granted", &[], "infra-backend-v2")?;
    assert_eq!(suite.request(bn, "/denied", &[])?.status, 500);
    let status = suite.status()?;
    let route = find(&status["routes"], "name", "granted").context("no status")?;
    let resolved = find(&route["parents"][0]["conditions"], "type", "ResolvedRefs")
        .context("no ResolvedRefs")?;
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("RefNotPermitted"))
    );
    Ok(())
}

#[test]
fn websocket_backends_by_app_protocol_are_tunnelled() -> Result<()> {
    let suite = Suite::start()?;
    // infra-backend-v1's third port (8082) has appProtocol kubernetes.io/ws
    // in the suite's base manifests; its EndpointSlice port is the pods' 3000.
    suite.s.manifests.write(
        "ws-slice.yaml",
        &slice_eps(
            INFRA,
            "infra-backend-v1-ws",
            "infra-backend-v1",
            &[port("third-port", 8082, "TCP", 3000)],
            &[Ep::ready(suite.s.backend_ip("be1"), "node-a")],
        ),
    )?;
    suite.s.manifests.write(
        "ws.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: ws, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules: [{{matches: [{{path: {{type: Exact, value: /ws}}}}], backendRefs: [{{name: infra-backend-v1, port: 8082}}]}}]\n"
        ),
    )?;
    let addr = suite.address("same-namespace")?;
    suite.wait_backend(addr, "/ws", &[], "infra-backend-v1")?;
    let replies = weir_tests::netns::in_netns(suite.client(), move || -> Result<Vec<String>> {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let io = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(std::net::SocketAddr::from((addr, 80))),
            )
            .await??;
            let (mut ws, resp) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::client_async(format!("ws://{addr}/ws"), io),
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
    let name = "infra-backend-v1-pod-a";
    assert_eq!(
        replies,
        [
            format!("{name}: hello 0"),
            format!("{name}: hello 1"),
            format!("{name}: hello 2")
        ]
    );
    Ok(())
}
