//! A quick L7 measurement, not a test (ignored by default; no timing is
//! asserted): requests per second and p99 latency with wrk through Weir's
//! ingress proxy and through nginx configured for the same route and
//! backends, in the same run and sandbox.
//!
//! Run: `WEIR_BIN=target/release/weir cargo test -p weir-tests --test ingress_bench -- --ignored --nocapture`
//! (needs root, wrk and nginx: `cargo xtask setup`, then `apt-get install nginx-light`).
use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use weir_tests::{
    cmd::ip,
    http_backend::HttpBackend,
    ingress::{backend, curl, ingress, ingress_class, node},
    manifests::{port, service, slice},
    netns,
    scenario::Scenario,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// nginx listens here in the node namespace (not an ingress address).
const NGINX_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);

struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx(node_ns: &str, backends: &[Ipv4Addr]) -> Result<Nginx> {
    let dir = std::env::temp_dir().join(format!("weir-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {b}:8080;\n"))
        .collect();
    let conf = format!(
        r#"worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream app {{
{servers}  }}
  server {{
    listen {NGINX_IP}:80;
    server_name bench.example;
    location / {{
      proxy_pass http://app;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns::path(node_ns).display()))
        .args(["--", "nginx", "-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(&path)
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    Ok(Nginx { child, dir })
}

/// (requests/s, p99 latency) from wrk in namespace `ns`.
fn wrk(ns: &str, url: &str) -> Result<(f64, String, String)> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns::path(ns).display()))
        .args([
            "--",
            "wrk",
            "-t2",
            "-c32",
            "-d10s",
            "--latency",
            "-H",
            "Host: bench.example",
            url,
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    Ok((rps, p99, errors))
}

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
    let _nginx = nginx(&node_ns, &ips)?;
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
    let mut rows = Vec::new();
    // Alternate, twice each, so that neither always runs first.
    for round in 0..2 {
        for (name, url) in [("weir", &weir_url), ("nginx", &nginx_url)] {
            let (rps, p99, errors) = wrk(&client, url)?;
            rows.push(format!(
                "| {name} | {round} | {rps:.0} | {p99} | {errors} |"
            ));
        }
    }
    println!("\n| proxy | round | requests/s | p99 | errors |\n| --- | --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
