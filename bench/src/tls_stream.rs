//! Section 6: TLS-terminated TCP ("TCP on any port, secured"). One TLS
//! stream of a fixed size from the client pod (socat's OpenSSL client),
//! through a Gateway TLS listener in Terminate mode (the embedded proxy
//! terminates TLS and splices plain bytes to the TLSRoute's backend) and
//! through nginx's stream module (`listen ... ssl`, `proxy_pass`) in the same
//! run, both to the same sink (socat writing to /dev/null) in a backend pod.
//! The two alternate.
use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use weir_tests::{
    cmd::ip,
    manifests::{port, service, slice},
    netns,
    nginx::Nginx,
    scenario::Scenario,
};

use crate::{
    report::{Section, Table},
    stats::{quantile, ratio},
    Mode,
};

const NGINX_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
const POOL: &str = "198.19.5.0/24";
const TLS_PORT: u16 = 9443;
const SINK_PORT: u16 = 9000;
const HOST: &str = "tls.bench.example";
const WORKERS: usize = 2;

/// A process in a namespace, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns::path(ns).display()))
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Sends `bytes` through TLS to `addr`:`TLS_PORT` with socat; the seconds it took.
fn stream(client: &str, addr: Ipv4Addr, bytes: u64) -> Result<f64> {
    let script = format!(
        "head -c {bytes} /dev/zero | socat -u STDIN OPENSSL:{addr}:{TLS_PORT},verify=0,snihost={HOST}"
    );
    let started = Instant::now();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns::path(client).display()))
        .args(["--", "timeout", "120", "sh", "-c", &script])
        .output()
        .context("running socat (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "socat to {addr}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(mode: Mode) -> Result<Section> {
    let (bytes, rounds) = match mode {
        Mode::Quick => (256u64 << 20, 2),
        Mode::Full => (1u64 << 30, 4),
    };
    eprintln!(
        "bench: TLS-terminated TCP, setting up a Gateway TLS listener and nginx's stream module"
    );
    let threads = format!("--ingress-threads={WORKERS}");
    let pool = format!("--gateway-address-pool={POOL}");
    let s = Scenario::start_with(1, &[], &["--ingress", &threads, &pool])?;
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
    let be1 = s.backend_ip("be1");
    let sink_listen = format!("TCP-LISTEN:{SINK_PORT},fork,reuseaddr");
    let _sink = Proc(
        in_ns(
            &s.sandbox.pod("be1").netns.name,
            &[
                "timeout",
                "900",
                "socat",
                "-u",
                &sink_listen,
                "OPEN:/dev/null",
            ],
        )
        .spawn()
        .context("starting the socat sink")?,
    );
    // One certificate for both (openssl: installed by cargo xtask setup).
    let dir = Nginx::dir_for(&s.sandbox.tag);
    std::fs::create_dir_all(&dir)?;
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={HOST}"),
            "-addext",
            &format!("subjectAltName=DNS:{HOST}"),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .context("running openssl")?;
    if !made.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&made.stderr));
    }
    let (crt_pem, key_pem) = (
        std::fs::read_to_string(&crt)?,
        std::fs::read_to_string(&key)?,
    );
    let ports = [port("tcp", SINK_PORT, "TCP", SINK_PORT)];
    let yaml = [
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n".to_string(),
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: tls, namespace: bench}}\nspec:\n  gatewayClassName: weir\n  listeners: [{{name: tls, port: {TLS_PORT}, protocol: TLS, hostname: {HOST}, tls: {{mode: Terminate, certificateRefs: [{{name: cert}}]}}}}]\n"),
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: sink, namespace: bench}}\nspec:\n  parentRefs: [{{name: tls}}]\n  hostnames: [{HOST}]\n  rules: [{{backendRefs: [{{name: sink, port: {SINK_PORT}}}]}}]\n"),
        service("bench", "sink", Ipv4Addr::new(198, 19, 0, 12), &ports),
        slice("bench", "sink-1", "sink", &ports, &[(be1, true)]),
        weir_tests::ingress::tls_secret("bench", "cert", &crt_pem, &key_pem),
    ];
    s.manifests.write("tls.yaml", &yaml.join("\n---\n"))?;
    let gw = crate::gateway_l7::gateway_ready(&s, |a| stream(&client, a, 1024).is_ok())?;
    let nginx = Nginx::start_with(&node_ns, &s.sandbox.tag, |d| {
        let d = d.display();
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes {WORKERS};\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             stream {{\n  server {{\n    listen {NGINX_IP}:{TLS_PORT} ssl;\n    ssl_certificate {d}/tls.crt;\n\
             \x20   ssl_certificate_key {d}/tls.key;\n    proxy_pass {be1}:{SINK_PORT};\n  }}\n}}\n"
        )
    })?;
    let mut ok = false;
    for _ in 0..100 {
        if stream(&client, NGINX_IP, 1024).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !ok {
        bail!(
            "nginx's stream module never took a stream:\n{}",
            nginx.log()
        );
    }
    let mut secs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        eprintln!("bench: TLS-terminated TCP, round {}", round + 1);
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let addr = if i == 0 { gw } else { NGINX_IP };
            secs[i].push(stream(&client, addr, bytes)?);
        }
    }
    drop(nginx);
    drop(s);
    let mib = bytes as f64 / f64::from(1u32 << 20);
    let rate = |v: &mut Vec<f64>| mib / quantile(v, 0.5);
    let (w, n) = (rate(&mut secs[0]), rate(&mut secs[1]));
    let mut table = Table::new(&["stream", "Weir MiB/s", "nginx MiB/s", "Weir / nginx"]);
    table.row(vec![
        format!("{mib:.0} MiB, one connection"),
        format!("{w:.0}"),
        format!("{n:.0}"),
        ratio(w, n),
    ]);
    Ok(Section {
        title: "6. TLS-terminated TCP: a Gateway TLS listener against nginx's stream module".into(),
        intro: format!(
            "One {mib:.0} MiB stream ({rounds} runs each, alternating; the median) from the client \
             pod with socat's OpenSSL client (TLS 1.3, SNI {HOST}) through a Gateway TLS listener \
             in Terminate mode ({gw}:{TLS_PORT}, the embedded proxy with \
             `--ingress-threads={WORKERS}`; a TLSRoute to Service `sink`) and through nginx's \
             stream module ({WORKERS} workers, `listen {NGINX_IP}:{TLS_PORT} ssl`, `proxy_pass` to \
             the same pod), both with the same P-256 certificate, to socat writing to /dev/null \
             in a backend pod. The time includes the handshake. Client, proxies and sink share \
             the machine's cores."
        ),
        tables: vec![(String::new(), table)],
        notes: Vec::new(),
        plots: Vec::new(),
    })
}
