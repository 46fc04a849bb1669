//! `cargo xtask setup`: everything a fresh machine needs, installed only when
//! missing, so that a second run takes seconds. See ../shared/TOOLCHAIN.md.
use std::{os::unix::fs::PermissionsExt, path::PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{output, status, succeeds};

/// Debian packages the tests, demo and benchmarks use.
const PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "util-linux",
    "procps",
    "iptables",
    "nftables",
    "iperf3",
    "socat",
    "tcpdump",
    "ethtool",
    // Ingress tests (curl: HTTP/1.1, HTTP/2, TLS with SNI) and the L7 measurement.
    "curl",
    "wrk",
    // Gateway API tests: a TLS backend behind a TLSRoute passthrough (s_server).
    "openssl",
    // The benchmark's plots: text drawn with DejaVu Sans.
    "fonts-dejavu-core",
    // cargo xtask image and the test that runs the agent from it.
    "podman",
    "runc",
    "debootstrap",
];
/// What only the benchmark needs (sections 4-6: the reference proxy, with
/// its stream module for TLS-terminated TCP).
const BENCH_PACKAGES: &[&str] = &["nginx", "libnginx-mod-stream"];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's hook that tells maintainer scripts whether they may start
/// services: 101 means "no". See `bench_packages`.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn run() -> Result<()> {
    if output("id", &["-u"]).as_deref().map(str::trim) != Some("0") {
        bail!("Weir's setup, tests and demo need root (eBPF, network namespaces)");
    }
    packages()?;
    bpffs()?;
    nightly()?;
    bpf_linker()?;
    Ok(())
}

fn packages() -> Result<()> {
    install(PACKAGES)
}

/// `cargo xtask setup --bench` (and `cargo xtask bench`): the benchmark's
/// extra packages. nginx must not end up serving :80 in the root network
/// namespace: the benchmark runs its own nginx, with its own configuration
/// file, inside its namespaces only. So its package is installed with a
/// policy-rc.d that forbids starting services, and a system nginx that runs
/// anyway (systemd starts it regardless of policy-rc.d on some setups) is
/// stopped and disabled.
pub fn bench_packages() -> Result<()> {
    let missing = missing(BENCH_PACKAGES);
    if missing.is_empty() {
        return Ok(());
    }
    let ours = !std::path::Path::new(POLICY_RC_D).exists();
    if ours {
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# written by cargo xtask setup --bench\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = install(&missing);
    if ours {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    installed?;
    stop_system_nginx();
    Ok(())
}

/// Stops and disables the distribution's nginx service if something started it.
fn stop_system_nginx() {
    if succeeds("systemctl", &["is-active", "--quiet", "nginx"]) {
        eprintln!("setup: stopping and disabling the system nginx (the benchmark runs its own)");
        let _ = status("systemctl", &["disable", "--now", "nginx"]);
    } else if std::path::Path::new("/run/nginx.pid").exists() {
        eprintln!("setup: stopping the system nginx (the benchmark runs its own)");
        let _ = status("nginx", &["-s", "quit"]);
    }
}

fn missing<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| !succeeds("dpkg", &["-s", p]))
        .collect()
}

/// apt-get install of what `packages` lacks.
fn install(packages: &[&str]) -> Result<()> {
    let missing = missing(packages);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    status("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    status("apt-get", &args)
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    status("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

fn nightly() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        status(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        status(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// bpf-linker built against the nightly's own libLLVM (Debian has no LLVM 22).
fn bpf_linker() -> Result<()> {
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"]).context("rustc +nightly")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", lib_dir.display()))?;
    let version = output("rustc", &["+nightly", "-vV"]).unwrap_or_default();
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("LLVM version of rustc +nightly")?
        .to_string();
    let stamp_text = format!("{BPF_LINKER_VERSION} llvm-{major} {}\n", lib.display());
    let cache = home().join(".cache/weir");
    let stamp = cache.join("bpf-linker.stamp");
    let bin = home().join(".cargo/bin/bpf-linker");
    if bin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str())
    {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)");
    let prefix = cache.join("rust-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let file_name = lib.file_name().context("libLLVM file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let feature = format!("llvm-{major}");
    let prefix_str = prefix.to_string_lossy().into_owned();
    let status_ok = std::process::Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args(["--no-default-features", "--features", &feature])
        .env("LLVM_PREFIX", &prefix_str)
        .status()
        .context("cargo install bpf-linker")?
        .success();
    if !status_ok {
        bail!("building bpf-linker failed");
    }
    std::fs::write(&stamp, stamp_text)?;
    Ok(())
}
