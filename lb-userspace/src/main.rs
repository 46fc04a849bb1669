//! The `weir` binary: the agent and the inspection commands.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigHandler, Signal};
use weir::{
    agent::{self, AgentConfig, SourceSpec},
    cli,
    dataplane::{maps::Maps, sync::PlanConfig},
    inspect,
    translate::{parse_algorithm, NodeFacts},
};

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/weir";

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir: an eBPF service load balancer for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: watch the source and program the datapath.
    Agent(Box<AgentArgs>),
    /// Inspect programmed services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Raw datapath maps.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
    /// Attached devices, map fill levels, and from the running agent: the last sync, the source and its health.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The agent's control socket.
        #[arg(long, default_value = weir::control::DEFAULT_SOCKET)]
        agent_socket: PathBuf,
    },
    /// The embedded ingress proxy (from the running agent).
    Ingress {
        #[command(subcommand)]
        command: IngressCommand,
    },
    /// Every routing rule of the proxy, Ingress and Gateway API, with the object that defined it.
    Routes {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long, default_value = weir::control::DEFAULT_SOCKET)]
        agent_socket: PathBuf,
    },
    /// Gateway API objects (from the running agent).
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Stream datapath events live: drops with their reason, and with --flows every new flow.
    Monitor {
        /// Also report every new flow and the backend it went to.
        #[arg(long)]
        flows: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Remove every link, program and map the agent pinned (stop the agent first).
    Uninstall {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Args)]
struct AgentArgs {
    /// Where Services and EndpointSlices come from: dir:PATH (Kubernetes YAML files) or kube (the Kubernetes API).
    #[arg(long)]
    source: SourceSpec,
    #[command(flatten)]
    kube: Box<weir::source::kube::KubeFlags>,
    #[command(flatten)]
    config: Box<weir::source::config::ConfigFlags>,
    /// Uplink devices to attach to (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Host-side pod devices to attach to (comma-separated globs); new matching links are attached as they appear.
    #[arg(long, value_delimiter = ',', default_value = "lxc*,cali*,veth*")]
    pod_devices: Vec<String>,
    /// This node's name (default: the host name); tells local endpoints from remote ones.
    #[arg(long)]
    hostname_override: Option<String>,
    /// Directory on bpffs where maps are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// How often to check the source and the devices, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Default endpoint selection: random, hash or maglev (per service: annotation weir.dev/lb-algorithm).
    #[arg(long, default_value = "random")]
    lb_algorithm: String,
    /// Maglev lookup table size M: a prime, more than 100 x the endpoints of the largest Maglev service.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAGLEV_M)]
    maglev_table_size: u32,
    /// How many services can use Maglev at once (each table takes 4 x M bytes); more fall back to hash.
    #[arg(long, default_value_t = weir::dataplane::sync::DEFAULT_MAGLEV_TABLES)]
    maglev_max_services: u32,
    /// Capacity of the services map (frontends); frontends beyond it are not programmed and reported.
    #[arg(long, default_value_t = lb_common::MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..=lb_common::MAX_CAPACITY as i64))]
    max_services: u32,
    /// Capacity of the backends map.
    #[arg(long, default_value_t = lb_common::MAX_BACKENDS, value_parser = clap::value_parser!(u32).range(1..=lb_common::MAX_CAPACITY as i64))]
    max_backends: u32,
    /// How long a TCP flow that saw FIN or RST stays in conntrack (Go duration).
    #[arg(long, default_value = "10s")]
    conntrack_tcp_close_timeout: weir::source::duration::GoDuration,
    /// How often expired conntrack entries are removed (Go duration).
    #[arg(long, default_value = "10s")]
    conntrack_gc_interval: weir::source::duration::GoDuration,
    /// Capacity of the slots map (backends summed over frontends).
    #[arg(long, default_value_t = lb_common::MAX_SLOTS)]
    max_slots: u32,
    /// NodePorts outside this range (the apiserver's --service-node-port-range) are reported and not served.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),
    /// XDP on the uplinks for external clients: auto (native, else generic), native, generic, or off.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Serve IPv6 frontends (the IPv6 families of single-stack IPv6 and dual-stack Services). Off, the IPv6 maps hold one entry each and IPv6 cluster IPs are reported and not served.
    #[arg(long)]
    ipv6: bool,
    /// Socket-level load balancing at connect()/sendmsg(): all sockets under --cgroup-root, only the host network namespace's (host-only), or off.
    #[arg(long, value_enum, default_value_t = SocketLbArg::All)]
    socket_lb: SocketLbArg,
    /// The cgroup v2 directory the socket programs attach to (default: the host's cgroup2 mount from /proc/mounts).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    #[command(flatten)]
    ingress: Box<IngressFlags>,
    /// The control socket `weir status` and `weir ingress routes` ask ("" turns it off).
    #[arg(long, default_value = weir::control::DEFAULT_SOCKET)]
    agent_socket: PathBuf,
    /// Print the kernel programs' log messages (drops with their reason, new flows); off by default, as they cost a little per packet.
    #[arg(long)]
    bpf_log: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
    Off,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SocketLbArg {
    All,
    HostOnly,
    Off,
}

/// "A-B" with 1 <= A <= B <= 65535.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port range like 30000-32767");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// The embedded L7 ingress proxy (off unless --ingress is given).
#[derive(Args)]
struct IngressFlags {
    /// Serve Ingresses of the IngressClass whose controller is weir.dev/ingress-controller: connections to the ingress addresses on the HTTP and HTTPS ports are handed to the embedded proxy.
    #[arg(long)]
    ingress: bool,
    /// The plain HTTP port taken over on the ingress addresses.
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// The HTTPS port taken over on the ingress addresses.
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// Ingress addresses besides the node's own (comma-separated, IPv4 or IPv6), e.g. LoadBalancer IPs routed to the nodes.
    #[arg(long, value_delimiter = ',')]
    ingress_addresses: Vec<std::net::IpAddr>,
    /// Gateway API: an IPv4 CIDR (at most /16) from which each Gateway without spec.addresses gets an address of its own; the pool must be routed to the nodes and local on them. Without it such Gateways listen on the node's ingress addresses.
    #[arg(long, value_parser = weir::ingress::parse_pool)]
    gateway_address_pool: Option<weir::ingress::AddressPool>,
    /// PEM certificate chain served to TLS clients whose server name no Ingress has a certificate for.
    #[arg(long, requires = "ingress_default_key")]
    ingress_default_cert: Option<PathBuf>,
    /// PEM private key of --ingress-default-cert.
    #[arg(long, requires = "ingress_default_cert")]
    ingress_default_key: Option<PathBuf>,
    /// The largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, default_value_t = 16 * 1024)]
    ingress_max_header_bytes: usize,
    /// How long a client may take to send a request's headers (Go duration).
    #[arg(long, default_value = "10s")]
    ingress_header_timeout: weir::source::duration::GoDuration,
    /// A client connection silent this long, with no request waiting for its upstream, is closed (Go duration).
    #[arg(long, default_value = "2m")]
    ingress_idle_timeout: weir::source::duration::GoDuration,
    /// How long an upstream may take to send its response headers; 504 after (Go duration).
    #[arg(long, default_value = "60s")]
    ingress_upstream_timeout: weir::source::duration::GoDuration,
    /// Worker threads of the proxy.
    #[arg(long, default_value_t = 2)]
    ingress_threads: usize,
}

impl IngressFlags {
    fn config(&self) -> Result<Option<weir::ingress::IngressConfig>> {
        if !self.ingress {
            return Ok(None);
        }
        let default_cert = match (&self.ingress_default_cert, &self.ingress_default_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                Some(
                    weir::routes::tls::certified_key(&read(cert)?, &read(key)?)
                        .with_context(|| format!("--ingress-default-cert {}", cert.display()))?,
                )
            }
            _ => None,
        };
        let positive = |d: Duration, default: Duration| if d.is_zero() { default } else { d };
        let defaults = weir::proxy::Timeouts::default();
        Ok(Some(weir::ingress::IngressConfig {
            proxy: weir::proxy::ProxyConfig {
                default_cert,
                max_header_bytes: self.ingress_max_header_bytes,
                timeouts: weir::proxy::Timeouts {
                    header: positive(self.ingress_header_timeout.0, defaults.header),
                    idle: positive(self.ingress_idle_timeout.0, defaults.idle),
                    upstream: positive(self.ingress_upstream_timeout.0, defaults.upstream),
                    connect: defaults.connect,
                },
                ..Default::default()
            },
            http_port: self.ingress_http_port,
            https_port: self.ingress_https_port,
            extra_addresses: self.ingress_addresses.clone(),
            gateway_pool: self
                .gateway_address_pool
                .as_ref()
                .map(|p| p.addresses())
                .unwrap_or_default(),
            threads: self.ingress_threads,
        }))
    }
}

#[derive(Subcommand)]
enum IngressCommand {
    /// The proxy's routing table: host, path, backend, ready endpoints, TLS Secret.
    Routes {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The agent must be the one serving these pins.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The agent's control socket.
        #[arg(long, default_value = weir::control::DEFAULT_SOCKET)]
        agent_socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// The status Weir computes for its GatewayClasses, Gateways and routes: conditions with their reasons, addresses, attached routes.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long, default_value = weir::control::DEFAULT_SOCKET)]
        agent_socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// List every frontend with its backends.
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Subcommand)]
enum BpfCommand {
    /// The load-balancing maps: frontends, backends, reverse NAT (all without a selection flag).
    Lb {
        #[command(subcommand)]
        command: LbCommand,
    },
    /// The conntrack map.
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
}

#[derive(Subcommand)]
enum LbCommand {
    List {
        #[arg(long)]
        frontends: bool,
        #[arg(long)]
        backends: bool,
        #[arg(long)]
        revnat: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtCommand {
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML, or `table()` for the table form.
fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<()> {
    match output {
        Output::Table => print!("{}", table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

fn open_maps(bpffs: &std::path::Path) -> Result<Maps> {
    Maps::open_pinned(bpffs).with_context(|| {
        format!(
            "opening the maps pinned under {} (is the agent running?)",
            bpffs.display()
        )
    })
}

/// The status of the agent on `socket`, which must serve the pins under `bpffs`.
fn agent_for(
    socket: &std::path::Path,
    bpffs: &std::path::Path,
) -> Result<weir::control::AgentStatus> {
    let agent = weir::control::status(socket)?;
    let same = |a: &std::path::Path, b: &std::path::Path| {
        a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    };
    anyhow::ensure!(
        same(std::path::Path::new(&agent.bpffs), bpffs),
        "the agent on {} (pid {}) serves {}, not {} (pass its --agent-socket)",
        socket.display(),
        agent.pid,
        agent.bpffs,
        bpffs.display()
    );
    Ok(agent)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Agent(args) => run_agent(*args),
        Command::Uninstall { bpffs } => {
            let removed = weir::dataplane::uninstall(&bpffs)
                .with_context(|| format!("removing the pins under {}", bpffs.display()))?;
            println!("removed {} pins under {}", removed.len(), bpffs.display());
            Ok(())
        }
        Command::Service {
            command: ServiceCommand::List { output, bpffs },
        } => {
            let rows = cli::service_rows(&open_maps(&bpffs)?.read());
            print(output, &rows, || cli::service_table(&rows))
        }
        Command::Bpf {
            command:
                BpfCommand::Lb {
                    command:
                        LbCommand::List {
                            frontends,
                            backends,
                            revnat,
                            output,
                            bpffs,
                        },
                },
        } => {
            let tables = inspect::lb_tables(&open_maps(&bpffs)?);
            let all = !(frontends || backends || revnat);
            print(output, &tables, || {
                inspect::lb_table(&tables, all || frontends, all || backends, all || revnat)
            })
        }
        Command::Bpf {
            command:
                BpfCommand::Ct {
                    command: CtCommand::List { output, bpffs },
                },
        } => {
            let rows = inspect::ct_rows(&open_maps(&bpffs)?);
            print(output, &rows, || inspect::ct_table(&rows))
        }
        Command::Monitor {
            flows,
            count,
            timeout_secs,
            output,
            bpffs,
        } => monitor(
            &bpffs,
            flows,
            count,
            timeout_secs.map(Duration::from_secs),
            output,
        ),
        Command::Status {
            output,
            bpffs,
            agent_socket,
        } => {
            let mut status = inspect::status(&bpffs, &open_maps(&bpffs)?);
            match agent_for(&agent_socket, &bpffs) {
                Ok(agent) => status.agent = Some(agent),
                Err(e) => status.agent_error = Some(format!("{e:#}")),
            }
            print(output, &status, || inspect::status_table(&status))
        }
        Command::Ingress {
            command:
                IngressCommand::Routes {
                    output,
                    bpffs,
                    agent_socket,
                },
        } => {
            agent_for(&agent_socket, &bpffs)?;
            let rows = weir::control::routes(&agent_socket)?;
            print(output, &rows, || cli::routes_table(&rows))
        }
        Command::Routes {
            output,
            bpffs,
            agent_socket,
        } => {
            agent_for(&agent_socket, &bpffs)?;
            let rows = weir::control::rules(&agent_socket)?;
            print(output, &rows, || cli::all_routes_table(&rows))
        }
        Command::Gateway {
            command:
                GatewayCommand::Status {
                    output,
                    bpffs,
                    agent_socket,
                },
        } => {
            agent_for(&agent_socket, &bpffs)?;
            let status = weir::control::gateway_status(&agent_socket)?;
            print(output, &status, || cli::gateway_status_table(&status))
        }
    }
}

/// Prints events until `count` or `timeout` (or Ctrl-C); turns flow tracing
/// on for the duration when asked, and off again at the end.
fn monitor(
    bpffs: &std::path::Path,
    flows: bool,
    count: Option<u64>,
    timeout: Option<Duration>,
    output: Output,
) -> Result<()> {
    let mut monitor = weir::dataplane::monitor::Monitor::open(bpffs).with_context(|| {
        format!(
            "opening the event ring under {} (is the agent running?)",
            bpffs.display()
        )
    })?;
    if flows {
        monitor.trace_flows(true)?;
    }
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::signal(signal, SigHandler::Handler(on_signal)) }?;
    }
    eprintln!(
        "monitoring {}{}",
        bpffs.display(),
        if flows {
            " (drops and new flows)"
        } else {
            " (drops)"
        }
    );
    let started = std::time::Instant::now();
    let mut seen = 0u64;
    let result = (|| -> Result<()> {
        while !STOP.load(std::sync::atomic::Ordering::Relaxed)
            && count.is_none_or(|c| seen < c)
            && timeout.is_none_or(|t| started.elapsed() < t)
        {
            let Some(event) = monitor.next_event() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            seen += 1;
            let row = inspect::event_row(&event);
            match output {
                Output::Table => println!("{}", inspect::event_line(&row)),
                Output::Json => println!("{}", serde_json::to_string(&row)?),
                Output::Yaml => print!("---\n{}", serde_yaml::to_string(&row)?),
            }
            use std::io::Write as _;
            std::io::stdout().flush()?;
        }
        Ok(())
    })();
    if flows {
        monitor.trace_flows(false)?;
    }
    result
}

/// The conntrack map's size as kube-proxy sizes nf_conntrack:
/// max(maxPerCore x CPUs, min), 0 meaning the built-in default.
fn conntrack_size(c: &weir::source::config::Conntrack) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let size = (c.max_per_core as u64 * cpus).max(c.min as u64);
    if size == 0 {
        lb_common::MAX_CT
    } else {
        size.min(u32::MAX as u64) as u32
    }
}

/// Set by SIGINT/SIGTERM so that `weir monitor` clears its flag before exiting.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn run_agent(args: AgentArgs) -> Result<()> {
    let default_algorithm = parse_algorithm(&args.lb_algorithm).with_context(|| {
        format!(
            "--lb-algorithm: unknown algorithm {:?} (random, hash or maglev)",
            args.lb_algorithm
        )
    })?;
    let proxy = args.config.resolve()?;
    if !proxy.unknown_fields.is_empty() {
        tracing::warn!(
            "--config: fields Weir does not use (unknown or not implemented): {}",
            proxy.unknown_fields.join(", ")
        );
    }
    let node_name = match args
        .hostname_override
        .or(proxy.config.hostname_override.clone())
    {
        Some(name) => name,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let healthz_bind = proxy.config.healthz_bind_address;
    let metrics_bind = proxy.config.metrics_bind_address;
    let nodeport_selection = proxy.config.node_port_addresses.clone();
    let mut source = args.source;
    if let SourceSpec::Kube(options) = &mut source {
        proxy.config.apply_to(options);
        args.kube.apply(options);
    }
    let defaults = weir::dataplane::ct_gc::CtTimeouts::default();
    let or_default = |d: Duration, default: Duration| if d.is_zero() { default } else { d };
    let ct = &proxy.config.conntrack;
    let ct_timeouts = weir::dataplane::ct_gc::CtTimeouts {
        tcp_established: or_default(ct.tcp_established_timeout, defaults.tcp_established),
        tcp_closing: or_default(args.conntrack_tcp_close_timeout.0, defaults.tcp_closing),
        udp: or_default(ct.udp_timeout, defaults.udp),
    };
    let ingress = args.ingress.config()?;
    let cfg = AgentConfig {
        ingress,
        control_socket: (!args.agent_socket.as_os_str().is_empty()).then_some(args.agent_socket),
        bpf_log: args.bpf_log,
        ct_timeouts,
        ct_gc_interval: args.conntrack_gc_interval.0.max(Duration::from_millis(10)),
        healthz_bind,
        metrics_bind,
        source,
        devices: args.devices,
        pod_devices: args.pod_devices,
        node: NodeFacts {
            node_name,
            default_algorithm,
            nodeport_addresses: Vec::new(),
            nodeport_selection,
            local: Default::default(),
            nodeport_range: args.service_node_port_range,
            ipv6: args.ipv6,
        },
        socket_lb: match args.socket_lb {
            SocketLbArg::All => weir::dataplane::socket_lb::SocketLbMode::All,
            SocketLbArg::HostOnly => weir::dataplane::socket_lb::SocketLbMode::HostOnly,
            SocketLbArg::Off => weir::dataplane::socket_lb::SocketLbMode::Off,
        },
        cgroup_root: args.cgroup_root,
        xdp_mode: match args.xdp_mode {
            XdpModeArg::Auto => weir::dataplane::xdp::XdpPolicy::Auto,
            XdpModeArg::Native => weir::dataplane::xdp::XdpPolicy::Native,
            XdpModeArg::Generic => weir::dataplane::xdp::XdpPolicy::Generic,
            XdpModeArg::Off => weir::dataplane::xdp::XdpPolicy::Off,
        },
        bpffs: args.bpffs,
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        plan: PlanConfig {
            maglev_m: args.maglev_table_size,
            maglev_tables: args.maglev_max_services,
            max_services: args.max_services,
            max_backends: args.max_backends,
            max_slots: args.max_slots.max(1),
            max_conntrack: conntrack_size(&proxy.config.conntrack),
            ipv6: args.ipv6,
        },
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agent::run(cfg))
}
