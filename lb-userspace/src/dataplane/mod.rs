//! The only module that touches the kernel: loading and pinning the programs
//! and maps, attaching to devices, and writing planned map updates.
pub mod attach;
pub mod bpf_log;
pub mod ct_gc;
pub mod ct_gc_worker;
pub mod filter;
pub mod ingress;
pub mod loader;
pub mod maps;
pub mod monitor;
pub mod pins;
pub mod sock_destroy;
pub mod socket_lb;
pub mod sync;
pub mod sync_delta;
pub mod veth_peer;
pub mod xdp;

pub use loader::{Dataplane, LoadError};

/// Removes everything the agent pinned under `bpffs`: links first (which
/// detaches the programs from every device), then the maps. Returns what was
/// removed. The agent must not be running.
pub fn uninstall(bpffs: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut removed = Vec::new();
    let links = bpffs.join("links");
    if links.is_dir() {
        for entry in std::fs::read_dir(&links)? {
            let path = entry?.path();
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(&links)?;
    }
    if bpffs.is_dir() {
        for entry in std::fs::read_dir(bpffs)? {
            let path = entry?.path();
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(bpffs)?;
    }
    Ok(removed)
}
