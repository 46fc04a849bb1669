//! nginx as a reference reverse proxy for L7 measurements, run in a network
//! namespace with a configuration file of its own (never the system's
//! /etc/nginx, never the root namespace): upstreams with keep-alive, and
//! host + path prefix routes like an Ingress's. Stopped (master and
//! workers) and its directory removed on drop.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns;

/// A named group of backends.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<SocketAddrV4>,
}

/// Requests for `host` whose path starts with `prefix` go to `upstream`.
#[derive(Clone, Debug)]
pub struct Route {
    pub host: String,
    pub prefix: String,
    pub upstream: String,
}

/// The configuration: everything (pid, logs, temp files) under `dir`.
pub fn config(
    dir: &std::path::Path,
    listen: Ipv4Addr,
    workers: usize,
    upstreams: &[Upstream],
    routes: &[Route],
) -> String {
    let dir = dir.display();
    let mut c = String::new();
    let _ = write!(
        c,
        "worker_processes {workers};\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n\
         \x20 client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         \x20 fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n\
         \x20 scgi_temp_path {dir}/scgi;\n"
    );
    for u in upstreams {
        let _ = writeln!(c, "  upstream {} {{", u.name);
        for s in &u.servers {
            let _ = writeln!(c, "    server {s};");
        }
        // Upstream keep-alive, as Weir's connection pool does.
        c.push_str("    keepalive 64;\n  }\n");
    }
    let mut hosts: Vec<&str> = routes.iter().map(|r| r.host.as_str()).collect();
    hosts.dedup();
    for host in hosts {
        let _ = writeln!(
            c,
            "  server {{\n    listen {listen}:80;\n    server_name {host};"
        );
        for r in routes.iter().filter(|r| r.host == host) {
            let _ = writeln!(
                c,
                "    location {} {{\n      proxy_pass http://{};\n      proxy_http_version 1.1;\n\
                 \x20     proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                 \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
                 \x20     proxy_set_header X-Forwarded-Host $host;\n    }}",
                r.prefix, r.upstream
            );
        }
        c.push_str("  }\n");
    }
    c.push_str("}\n");
    c
}

pub struct Nginx {
    child: std::process::Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in namespace `ns` listening on `listen`:80 (an address
    /// the caller put in that namespace). `tag` names its directory.
    pub fn start(
        ns: &str,
        tag: &str,
        listen: Ipv4Addr,
        workers: usize,
        upstreams: &[Upstream],
        routes: &[Route],
    ) -> Result<Self> {
        Self::start_with(ns, tag, |dir| {
            config(dir, listen, workers, upstreams, routes)
        })
    }

    /// Starts nginx in namespace `ns` with the configuration `config` writes
    /// for its directory (pid, logs and temp files belong there).
    pub fn start_with(
        ns: &str,
        tag: &str,
        config: impl FnOnce(&std::path::Path) -> String,
    ) -> Result<Self> {
        let dir = Self::dir_for(tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config(&dir))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::path(ns).display()))
            .args(["--", "nginx", "-e", "stderr", "-g", "daemon off;", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup --bench installs it)")?;
        Ok(Self { child, dir })
    }

    /// Its directory (for files its configuration names, such as certificates).
    pub fn dir_for(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("weir-nginx-{tag}"))
    }

    /// The error log so far (for a failure message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_upstreams_with_keepalive_and_one_server_per_host() {
        let up = |name: &str, port| Upstream {
            name: name.into(),
            servers: vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 11), port)],
        };
        let route = |host: &str, prefix: &str, upstream: &str| Route {
            host: host.into(),
            prefix: prefix.into(),
            upstream: upstream.into(),
        };
        let c = config(
            std::path::Path::new("/tmp/x"),
            Ipv4Addr::new(198, 19, 2, 1),
            2,
            &[up("app", 8080), up("api", 8081)],
            &[
                route("a.example", "/", "app"),
                route("a.example", "/api/", "api"),
                route("b.example", "/", "app"),
            ],
        );
        assert!(c.contains("pid /tmp/x/nginx.pid;"), "{c}");
        assert!(
            c.contains("  upstream api {\n    server 198.18.1.11:8081;\n    keepalive 64;\n  }"),
            "{c}"
        );
        assert_eq!(c.matches("listen 198.19.2.1:80;").count(), 2, "{c}");
        assert_eq!(c.matches("server_name a.example;").count(), 1, "{c}");
        assert!(
            c.contains("    location /api/ {\n      proxy_pass http://api;"),
            "{c}"
        );
        assert!(!c.contains("listen 80"), "never the wildcard address: {c}");
    }
}
