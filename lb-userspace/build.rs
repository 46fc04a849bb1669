//! Builds the kernel programs (lb-ebpf) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker, and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. The nested cargo's output is shown only when it
//! fails, so ordinary builds stay quiet.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("workspace root")?;
    for dir in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "lb-ebpf",
        "--bins",
        "--release",
    ])
    .args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(root.join("lb-ebpf"))
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    );
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS_OUTER",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd
        .output()
        .context("running `rustup run nightly cargo build -p lb-ebpf` (run `cargo xtask setup`)")?;
    if !output.status.success() {
        bail!(
            "building lb-ebpf failed (is `cargo xtask setup` done?):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/lb-ebpf");
    fs::copy(&built, out_dir.join("lb-ebpf.o"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}
