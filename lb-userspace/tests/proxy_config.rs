//! `--config`: KubeProxyConfiguration parsing, defaults, unknown fields, bad
//! values, and flags overriding the file.
use std::{net::SocketAddr, time::Duration};

use weir::source::{
    config::{parse, Cidr, ConfigError, ConfigFlags, NodePortAddress, ProxyConfig},
    kube::KubeOptions,
};

const HEADER: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

fn doc(body: &str) -> String {
    format!("{HEADER}{body}")
}

fn field_of(e: ConfigError) -> String {
    match e {
        ConfigError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[test]
fn parses_every_field_of_the_subset() {
    let loaded = parse(
        "cfg.yaml",
        &doc(r#"
clusterCIDR: 198.18.0.0/16,2001:db8::/48
nodePortAddresses: ["primary", "198.19.0.0/24"]
hostnameOverride: node-7
healthzBindAddress: 127.0.0.1:10266
metricsBindAddress: 0.0.0.0:10249
configSyncPeriod: 5m0s
minSyncPeriod: 250ms
conntrack:
  maxPerCore: 0
  min: 1000
  tcpEstablishedTimeout: 12h0m0s
  tcpCloseWaitTimeout: 30m0s
  udpTimeout: 30s
  udpStreamTimeout: 2m0s
clientConnection:
  kubeconfig: /var/lib/weir/kubeconfig
"#),
    )
    .unwrap();
    assert!(
        loaded.unknown_fields.is_empty(),
        "{:?}",
        loaded.unknown_fields
    );
    let c = loaded.config;
    assert_eq!(
        c.cluster_cidrs,
        [
            "198.18.0.0/16".parse::<Cidr>().unwrap(),
            "2001:db8::/48".parse().unwrap()
        ]
    );
    assert_eq!(
        c.node_port_addresses,
        [
            NodePortAddress::Primary,
            NodePortAddress::Cidr("198.19.0.0/24".parse().unwrap())
        ]
    );
    assert_eq!(c.hostname_override.as_deref(), Some("node-7"));
    assert_eq!(
        c.healthz_bind_address,
        Some("127.0.0.1:10266".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        c.metrics_bind_address,
        Some("0.0.0.0:10249".parse().unwrap())
    );
    assert_eq!(c.config_sync_period, Duration::from_secs(300));
    assert_eq!(c.min_sync_period, Duration::from_millis(250));
    assert_eq!(c.conntrack.max_per_core, 0);
    assert_eq!(c.conntrack.min, 1000);
    assert_eq!(
        c.conntrack.tcp_established_timeout,
        Duration::from_secs(12 * 3600)
    );
    assert_eq!(
        c.conntrack.tcp_close_wait_timeout,
        Duration::from_secs(1800)
    );
    assert_eq!(c.conntrack.udp_timeout, Duration::from_secs(30));
    assert_eq!(c.conntrack.udp_stream_timeout, Duration::from_secs(120));
    assert_eq!(
        c.kubeconfig.as_deref(),
        Some(std::path::Path::new("/var/lib/weir/kubeconfig"))
    );
}

#[test]
fn an_empty_configuration_has_kube_proxys_defaults() {
    let c = parse("cfg.yaml", HEADER).unwrap().config;
    assert_eq!(c, ProxyConfig::default());
    assert_eq!(
        c.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(
        c.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.config_sync_period, Duration::from_secs(15 * 60));
    assert_eq!(c.conntrack.max_per_core, 32768);
    assert_eq!(c.conntrack.min, 131072);
    assert_eq!(
        c.conntrack.tcp_established_timeout,
        Duration::from_secs(24 * 3600)
    );
    assert_eq!(
        c.conntrack.tcp_close_wait_timeout,
        Duration::from_secs(3600)
    );
    assert_eq!(c.hostname_override, None);
    assert!(c.cluster_cidrs.is_empty() && c.node_port_addresses.is_empty());
    // null, as kube-proxy writes it, also means the default.
    let c = parse("cfg.yaml", &doc("conntrack:\n  maxPerCore: null\n"))
        .unwrap()
        .config;
    assert_eq!(c.conntrack.max_per_core, 32768);
}

#[test]
fn empty_bind_addresses_disable_the_servers() {
    let c = parse(
        "cfg.yaml",
        &doc("healthzBindAddress: \"\"\nmetricsBindAddress: \"\"\nhostnameOverride: \"\"\n"),
    )
    .unwrap()
    .config;
    assert_eq!(c.healthz_bind_address, None);
    assert_eq!(c.metrics_bind_address, None);
    assert_eq!(c.hostname_override, None);
}

#[test]
fn unknown_and_unused_fields_are_named() {
    let loaded = parse(
        "cfg.yaml",
        &doc("mode: iptables\nminSyncPeriod: 2s\niptables:\n  masqueradeAll: true\nconntrack:\n  tcpBeLiberal: true\nclusterCidr: 198.18.0.0/16\n"),
    )
    .unwrap();
    assert_eq!(
        loaded.unknown_fields,
        ["mode", "iptables", "conntrack.tcpBeLiberal", "clusterCidr"]
    );
    // The known fields still apply.
    assert_eq!(loaded.config.min_sync_period, Duration::from_secs(2));
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        ("minSyncPeriod: 1 second\n", "minSyncPeriod"),
        ("configSyncPeriod: -1s\n", "configSyncPeriod"),
        ("conntrack:\n  udpTimeout: 5x\n", "conntrack.udpTimeout"),
        ("conntrack:\n  maxPerCore: -1\n", "conntrack.maxPerCore"),
        ("clusterCIDR: 198.18.0.0/33\n", "clusterCIDR"),
        ("clusterCIDR: 198.18.0.0\n", "clusterCIDR"),
        ("nodePortAddresses: [\"eth0\"]\n", "nodePortAddresses[0]"),
        ("healthzBindAddress: 0.0.0.0\n", "healthzBindAddress"),
        (
            "metricsBindAddress: localhost:99999\n",
            "metricsBindAddress",
        ),
        ("hostnameOverride: [a]\n", "hostnameOverride"),
    ];
    for (body, field) in cases {
        let e = parse("cfg.yaml", &doc(body)).expect_err(body);
        let message = e.to_string();
        assert_eq!(field_of(e), field, "{body}: {message}");
        assert!(message.starts_with("cfg.yaml: "), "{message}");
    }
}

#[test]
fn only_kube_proxy_configuration_v1alpha1_is_read() {
    let e = parse(
        "cfg.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n",
    )
    .unwrap_err();
    assert_eq!(field_of(e), "apiVersion");
    let e = parse(
        "cfg.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: ConfigMap\n",
    )
    .unwrap_err();
    assert_eq!(field_of(e), "kind");
    let e = parse("cfg.yaml", "kind: KubeProxyConfiguration\n").unwrap_err();
    assert_eq!(field_of(e), "apiVersion");
    assert!(parse("cfg.yaml", "- not a mapping\n").is_err());
}

#[test]
fn flags_override_the_file() {
    let dir = std::env::temp_dir().join(format!("weir-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        doc("clusterCIDR: 198.18.0.0/16\nhealthzBindAddress: 0.0.0.0:1\nminSyncPeriod: 3s\nconntrack:\n  min: 5\n  udpTimeout: 10s\n"),
    )
    .unwrap();
    let flags = ConfigFlags {
        config: Some(path.clone()),
        cluster_cidr: Some("198.19.0.0/24".into()),
        healthz_bind_address: Some("".into()),
        conntrack_udp_timeout: Some("20s".parse().unwrap()),
        ..Default::default()
    };
    let loaded = flags.resolve();
    let _ = std::fs::remove_dir_all(&dir);
    let c = loaded.unwrap().config;
    assert_eq!(c.cluster_cidrs, ["198.19.0.0/24".parse().unwrap()]);
    assert_eq!(c.healthz_bind_address, None);
    assert_eq!(c.conntrack.udp_timeout, Duration::from_secs(20));
    // Not overridden: from the file.
    assert_eq!(c.conntrack.min, 5);
    assert_eq!(c.min_sync_period, Duration::from_secs(3));

    // The kube source gets the file's periods (its own flags apply after).
    let mut options = KubeOptions::default();
    c.apply_to(&mut options);
    assert_eq!(options.min_sync_period, Duration::from_secs(3));

    let bad = ConfigFlags {
        nodeport_addresses: Some("primary,nope".into()),
        ..Default::default()
    };
    let e = bad.resolve().unwrap_err();
    assert!(
        matches!(&e, ConfigError::Flag { flag, .. } if flag == "--nodeport-addresses"),
        "{e}"
    );
    let missing = ConfigFlags {
        config: Some("/nonexistent/weir.yaml".into()),
        ..Default::default()
    };
    assert!(matches!(missing.resolve(), Err(ConfigError::Read { .. })));
}
