//! `cargo xtask bench`: Weir measured side by side with kube-proxy's
//! iptables and nftables modes, in one run, on one machine. Writes
//! bench/RESULTS.md and a PNG plot per section.
//!
//! Network safety: everything runs in network namespaces this crate (through
//! weir-tests' harness) creates and deletes, with addresses from
//! 198.18.0.0/15; iptables and nftables rules are loaded only inside those
//! namespaces; every loop is bounded in count and time.
pub mod control;
pub mod e2e;
pub mod gateway_l7;
pub mod kubeproxy;
pub mod l7;
pub mod machine;
pub mod perpacket;
pub mod plot;
pub mod raw_bpf;
pub mod report;
pub mod run;
pub mod stats;
pub mod tls_stream;
pub mod workload;

/// How long and how large: `--quick` finishes in a few minutes, `--full`
/// makes the published table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Quick,
    Full,
}
