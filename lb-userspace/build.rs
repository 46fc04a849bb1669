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
    if let Err(missing) = toolchain_ready() {
        // One line, no backtrace: cargo shows this under the build script's stderr.
        eprintln!(
            "error: {missing}: run `cargo xtask setup` first (it installs the eBPF toolchain)"
        );
        std::process::exit(1);
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

/// What building the kernel crate needs and `cargo xtask setup` installs:
/// the nightly toolchain with rust-src (for -Z build-std) and bpf-linker.
fn toolchain_ready() -> Result<(), String> {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .ok_or("the nightly Rust toolchain is missing")?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err("rust-src is not installed for nightly".into());
    }
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !on_path {
        return Err("bpf-linker is not installed (not found on PATH)".into());
    }
    Ok(())
}
