//! Weir's agent and CLI as a library, so that tests drive the same code.
//!
//! Data flows one way: `source` -> `model` -> `translate` -> `dataplane`.
//! Only `dataplane` writes maps; only `source` reads files.
pub mod agent;
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod frontend;
pub mod health;
pub mod ingress;
pub mod inspect;
pub mod maglev;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod node_addrs;
pub mod proxy;
pub mod routes;
pub mod source;
pub mod translate;
pub mod translation;

/// The compiled kernel programs (lb-ebpf), built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));
