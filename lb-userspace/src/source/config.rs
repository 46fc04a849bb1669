//! `--config FILE`: the subset of kube-proxy's KubeProxyConfiguration
//! (kubeproxy.config.k8s.io/v1alpha1) that Weir reads, with kube-proxy's
//! defaults, and the flags of the same names, which override the file.
//!
//! Unknown fields (and kube-proxy fields Weir does not use, such as `mode`
//! or `iptables`) are reported by name, so that a typo is not silently
//! ignored; a bad value is an error that names its field.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;

use super::{
    duration::GoDuration,
    kube::{KubeOptions, DEFAULT_CONFIG_SYNC_PERIOD, DEFAULT_MIN_SYNC_PERIOD},
};

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";

/// The effective configuration: defaults, then the file, then the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// clusterCIDR: the pod network(s), comma-separated in the file and flag.
    pub cluster_cidrs: Vec<Cidr>,
    /// nodePortAddresses: where NodePorts are served (empty: every node address).
    pub node_port_addresses: Vec<NodePortAddress>,
    pub hostname_override: Option<String>,
    /// None: disabled (an empty string in the file or flag).
    pub healthz_bind_address: Option<SocketAddr>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub config_sync_period: Duration,
    pub min_sync_period: Duration,
    pub conntrack: Conntrack,
    /// clientConnection.kubeconfig
    pub kubeconfig: Option<PathBuf>,
}

/// kube-proxy's conntrack settings (v1alpha1 defaults). A zero timeout
/// means "leave the kernel's value", as in kube-proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conntrack {
    pub max_per_core: u32,
    pub min: u32,
    pub tcp_established_timeout: Duration,
    pub tcp_close_wait_timeout: Duration,
    pub udp_timeout: Duration,
    pub udp_stream_timeout: Duration,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            cluster_cidrs: Vec::new(),
            node_port_addresses: Vec::new(),
            hostname_override: None,
            healthz_bind_address: Some(
                DEFAULT_HEALTHZ_BIND_ADDRESS.parse().expect("valid default"),
            ),
            metrics_bind_address: Some(
                DEFAULT_METRICS_BIND_ADDRESS.parse().expect("valid default"),
            ),
            config_sync_period: DEFAULT_CONFIG_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            conntrack: Conntrack::default(),
            kubeconfig: None,
        }
    }
}

impl ProxyConfig {
    /// Puts the settings the Kubernetes source uses into `options`.
    pub fn apply_to(&self, options: &mut KubeOptions) {
        options.min_sync_period = self.min_sync_period;
        options.config_sync_period = self.config_sync_period;
        if let Some(path) = &self.kubeconfig {
            options.kubeconfig = Some(path.clone());
        }
    }
}

/// An IP network, e.g. 198.18.0.0/15 or 2001:db8::/32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR {s:?}: expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid CIDR {s:?}: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("invalid CIDR {s:?}: prefix must be 0-{max}"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One entry of nodePortAddresses: a CIDR, or the keywords "primary" (the
/// node's primary IPs) and "all" (every address of the node). What each
/// selects is decided in `node_addrs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    Primary,
    All,
    Cidr(Cidr),
}

impl FromStr for NodePortAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "primary" => Ok(NodePortAddress::Primary),
            "all" => Ok(NodePortAddress::All),
            other if !other.contains('/') => Err(format!(
                "invalid entry {other:?}: expected primary, all or a CIDR"
            )),
            other => other.parse().map(NodePortAddress::Cidr),
        }
    }
}

impl fmt::Display for NodePortAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePortAddress::Primary => f.write_str("primary"),
            NodePortAddress::All => f.write_str("all"),
            NodePortAddress::Cidr(c) => c.fmt(f),
        }
    }
}

fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// An "ip:port" bind address; an empty string disables the server.
fn parse_bind_address(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("invalid address {s:?}: expected IP:PORT"))
}

/// Deserialises a string through `parse`, reporting its error as the field's.
fn via_str<'de, D, T>(d: D, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

fn de_cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    via_str(d, parse_cidrs).map(Some)
}

fn de_bind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<SocketAddr>>, D::Error> {
    via_str(d, parse_bind_address).map(Some)
}

#[derive(Debug)]
struct NodePortAddressField(NodePortAddress);

impl<'de> Deserialize<'de> for NodePortAddressField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_str(d, |s| s.parse()).map(NodePortAddressField)
    }
}

/// The file as written: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(rename = "clusterCIDR", default, deserialize_with = "de_cidrs")]
    cluster_cidr: Option<Vec<Cidr>>,
    node_port_addresses: Option<Vec<NodePortAddressField>>,
    hostname_override: Option<String>,
    #[serde(default, deserialize_with = "de_bind")]
    healthz_bind_address: Option<Option<SocketAddr>>,
    #[serde(default, deserialize_with = "de_bind")]
    metrics_bind_address: Option<Option<SocketAddr>>,
    config_sync_period: Option<GoDuration>,
    min_sync_period: Option<GoDuration>,
    conntrack: Option<FileConntrack>,
    client_connection: Option<FileClientConnection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileConntrack {
    max_per_core: Option<u32>,
    min: Option<u32>,
    tcp_established_timeout: Option<GoDuration>,
    tcp_close_wait_timeout: Option<GoDuration>,
    udp_timeout: Option<GoDuration>,
    udp_stream_timeout: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileClientConnection {
    kubeconfig: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    /// A bad value: `field` is its path, e.g. `conntrack.udpTimeout`.
    #[error("{path}: {field}: {reason}")]
    Field {
        path: String,
        field: String,
        reason: String,
    },
    #[error("{flag}: {reason}")]
    Flag { flag: String, reason: String },
}

/// A parsed file: the configuration and the fields Weir did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: ProxyConfig,
    /// Dotted paths of unknown (or unused) fields, e.g. `iptables.masqueradeAll`.
    pub unknown_fields: Vec<String>,
}

/// Parses a KubeProxyConfiguration document. `origin` names it in errors.
pub fn parse(origin: &str, text: &str) -> Result<Loaded, ConfigError> {
    let field_error = |field: String, reason: String| ConfigError::Field {
        path: origin.to_string(),
        field,
        reason,
    };
    let mut unknown_fields = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    let mut report = |path: serde_ignored::Path| unknown_fields.push(dotted(&path));
    let ignored = serde_ignored::Deserializer::new(de, &mut report);
    let file: File = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let field = e.path().to_string();
        let reason = e.into_inner().to_string();
        field_error(
            if field == "." {
                "(document)".into()
            } else {
                field
            },
            reason,
        )
    })?;
    match file.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(field_error(
                "apiVersion".into(),
                format!("unsupported {other:?} (expected {API_VERSION})"),
            ))
        }
        None => return Err(field_error("apiVersion".into(), "missing".into())),
    }
    if file.kind.as_deref() != Some(KIND) {
        return Err(field_error(
            "kind".into(),
            format!("{:?}: expected {KIND}", file.kind.unwrap_or_default()),
        ));
    }
    let mut config = ProxyConfig::default();
    if let Some(cidrs) = file.cluster_cidr {
        config.cluster_cidrs = cidrs;
    }
    if let Some(addrs) = file.node_port_addresses {
        config.node_port_addresses = addrs.into_iter().map(|a| a.0).collect();
    }
    config.hostname_override = file.hostname_override.filter(|h| !h.trim().is_empty());
    if let Some(a) = file.healthz_bind_address {
        config.healthz_bind_address = a;
    }
    if let Some(a) = file.metrics_bind_address {
        config.metrics_bind_address = a;
    }
    if let Some(d) = file.config_sync_period {
        config.config_sync_period = d.0;
    }
    if let Some(d) = file.min_sync_period {
        config.min_sync_period = d.0;
    }
    if let Some(c) = file.conntrack {
        let ct = &mut config.conntrack;
        ct.max_per_core = c.max_per_core.unwrap_or(ct.max_per_core);
        ct.min = c.min.unwrap_or(ct.min);
        let set = |value: Option<GoDuration>, into: &mut Duration| {
            if let Some(d) = value {
                *into = d.0;
            }
        };
        set(c.tcp_established_timeout, &mut ct.tcp_established_timeout);
        set(c.tcp_close_wait_timeout, &mut ct.tcp_close_wait_timeout);
        set(c.udp_timeout, &mut ct.udp_timeout);
        set(c.udp_stream_timeout, &mut ct.udp_stream_timeout);
    }
    config.kubeconfig = file
        .client_connection
        .and_then(|c| c.kubeconfig)
        .filter(|k| !k.is_empty())
        .map(PathBuf::from);
    Ok(Loaded {
        config,
        unknown_fields,
    })
}

/// `conntrack.tcpBeLiberal`, `nodePortAddresses[1]`: the path as a user
/// wrote it (serde_ignored's Display also shows Option layers as `?`).
fn dotted(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        Path::Map { parent, key } => match dotted(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: origin.clone(),
        reason: e.to_string(),
    })?;
    parse(&origin, &text)
}

/// The agent's flags for the configuration (kube-proxy's names). Each given
/// flag overrides the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigFlags {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The pods' CIDR range(s), comma-separated.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Where NodePorts are served: comma-separated CIDRs and the keywords "primary" (the Node object's addresses, else the --devices uplinks') and "all" (default: primary).
    #[arg(long)]
    pub nodeport_addresses: Option<String>,
    /// IP:PORT of /healthz and /livez (default 0.0.0.0:10256; empty disables).
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// IP:PORT of /metrics (default 127.0.0.1:10249; empty disables).
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// Conntrack entries per CPU (default 32768).
    #[arg(long)]
    pub conntrack_max_per_core: Option<u32>,
    /// Least conntrack entries (default 131072).
    #[arg(long)]
    pub conntrack_min: Option<u32>,
    /// Idle timeout of established TCP flows (Go duration, default 24h0m0s).
    #[arg(long)]
    pub conntrack_tcp_timeout_established: Option<GoDuration>,
    /// Timeout of TCP flows in CLOSE_WAIT (Go duration, default 1h0m0s).
    #[arg(long)]
    pub conntrack_tcp_timeout_close_wait: Option<GoDuration>,
    /// Idle timeout of UDP flows (Go duration; 0: the kernel's).
    #[arg(long)]
    pub conntrack_udp_timeout: Option<GoDuration>,
    /// Idle timeout of UDP streams (Go duration; 0: the kernel's).
    #[arg(long)]
    pub conntrack_udp_timeout_stream: Option<GoDuration>,
}

impl ConfigFlags {
    /// Defaults, then the `--config` file (if any), then these flags.
    /// Returns the unknown fields of the file too.
    pub fn resolve(&self) -> Result<Loaded, ConfigError> {
        let mut loaded = match &self.config {
            Some(path) => load(path)?,
            None => Loaded {
                config: ProxyConfig::default(),
                unknown_fields: Vec::new(),
            },
        };
        self.apply(&mut loaded.config)?;
        Ok(loaded)
    }

    /// Overrides `config` with the flags that were given.
    pub fn apply(&self, config: &mut ProxyConfig) -> Result<(), ConfigError> {
        let flag_error = |flag: &str| {
            let flag = flag.to_string();
            move |reason: String| ConfigError::Flag { flag, reason }
        };
        if let Some(s) = &self.cluster_cidr {
            config.cluster_cidrs = parse_cidrs(s).map_err(flag_error("--cluster-cidr"))?;
        }
        if let Some(s) = &self.nodeport_addresses {
            config.node_port_addresses = s
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(flag_error("--nodeport-addresses"))?;
        }
        if let Some(s) = &self.healthz_bind_address {
            config.healthz_bind_address =
                parse_bind_address(s).map_err(flag_error("--healthz-bind-address"))?;
        }
        if let Some(s) = &self.metrics_bind_address {
            config.metrics_bind_address =
                parse_bind_address(s).map_err(flag_error("--metrics-bind-address"))?;
        }
        let ct = &mut config.conntrack;
        if let Some(v) = self.conntrack_max_per_core {
            ct.max_per_core = v;
        }
        if let Some(v) = self.conntrack_min {
            ct.min = v;
        }
        for (flag, into) in [
            (
                self.conntrack_tcp_timeout_established,
                &mut ct.tcp_established_timeout,
            ),
            (
                self.conntrack_tcp_timeout_close_wait,
                &mut ct.tcp_close_wait_timeout,
            ),
            (self.conntrack_udp_timeout, &mut ct.udp_timeout),
            (
                self.conntrack_udp_timeout_stream,
                &mut ct.udp_stream_timeout,
            ),
        ] {
            if let Some(d) = flag {
                *into = d.0;
            }
        }
        Ok(())
    }
}
