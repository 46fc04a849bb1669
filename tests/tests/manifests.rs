//! The install manifests (manifests/*.yaml, not manifests/demo): every
//! document parses as its k8s-openapi type, and the fields the agent relies
//! on are there — RBAC for what the kube source watches, host networking,
//! the bpffs mount, the probes, NODE_NAME, and a ConfigMap whose config
//! `source::config` reads without complaint.
use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    config_maps: Vec<ConfigMap>,
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value, what: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn load() -> Result<Manifests> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no YAML in {}", dir.display());
    }
    let mut m = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let what = format!("{} document {i}", file.display());
            let value = serde_yaml::Value::deserialize(doc).with_context(|| what.clone())?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            match kind.as_str() {
                "ServiceAccount" => m.service_accounts.push(typed(value, &what)?),
                "ClusterRole" => m.cluster_roles.push(typed(value, &what)?),
                "ClusterRoleBinding" => m.bindings.push(typed(value, &what)?),
                "DaemonSet" => m.daemon_sets.push(typed(value, &what)?),
                "ConfigMap" => m.config_maps.push(typed(value, &what)?),
                other => bail!("{what}: unexpected kind {other:?}"),
            }
        }
    }
    Ok(m)
}

fn the<'a, T>(items: &'a [T], what: &str) -> Result<&'a T> {
    match items {
        [one] => Ok(one),
        _ => bail!("expected exactly one {what}, found {}", items.len()),
    }
}

fn daemon_set(m: &Manifests) -> Result<&DaemonSet> {
    the(&m.daemon_sets, "DaemonSet")
}

fn agent_container(ds: &DaemonSet) -> Result<&Container> {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    spec.and_then(|s| s.containers.iter().find(|c| c.name == "weir"))
        .context("no container named weir")
}

/// (apiGroup, resource) -> verbs granted.
fn grants(role: &ClusterRole) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                out.push((
                    group.clone(),
                    resource.clone(),
                    rule.verbs.iter().cloned().collect(),
                ));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_what_the_kube_source_needs_and_no_more() -> Result<()> {
    let m = load()?;
    let role = the(&m.cluster_roles, "ClusterRole")?;
    let grants = grants(role);
    let verbs_of = |group: &str, resource: &str| -> BTreeSet<String> {
        grants
            .iter()
            .filter(|(g, r, _)| g == group && r == resource)
            .flat_map(|(_, _, v)| v.iter().cloned())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // What source::kube lists and watches.
    assert_eq!(verbs_of("", "services"), set(&["list", "watch"]));
    assert_eq!(
        verbs_of("discovery.k8s.io", "endpointslices"),
        set(&["list", "watch"])
    );
    assert_eq!(verbs_of("", "nodes"), set(&["get", "list", "watch"]));
    assert_eq!(verbs_of("", "events"), set(&["create", "patch"]));
    assert_eq!(
        verbs_of("events.k8s.io", "events"),
        set(&["create", "patch"])
    );
    // Least privilege: nothing else, no wildcards.
    for (group, resource, verbs) in &grants {
        assert!(
            matches!(
                (group.as_str(), resource.as_str()),
                ("", "services" | "nodes" | "events")
                    | ("discovery.k8s.io", "endpointslices")
                    | ("events.k8s.io", "events")
            ),
            "unexpected grant on {group}/{resource}"
        );
        assert!(!verbs.contains("*") && !resource.contains('*') && group != "*");
    }

    // The binding ties that role to the DaemonSet's service account.
    let sa = the(&m.service_accounts, "ServiceAccount")?;
    let binding = the(&m.bindings, "ClusterRoleBinding")?;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subject = &binding.subjects.as_ref().context("no subjects")?[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    let pod = daemon_set(&m)?
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")?;
    assert_eq!(pod.service_account_name, sa.metadata.name);
    Ok(())
}

fn pod_spec(ds: &DaemonSet) -> Result<&k8s_openapi::api::core::v1::PodSpec> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")
}

#[test]
fn the_daemonset_runs_on_every_node_in_the_host_network() -> Result<()> {
    let m = load()?;
    let ds = daemon_set(&m)?;
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let pod = pod_spec(ds)?;
    assert_eq!(pod.host_network, Some(true));
    // The agent's own DNS must not depend on the kube-dns ClusterIP.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().context("tolerations")?;
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the DaemonSet must tolerate every taint"
    );

    let agent = agent_container(ds)?;
    let args: Vec<String> = agent
        .command
        .iter()
        .flatten()
        .chain(agent.args.iter().flatten())
        .cloned()
        .collect();
    assert!(args.contains(&"--source=kube".to_string()), "{args:?}");
    assert!(args.contains(&"--hostname-override=$(NODE_NAME)".to_string()));
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .context("env NODE_NAME")?;
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // Capabilities rather than privileged.
    let sc = agent.security_context.as_ref().context("securityContext")?;
    assert_ne!(
        sc.privileged,
        Some(true),
        "the agent must not be privileged"
    );
    let caps: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    for cap in ["NET_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE"] {
        assert!(caps.contains(cap), "missing capability {cap}");
    }
    Ok(())
}

/// Without kube-proxy: socket LB on the host's cgroup2 (mounted by an init
/// container in the host's mount and cgroup namespaces), and the apiserver
/// reachable without the `kubernetes` ClusterIP through ConfigMap values.
#[test]
fn the_daemonset_runs_without_kube_proxy() -> Result<()> {
    let m = load()?;
    let ds = daemon_set(&m)?;
    let pod = pod_spec(ds)?;
    let agent = agent_container(ds)?;
    let args: Vec<&str> = agent.args.iter().flatten().map(String::as_str).collect();
    assert!(args.contains(&"--socket-lb=all"), "{args:?}");
    let root = args
        .iter()
        .find_map(|a| a.strip_prefix("--cgroup-root="))
        .context("--cgroup-root")?;
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == root)
        .context("the cgroup root is not mounted in the agent")?;
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .context("cgroup2 volume")?;
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some(root)
    );
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "mount-cgroup2")
        .context("no init container mounting cgroup2")?;
    let command = init
        .command
        .iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    for part in [
        "--cgroup=/hostproc/1/ns/cgroup",
        "--mount=/hostproc/1/ns/mnt",
        &format!("mount -t cgroup2 none {root}"),
    ] {
        assert!(command.contains(part), "{command}");
    }
    for (var, key) in [
        ("KUBERNETES_SERVICE_HOST", "k8s-service-host"),
        ("KUBERNETES_SERVICE_PORT", "k8s-service-port"),
    ] {
        let env = agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == var)
            .with_context(|| format!("env {var}"))?;
        let r = env
            .value_from
            .as_ref()
            .and_then(|v| v.config_map_key_ref.as_ref())
            .with_context(|| format!("{var} from the ConfigMap"))?;
        assert_eq!(
            (r.name.as_str(), r.key.as_str(), r.optional),
            ("weir-config", key, Some(true))
        );
    }
    Ok(())
}

#[test]
fn bpffs_is_mounted_from_the_host_with_propagation() -> Result<()> {
    let m = load()?;
    let ds = daemon_set(&m)?;
    let pod = pod_spec(ds)?;
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/bpf")
        })
        .context("no hostPath volume for /sys/fs/bpf")?;
    let mount_of = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|vm| vm.name == volume.name)
            .cloned()
    };
    // The agent sees the host's bpffs (and mounts made there later).
    let agent_mount = mount_of(agent_container(ds)?).context("agent bpffs mount")?;
    assert_eq!(agent_mount.mount_path, "/sys/fs/bpf");
    assert_eq!(
        agent_mount.mount_propagation.as_deref(),
        Some("HostToContainer")
    );
    // Bidirectional propagation is only valid in a privileged container: the
    // init container that mounts bpffs on the host.
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| mount_of(c).is_some())
        .context("no init container mounting bpffs")?;
    let init_mount = mount_of(init).expect("found above");
    assert_eq!(init_mount.mount_path, "/sys/fs/bpf");
    assert_eq!(
        init_mount.mount_propagation.as_deref(),
        Some("Bidirectional")
    );
    assert_eq!(
        init.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for vm in c.volume_mounts.iter().flatten() {
            if vm.mount_propagation.as_deref() == Some("Bidirectional") {
                assert_eq!(
                    c.security_context.as_ref().and_then(|s| s.privileged),
                    Some(true),
                    "{}: Bidirectional propagation needs a privileged container",
                    c.name
                );
            }
        }
    }
    Ok(())
}

#[test]
fn probes_use_the_health_port_of_the_config() -> Result<()> {
    let m = load()?;
    let config_map = the(&m.config_maps, "ConfigMap")?;
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .context("ConfigMap key config.yaml")?;
    let loaded = weir::source::config::parse("ConfigMap weir-config", text)?;
    assert!(
        loaded.unknown_fields.is_empty(),
        "fields Weir does not read: {:?}",
        loaded.unknown_fields
    );
    let healthz = loaded
        .config
        .healthz_bind_address
        .context("healthz disabled in the ConfigMap")?;

    let ds = daemon_set(&m)?;
    let agent = agent_container(ds)?;
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/livez"),
        (agent.readiness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .with_context(|| format!("no httpGet probe on {path}"))?;
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(healthz.port().into()));
    }

    // The config file the agent is pointed at is that ConfigMap's key.
    let pod = pod_spec(ds)?;
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.config_map.as_ref().map(|c| c.name.as_str()) == config_map.metadata.name.as_deref()
        })
        .context("no volume from the ConfigMap")?;
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.name == volume.name)
        .context("ConfigMap not mounted in the agent")?;
    let flag = format!("--config={}/config.yaml", mount.mount_path);
    assert!(
        agent.args.iter().flatten().any(|a| *a == flag),
        "the agent is not started with {flag}"
    );
    assert_eq!(
        config_map.metadata.namespace, ds.metadata.namespace,
        "the ConfigMap must live in the DaemonSet's namespace"
    );
    Ok(())
}

#[test]
fn the_agent_accepts_the_daemonsets_flags() -> Result<()> {
    let m = load()?;
    let agent = agent_container(daemon_set(&m)?)?;
    let help = std::process::Command::new(weir_tests::agent::weir_bin()?)
        .args(["agent", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in agent.args.iter().flatten().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().expect("split yields one part");
        assert!(
            help.contains(&format!("{flag} ")),
            "weir agent has no flag {flag}"
        );
    }
    Ok(())
}

#[test]
fn gateway_rbac_grants_the_watches_and_status_writes_and_no_more() -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/gateway/rbac.yaml");
    let text = std::fs::read_to_string(&path)?;
    let role: ClusterRole = serde_yaml::Deserializer::from_str(&text)
        .next()
        .map(ClusterRole::deserialize)
        .context("no ClusterRole")??;
    let got: BTreeSet<(String, String, String)> = grants(&role)
        .into_iter()
        .flat_map(|(g, r, verbs)| verbs.into_iter().map(move |v| (g.clone(), r.clone(), v)))
        .collect();
    let mut want = BTreeSet::new();
    let g = "gateway.networking.k8s.io";
    for r in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tcproutes",
        "tlsroutes",
        "referencegrants",
    ] {
        for v in ["list", "watch"] {
            want.insert((g.to_string(), r.to_string(), v.to_string()));
        }
    }
    for (r, v) in [
        ("gatewayclasses/status", "patch"),
        ("gateways/status", "patch"),
        ("httproutes/status", "get"),
        ("httproutes/status", "patch"),
        ("grpcroutes/status", "get"),
        ("grpcroutes/status", "patch"),
        ("tcproutes/status", "get"),
        ("tcproutes/status", "patch"),
        ("tlsroutes/status", "get"),
        ("tlsroutes/status", "patch"),
    ] {
        want.insert((g.to_string(), r.to_string(), v.to_string()));
    }
    for v in ["list", "watch"] {
        want.insert((String::new(), "namespaces".to_string(), v.to_string()));
    }
    assert_eq!(got, want);
    let class: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/gateway/gatewayclass.yaml"),
    )?)?;
    assert_eq!(
        class["spec"]["controllerName"],
        "weir.dev/gateway-controller"
    );
    Ok(())
}
