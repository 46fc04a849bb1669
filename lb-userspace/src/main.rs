//! The `weir` binary: the agent and the inspection commands.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir::{
    agent::{self, AgentConfig, SourceSpec},
    cli,
    dataplane::maps::Maps,
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
    Agent(AgentArgs),
    /// Inspect programmed services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
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
    /// Default endpoint selection: random or hash (per service: annotation weir.dev/lb-algorithm).
    #[arg(long, default_value = "random")]
    lb_algorithm: String,
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

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
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
        Command::Agent(args) => run_agent(args),
        Command::Service {
            command: ServiceCommand::List { output, bpffs },
        } => {
            let maps = Maps::open_pinned(&bpffs).with_context(|| {
                format!(
                    "opening the maps pinned under {} (is the agent running?)",
                    bpffs.display()
                )
            })?;
            let rows = cli::service_rows(&maps.read());
            match output {
                Output::Table => print!("{}", cli::service_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
            Ok(())
        }
    }
}

fn run_agent(args: AgentArgs) -> Result<()> {
    let default_algorithm = parse_algorithm(&args.lb_algorithm).with_context(|| {
        format!(
            "--lb-algorithm: unknown algorithm {:?} (random or hash)",
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
    let mut source = args.source;
    if let SourceSpec::Kube(options) = &mut source {
        proxy.config.apply_to(options);
        args.kube.apply(options);
    }
    let cfg = AgentConfig {
        source,
        devices: args.devices,
        pod_devices: args.pod_devices,
        node: NodeFacts {
            node_name,
            default_algorithm,
        },
        bpffs: args.bpffs,
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agent::run(cfg))
}
