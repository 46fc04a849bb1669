//! Observability end to end: `weir status` and `weir ingress routes` say
//! what the running agent holds (through its control socket), the metrics
//! count known events, and `--bpf-log` prints the kernel programs' drop
//! messages (and nothing without it).
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weir_tests::{
    agent::weir_bin,
    echo::Proto,
    http_backend::HttpBackend,
    ingress::{backend, curl, ingress, ingress_class, node, tls_secret},
    manifests::{port, service, slice},
    prom,
    scenario::{Scenario, CLUSTER_IP},
    Agent, FakeApiserver, Sandbox,
};

const NS: &str = "obs";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Retries `f` until it returns Some (at most `secs` seconds).
fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} ({last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every line of `text` fits an 80-column terminal.
fn fits_80(what: &str, text: &str) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "{what}: {} columns: {line:?}",
            line.chars().count()
        );
    }
}

/// `weir status -o json` of `agent`, once its agent part satisfies `pred`.
fn status_when(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    wait(what, 30, || {
        let s = agent.cli_json(&["status"])?;
        Ok(pred(&s["agent"]).then_some(s))
    })
    .with_context(|| format!("agent log:\n{}", agent.log_text()))
}

#[test]
fn status_shows_the_last_sync_and_the_source_health() -> Result<()> {
    let mut s = Scenario::start(1, &[(Proto::Tcp, 8080)])?;
    let ports = [port("http", 80, "TCP", 8080)];
    s.manifests
        .write("svc.yaml", &service(NS, "shown", CLUSTER_IP, &ports))?;
    s.manifests.write(
        "slice.yaml",
        &slice(
            NS,
            "shown-1",
            "shown",
            &ports,
            &[(s.backend_ip("be1"), true)],
        ),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 1)?;

    // The agent's part equals what it holds: the source it reads, the last
    // sync's counts (the maps say the same), and who it is.
    let status = status_when(&s.agent, "a sync of 1 service", |a| {
        a["last_sync"]["services"] == 1 && a["last_sync"]["endpoint_slices"] == 1
    })?;
    let agent = &status["agent"];
    let programmed = s.agent.programmed()?;
    assert_eq!(agent["pid"], json!(s.agent.pid()));
    assert_eq!(agent["bpffs"], json!(s.agent.bpffs.display().to_string()));
    assert_eq!(agent["source"]["kind"], "dir");
    assert_eq!(
        agent["source"]["location"],
        json!(s.manifests.path.display().to_string())
    );
    assert_eq!(agent["source"]["state"], "synced");
    assert!(agent["source"]["last_update"].is_string(), "{status:#}");
    assert_eq!(agent["last_sync"]["result"], "success");
    assert_eq!(
        agent["last_sync"]["frontends"],
        json!(programmed.services.len())
    );
    assert_eq!(
        agent["last_sync"]["backends"],
        json!(programmed.backends.len())
    );
    assert_eq!(agent["last_sync_error"], Value::Null);
    assert_eq!(agent["ingress"], false);
    assert_eq!(status["agent_error"], Value::Null);
    // The sync counts agree with the metrics.
    let metrics = prom::scrape(&s.sandbox.node.name)?;
    let syncs = prom::value(&metrics, "weir_syncs_total", &[("result", "success")])
        .context("weir_syncs_total")?;
    assert_eq!(agent["syncs"], json!(syncs as u64));
    // YAML says the same as JSON (up to the times, which move on).
    let yaml: Value = serde_yaml::from_str(&s.agent.cli(&["status", "-o", "yaml"])?)?;
    assert_eq!(yaml["agent"]["source"]["kind"], "dir");
    assert_eq!(yaml["agent"]["last_sync"]["services"], 1);

    // A failing source: the directory disappears. The status says so with
    // the error; the maps keep serving the last state.
    let away = s.manifests.path.with_extension("away");
    std::fs::rename(&s.manifests.path, &away)?;
    let failing = status_when(&s.agent, "the source failing", |a| {
        a["source"]["state"] == "error"
    });
    std::fs::rename(&away, &s.manifests.path)?;
    let failing = failing?;
    let error = failing["agent"]["source"]["last_error"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("reading directory") && error.contains(&*s.manifests.path.to_string_lossy()),
        "{failing:#}"
    );
    let table = s.agent.cli(&["status"])?;
    assert!(table.contains("Source:   dir"), "{table}");
    assert!(
        table.contains("error") && table.contains("last error"),
        "{table}"
    );
    fits_80("weir status", &table);
    assert_eq!(s.agent.programmed()?.services.len(), 1);
    // Back: synced again, and the last error stays on record.
    let back = status_when(&s.agent, "the source back", |a| {
        a["source"]["state"] == "synced"
    })?;
    assert_eq!(back["agent"]["source"]["last_error"]["error"], json!(error));

    // No agent on the socket: the map part is still there, and it says why.
    let bpffs = s.agent.bpffs.display().to_string();
    let out = std::process::Command::new(weir_bin()?)
        .args(["status", "-o", "json", "--bpffs", &bpffs])
        .args(["--agent-socket", "/nonexistent/weir-test.sock"])
        .output()?;
    assert!(out.status.success());
    let alone: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(alone["agent"], Value::Null);
    assert!(alone["agent_error"].is_string(), "{alone:#}");
    assert_eq!(alone["maps"], status["maps"]);
    let out = std::process::Command::new(weir_bin()?)
        .args(["status", "--bpffs", &bpffs])
        .args(["--agent-socket", "/nonexistent/weir-test.sock"])
        .output()?;
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("Agent:    not reachable"), "{table}");
    fits_80("weir status without agent", &table);

    // The socket is 0600; a killed agent leaves it behind, and the next
    // agent replaces it; a clean stop removes it.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&s.agent.socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    s.agent.kill();
    assert!(s.agent.socket.exists());
    s.agent.start_again()?;
    let pid = s.agent.pid();
    status_when(&s.agent, "the new agent answering", |a| {
        a["pid"] == json!(pid)
    })?;
    s.agent.stop();
    assert!(!s.agent.socket.exists());
    Ok(())
}

#[test]
fn status_shows_the_kube_source_failing_and_recovering() -> Result<()> {
    let sandbox = Sandbox::standard(0)?;
    let api = FakeApiserver::start_in_netns(&sandbox.node.name)?;
    let master = format!("--master={}", api.url());
    let agent = Agent::start_source(
        &sandbox.node.name,
        "kube",
        &sandbox.tag,
        &[&master, "--min-sync-period=100ms"],
    )?;
    let synced = status_when(&agent, "the kube source synced", |a| {
        a["source"]["state"] == "synced"
    })?;
    assert_eq!(synced["agent"]["source"]["kind"], "kube");
    assert_eq!(synced["agent"]["source"]["location"], json!(api.url()));
    assert_eq!(synced["agent"]["source"]["last_error"], Value::Null);

    api.go_down()?;
    let down = status_when(&agent, "the kube source failing", |a| {
        a["source"]["state"] == "error"
    });
    api.come_back()?;
    let down = down?;
    let error = down["agent"]["source"]["last_error"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains(" watch: "), "{down:#}");
    status_when(&agent, "the kube source back", |a| {
        a["source"]["state"] == "synced"
    })?;
    drop(agent);
    drop(api);
    Ok(())
}

fn self_signed(host: &str) -> Result<(String, String)> {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()])?;
    Ok((c.cert.pem(), c.signing_key.serialize_pem()))
}

/// Service `name` (80 -> 8080) with the endpoints of `pods`.
fn http_service(s: &Scenario, name: &str, ip_last: u8, pods: &[&str]) -> Result<()> {
    let ports = [port("http", 80, "TCP", 8080)];
    let eps: Vec<(Ipv4Addr, bool)> = pods.iter().map(|p| (s.backend_ip(p), true)).collect();
    s.manifests.write(
        &format!("svc-{name}.yaml"),
        &format!(
            "{}\n---\n{}",
            service(NS, name, Ipv4Addr::new(198, 19, 0, ip_last), &ports),
            slice(NS, &format!("{name}-1"), name, &ports, &eps)
        ),
    )
}

fn route(
    host: &str,
    path: &str,
    path_type: &str,
    svc: &str,
    endpoints: usize,
    tls: Option<&str>,
) -> Value {
    json!({
        "host": host, "path": path, "path_type": path_type,
        "service": format!("{NS}/{svc}"), "port": 80, "endpoints": endpoints,
        "tls_secret": tls.map(|t| format!("{NS}/{t}")), "ingress": format!("{NS}/routes"),
    })
}

#[test]
fn ingress_routes_list_the_rules_and_requests_are_counted_by_route() -> Result<()> {
    let s = Scenario::start_with(2, &[], &["--ingress"])?;
    let _backends = ["be1", "be2"]
        .iter()
        .map(|b| HttpBackend::start(&s.sandbox.pod(b).netns.name, b, 8080))
        .collect::<Result<Vec<_>>>()?;
    s.manifests
        .write("class.yaml", &ingress_class("weir", false))?;
    s.manifests.write("node.yaml", &node("node-a", NODE_IP))?;
    http_service(&s, "a", 10, &["be1"])?;
    http_service(&s, "b", 11, &["be1", "be2"])?;
    let (cert, key) = self_signed("foo.example.com")?;
    s.manifests
        .write("secret.yaml", &tls_secret(NS, "foo-tls", &cert, &key))?;
    let spec = format!(
        "  ingressClassName: weir\n  defaultBackend: {a}\n  tls:\n    - hosts: [foo.example.com]\n      secretName: foo-tls\n  rules:\n    - host: foo.example.com\n      http:\n        paths:\n          - {{path: /exact, pathType: Exact, backend: {a}}}\n          - {{path: /api/, pathType: Prefix, backend: {b}}}\n    - host: \"*.example.org\"\n      http:\n        paths:\n          - {{path: /x, pathType: ImplementationSpecific, backend: {a}}}\n    - http:\n        paths:\n          - {{path: /anyhost, pathType: Prefix, backend: {b}}}\n",
        a = backend("a", 80),
        b = backend("b", 80),
    );
    s.manifests
        .write("ingress.yaml", &ingress(NS, "routes", &spec))?;

    // Exactly the rules of the Ingress, in matching order per host, each
    // with its backend's endpoints and the Secret that serves its host.
    let expected = json!([
        route(
            "foo.example.com",
            "/exact",
            "Exact",
            "a",
            1,
            Some("foo-tls")
        ),
        route("foo.example.com", "/api", "Prefix", "b", 2, Some("foo-tls")),
        route(
            "*.example.org",
            "/x",
            "ImplementationSpecific",
            "a",
            1,
            None
        ),
        route("", "/anyhost", "Prefix", "b", 2, None),
        route("", "", "DefaultBackend", "a", 1, None),
    ]);
    let routes = || s.agent.cli_json(&["ingress", "routes"]);
    wait("the routes of the Ingress", 30, || {
        Ok((routes()? == expected).then_some(()))
    })
    .with_context(|| format!("last: {:?}", routes()))?;
    let yaml: Value = serde_yaml::from_str(&s.agent.cli(&["ingress", "routes", "-o", "yaml"])?)?;
    assert_eq!(yaml, expected);
    let table = s.agent.cli(&["ingress", "routes"])?;
    fits_80("weir ingress routes", &table);
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(
        table.lines().nth(2).is_some_and(|l| l.contains("/api")
            && l.contains("Prefix")
            && l.contains("obs/b:80")
            && l.contains("foo-tls")),
        "{table}"
    );
    let status = s.agent.cli_json(&["status"])?;
    assert_eq!(status["agent"]["ingress"], true);

    // 10 requests through one route, 3 to the default backend: counted by route.
    let get = |host: &str, path: &str| -> Result<u16> {
        let r = curl(
            &s.sandbox.pod("client").netns.name,
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://{NODE_IP}{path}"),
            ],
        )?;
        Ok(r.status)
    };
    for _ in 0..10 {
        assert_eq!(get("foo.example.com", "/api/v1")?, 200);
    }
    for _ in 0..3 {
        assert_eq!(get("other.test", "/nothing")?, 200);
    }
    let m = prom::scrape(&s.sandbox.node.name)?;
    let api = [
        ("host", "foo.example.com"),
        ("path", "/api"),
        ("service", "obs/b"),
    ];
    let mut api_200 = api.to_vec();
    api_200.push(("code", "200"));
    assert_eq!(
        prom::value(&m, "weir_ingress_requests_total", &api_200),
        Some(10.0),
        "{m}"
    );
    assert_eq!(
        prom::value(&m, "weir_ingress_request_duration_seconds_count", &api),
        Some(10.0)
    );
    let default = [
        ("host", ""),
        ("path", ""),
        ("service", "obs/a"),
        ("code", "200"),
    ];
    assert_eq!(
        prom::value(&m, "weir_ingress_requests_total", &default),
        Some(3.0),
        "{m}"
    );

    // Endpoints follow the EndpointSlices: b loses one.
    http_service(&s, "b", 11, &["be2"])?;
    wait("b with 1 endpoint in the routes", 30, || {
        let r = routes()?;
        Ok((r[1]["endpoints"] == 1 && r[3]["endpoints"] == 1).then_some(()))
    })?;
    Ok(())
}

/// An EndpointSlice with the trigger-time annotation `at`.
fn annotated(slice_yaml: &str, at: SystemTime) -> String {
    slice_yaml.replacen(
        "metadata:\n",
        &format!(
            "metadata:\n  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{}\"\n",
            weir::source::status::rfc3339(at)
        ),
        1,
    )
}

#[test]
fn change_counters_and_network_programming_latency_follow_known_changes() -> Result<()> {
    let started = Instant::now();
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080)])?;
    let node = s.sandbox.node.name.clone();
    let ports = [port("http", 80, "TCP", 8080)];
    s.manifests
        .write("svc.yaml", &service(NS, "changed", CLUSTER_IP, &ports))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 0)?;
    let m = prom::scrape(&node)?;
    let changes = |m: &str, what: &str| {
        prom::value(
            m,
            &format!("weir_sync_proxy_rules_{what}_changes_total"),
            &[],
        )
    };
    assert_eq!(changes(&m, "service"), Some(1.0), "{m}");
    assert_eq!(changes(&m, "endpoint"), Some(0.0));
    let latency = "weir_network_programming_duration_seconds";
    assert_eq!(prom::value(&m, &format!("{latency}_count"), &[]), Some(0.0));

    // A slice whose change was triggered 1.5 s (or more: the annotation has
    // seconds precision) before it is written, after the agent started:
    // one observation above 1 s.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    let (be1, be2) = (s.backend_ip("be1"), s.backend_ip("be2"));
    let be = move |n: &str| (if n == "be1" { be1 } else { be2 }, true);
    let first = slice(NS, "changed-1", "changed", &ports, &[be("be1")]);
    let at = SystemTime::now() - Duration::from_millis(1500);
    s.manifests.write("slice.yaml", &annotated(&first, at))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 1)?;
    let m = prom::scrape(&node)?;
    assert_eq!(changes(&m, "endpoint"), Some(1.0), "{m}");
    assert_eq!(
        prom::value(&m, &format!("{latency}_count"), &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(prom::bucket(&m, latency, 1.0), Some(0.0), "{m}");
    assert!(prom::value(&m, &format!("{latency}_sum"), &[]).unwrap_or(0.0) >= 1.5);
    // kube-proxy's buckets: 0.25 s up to 5 min.
    assert_eq!(prom::samples(&m, &format!("{latency}_bucket")).len(), 81);

    // Three more changes without the annotation: the file's change time
    // starts each; the counters say 4.
    for eps in [
        vec![be("be1"), be("be2")],
        vec![be("be2")],
        vec![be("be1"), be("be2")],
    ] {
        s.manifests.write(
            "slice.yaml",
            &slice(NS, "changed-1", "changed", &ports, &eps),
        )?;
        s.agent.wait_frontend("198.19.0.10:80/TCP", eps.len())?;
    }
    // The last sync may still be finishing its bookkeeping: wait for the count.
    let m = wait("4 endpoint changes", 10, || {
        let m = prom::scrape(&node)?;
        Ok((changes(&m, "endpoint") == Some(4.0)).then_some(m))
    })?;
    assert_eq!(changes(&m, "service"), Some(1.0));
    assert_eq!(
        prom::value(&m, &format!("{latency}_count"), &[]),
        Some(4.0),
        "{m}"
    );
    Ok(())
}

/// The agent's log lines from the kernel programs.
fn bpf_lines(agent: &Agent) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains(" bpf: "))
        .map(str::to_string)
        .collect()
}

/// The translated size (bytes_xlated) of the tc program the agent attached
/// to the client pod's device, read through its pinned link with bpftool.
fn client_tc_program_size(agent: &Agent) -> Result<u64> {
    let link = std::fs::read_dir(agent.bpffs.join("links"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tc_lxcclient_"))
        })
        .context("no pinned tc link for lxcclient")?;
    let bpftool = |args: &[&str]| -> Result<Value> {
        let out = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let link = bpftool(&["link", "show", "pinned", &link.to_string_lossy()])?;
    let id = link["prog_id"].as_u64().context("prog_id")?;
    let prog = bpftool(&["prog", "show", "id", &id.to_string()])?;
    prog["bytes_xlated"].as_u64().context("bytes_xlated")
}

#[test]
fn bpf_log_prints_a_drop_with_its_reason_only_with_the_flag() -> Result<()> {
    let empty = Ipv4Addr::new(198, 19, 0, 11);
    let ports = [port("http", 80, "TCP", 8080)];
    let mut sizes = Vec::new();
    for flag in [true, false] {
        let args: &[&str] = if flag { &["--bpf-log"] } else { &[] };
        let mut s = Scenario::start_with(1, &[(Proto::Tcp, 8080)], args)?;
        s.manifests
            .write("empty.yaml", &service(NS, "empty", empty, &ports))?;
        s.agent.wait_frontend("198.19.0.11:80/TCP", 0)?;
        let rejected = s.send("client", Proto::Tcp, empty, 80, 1)?;
        assert!(rejected.iter().all(Result::is_err));
        let drops = || -> Result<u64> {
            let maps = weir::dataplane::maps::Maps::open_pinned(&s.agent.bpffs)?;
            Ok(maps.drops(lb_common::DROP_NO_ENDPOINT))
        };
        wait("the drop counted", 10, || Ok((drops()? >= 1).then_some(())))?;
        sizes.push(client_tc_program_size(&s.agent)?);
        let expected = "drop no_endpoint: 198.18.1.2:";
        if flag {
            let line = wait("the drop's log line", 10, || {
                Ok(bpf_lines(&s.agent)
                    .into_iter()
                    .find(|l| l.contains(expected)))
            })?;
            assert!(
                line.contains("-> 198.19.0.11:80 proto 6 service "),
                "{line}"
            );
        } else {
            // The reader would have printed it by now with the flag.
            std::thread::sleep(Duration::from_secs(1));
            let lines = bpf_lines(&s.agent);
            assert!(lines.is_empty(), "{lines:?}");
        }
    }
    // Off, the log level is 0 in read-only data and the verifier removes
    // the log code: the program that runs is smaller.
    assert!(
        sizes[1] < sizes[0],
        "xlated bytes with and without --bpf-log: {sizes:?}"
    );
    Ok(())
}
