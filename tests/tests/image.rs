//! The agent from its OCI image (`cargo xtask test` builds localhost/weir:test
//! from the debug agent, `cargo xtask image` the release one), run as the
//! DaemonSet runs it: not privileged, exactly the DaemonSet's capabilities
//! and seccomp setting (read from manifests/daemonset.yaml), bpffs, the
//! control socket directory and the cgroup2 root mounted, in a sandbox
//! node's network namespace. A ClusterIP answers a pod (tc) and a process
//! of the node (socket LB), and `weir status` works inside the container.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use weir_tests::{
    cgroup::{sock_client, TestCgroup},
    cmd::run,
    echo::{all_ok, Proto},
    manifests::{port, service, slice, ManifestDir},
    netns::unique_tag,
    scenario::{backends_of, names, CLUSTER_IP, TIMEOUT},
    Sandbox,
};

const IMAGE: &str = "localhost/weir:test";

/// The agent container's capabilities and seccomp profile type in the DaemonSet.
fn daemonset_security() -> Result<(Vec<String>, String, bool)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/daemonset.yaml");
    let ds: DaemonSet = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let agent = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().find(|c| c.name == "weir"))
        .context("agent container")?;
    let sc = agent.security_context.context("securityContext")?;
    let caps = sc.capabilities.and_then(|c| c.add).unwrap_or_default();
    let seccomp = sc.seccomp_profile.map(|p| p.type_).unwrap_or_default();
    Ok((caps, seccomp, sc.privileged.unwrap_or(false)))
}

/// Removes the container when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("podman", &["rm", "--force", "--time", "2", &self.0]);
    }
}

#[test]
fn the_agent_runs_from_its_image_with_the_daemonsets_capabilities() -> Result<()> {
    if run("podman", &["image", "exists", IMAGE]).is_err() {
        bail!("image {IMAGE} is missing: cargo xtask test builds it (cargo xtask image for weir:0.1.0)");
    }
    let (caps, seccomp, privileged) = daemonset_security()?;
    assert!(!privileged);
    assert_eq!(seccomp, "Unconfined");
    let sandbox = Sandbox::standard(2)?;
    let _servers = sandbox.start_echo_servers(&[(Proto::Tcp, 8080)])?;
    let manifests = ManifestDir::new(&sandbox.tag)?;
    let ports = [port("http", 80, "TCP", 8080)];
    let eps: Vec<_> = ["be1", "be2"]
        .iter()
        .map(|b| (sandbox.pod(b).ip, true))
        .collect();
    manifests.write(
        "svc.yaml",
        &format!(
            "{}\n---\n{}",
            service("img", "echo", CLUSTER_IP, &ports),
            slice("img", "echo-1", "echo", &ports, &eps)
        ),
    )?;
    let cgroup = TestCgroup::create(&unique_tag())?;
    let run_dir = std::env::temp_dir().join(format!("weir-test-{}-run", sandbox.tag));
    std::fs::create_dir_all(&run_dir)?;
    let bpffs = format!("/sys/fs/bpf/weir-test-{}", sandbox.tag);
    let name = format!("weir-test-{}", sandbox.tag);
    let netns = weir_tests::netns::path(&sandbox.node.name);
    let mut args: Vec<String> = [
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "--detach",
        "--name",
        &name,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop",
        "ALL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for cap in &caps {
        args.extend(["--cap-add".into(), format!("CAP_{cap}")]);
    }
    args.extend([
        "--security-opt".into(),
        "seccomp=unconfined".into(),
        format!("--network=ns:{}", netns.display()),
        "-v".into(),
        "/sys/fs/bpf:/sys/fs/bpf".into(),
        "-v".into(),
        format!("{}:/manifests:ro", manifests.path.display()),
        "-v".into(),
        format!("{}:/run/weir", run_dir.display()),
        "-v".into(),
        format!("{}:/run/weir/cgroupv2", cgroup.path().display()),
        IMAGE.into(),
        "agent".into(),
        "--source=dir:/manifests".into(),
        format!("--bpffs={bpffs}"),
        "--hostname-override=node-a".into(),
        "--pod-devices=lxc*".into(),
        "--poll-interval-ms=100".into(),
        "--socket-lb=all".into(),
        "--cgroup-root=/run/weir/cgroupv2".into(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run("podman", &argv)?;
    let container = Container(name);
    let logs = || run("podman", &["logs", &container.0]).unwrap_or_else(|e| format!("{e:#}"));

    // The agent inside reports through its control socket: wait for a sync.
    let status = |extra: &[&str]| {
        let mut a = vec![
            "exec",
            container.0.as_str(),
            "weir",
            "status",
            "--bpffs",
            &bpffs,
        ];
        a.extend_from_slice(extra);
        run("podman", &a)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let json = loop {
        if let Ok(out) = status(&["-o", "json"]) {
            let v: serde_json::Value = serde_json::from_str(&out)?;
            if v["agent"]["last_sync"]["frontends"] == 1 {
                break v;
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("the agent in the container never synced:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        json["agent"]["socket_lb"]["state"],
        "attached",
        "{json}\n{}",
        logs()
    );
    assert!(status(&[])?.contains("Sock LB:  all on /run/weir/cgroupv2"));

    // A pod reaches the ClusterIP through tc...
    let client = &sandbox.pod("client").netns.name;
    let addr = std::net::SocketAddrV4::new(CLUSTER_IP, 80);
    let replies = all_ok(
        weir_tests::echo::requests(client, Proto::Tcp, addr, 12, TIMEOUT)?,
        "ClusterIP from the pod",
    )
    .with_context(logs)?;
    assert_eq!(backends_of(&replies), names(&["be1", "be2"]));
    // ...and a process of the node through socket LB.
    let node_client = sock_client(
        std::path::Path::new(env!("CARGO_BIN_EXE_weir-sock-client")),
        Some(cgroup.path()),
        &sandbox.node.name,
        "tcp",
        &format!("{CLUSTER_IP}:80"),
        4,
    )?;
    for r in &node_client {
        assert_eq!(r["ok"], true, "{r}\n{}", logs());
        assert_eq!(r["peer"], format!("{CLUSTER_IP}:80"));
    }
    drop(container);
    let _ = run(
        &weir_tests::agent::weir_bin()?.to_string_lossy(),
        &["uninstall", "--bpffs", &bpffs],
    );
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}
