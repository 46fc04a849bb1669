//! weir-bench: `cargo xtask bench` runs this (release build, as root).
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use weir_bench::{kubeproxy, run, workload::Workload, Mode};

#[derive(Parser)]
#[command(
    name = "weir-bench",
    about = "Weir against kube-proxy's iptables and nftables modes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// quick (a few minutes) or full (the published table).
    #[arg(long, value_enum, default_value = "quick")]
    mode: Mode,
    /// Where RESULTS.md and the plots go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// Sections to run (1 per-packet, 2 end to end, 3 control plane, 4 L7).
    #[arg(long, value_delimiter = ',', default_values_t = run::ALL_SECTIONS)]
    sections: Vec<u8>,
}

#[derive(Clone, Copy, ValueEnum)]
enum RuleMode {
    Iptables,
    Nftables,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the kube-proxy rules the benchmark loads for a generated cluster.
    Rules {
        #[arg(value_enum)]
        mode: RuleMode,
        #[arg(long, default_value_t = 2)]
        services: usize,
        #[arg(long, default_value_t = 2)]
        endpoints: usize,
    },
    /// Times Weir's `translate` on a generated cluster (median of `runs`).
    Translate {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Translate {
        services,
        endpoints,
        runs,
    }) = cli.command
    {
        let state = Workload::new(services, endpoints).state();
        let facts = weir_bench::workload::node_facts();
        let mut ms: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                let t = std::time::Instant::now();
                let desired = weir::translate::translate(&state, &facts);
                std::hint::black_box(desired);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!(
            "translate: {services} services x {endpoints} endpoints: median {:.1} ms over {} runs",
            weir_bench::stats::quantile(&mut ms, 0.5),
            ms.len()
        );
        return Ok(());
    }
    if let Some(Command::Rules {
        mode,
        services,
        endpoints,
    }) = cli.command
    {
        let state = Workload::new(services, endpoints).state();
        let cfg = weir_bench::workload::proxy_config();
        print!(
            "{}",
            match mode {
                RuleMode::Iptables => kubeproxy::iptables::rules(&state, &cfg),
                RuleMode::Nftables => kubeproxy::nftables::rules(&state, &cfg),
            }
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("weir-bench needs root (eBPF, network namespaces)");
    }
    let report = run::run(cli.mode, &cli.sections, &cli.out)?;
    println!(
        "bench: wrote {} ({} sections) in {:.0} s",
        cli.out.join("RESULTS.md").display(),
        report.sections.len(),
        report.duration_s
    );
    Ok(())
}
