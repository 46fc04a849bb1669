//! `cargo xtask`: setup, build, run, demo, test and bench for Weir.
mod bench;
mod image;
mod setup;
#[path = "../../tests/src/tag.rs"]
mod tag;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::util::{cargo, root};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; every other command runs it first).
    Setup {
        /// Also what `bench` needs (nginx, never left serving in the root namespace).
        #[arg(long)]
        bench: bool,
    },
    /// Build the agent (release), with the kernel programs inside.
    Build,
    /// Build and run `weir ARGS` (release), e.g. `cargo xtask run -- agent --source dir:manifests/demo`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the agent's OCI image (release) on a Debian base made here: weir:0.1.0 in podman.
    Image,
    /// Sandbox demo: three backends, the agent on manifests/demo, TCP and UDP traffic to the ClusterIP.
    Demo,
    /// Run every test: unit, packet (BPF_PROG_TEST_RUN) and end-to-end (network namespaces).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks against kube-proxy's iptables and nftables modes: writes
    /// bench/RESULTS.md and plots. Not part of `test`.
    Bench {
        /// A few minutes (the default).
        #[arg(long, conflicts_with = "full")]
        quick: bool,
        /// The published table: larger counts, longer runs.
        #[arg(long)]
        full: bool,
        /// Only these sections, e.g. `1,3` (1 per packet, 2 end to end, 3 control plane, 4 L7, 5 Gateway API, 6 TLS-terminated TCP); written to target/bench-sections/, not bench/.
        #[arg(long)]
        sections: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup { bench } => {
            setup::run()?;
            if bench {
                setup::bench_packages()?;
            }
            Ok(())
        }
        Command::Build => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "lb-userspace"])
        }
        Command::Run { args } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "lb-userspace"])?;
            util::exec(&root().join("target/release/weir"), &args)
        }
        Command::Image => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "lb-userspace"])?;
            image::build(&root().join("target/release/weir"), "localhost/weir:0.1.0")
        }
        Command::Demo => {
            setup::run()?;
            cargo(&["build", "-p", "lb-userspace"])?;
            cargo(&["run", "--quiet", "-p", "weir-tests", "--bin", "weir-demo"])
        }
        Command::Test { args } => {
            setup::run()?;
            util::clean_leftovers();
            cargo(&["build", "-p", "lb-userspace"])?;
            // tests/image.rs runs the agent from this image.
            image::build(&root().join("target/debug/weir"), image::TEST_TAG)?;
            let mut test = vec!["test", "--workspace", "--exclude", "lb-ebpf"];
            test.extend(args.iter().map(String::as_str));
            util::cargo_test(&test)
        }
        Command::Bench {
            quick: _,
            full,
            sections,
        } => {
            setup::run()?;
            setup::bench_packages()?;
            util::clean_leftovers();
            bench::run(full, sections.as_deref())
        }
    }
}
