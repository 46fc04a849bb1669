//! `cargo xtask bench [--quick|--full]`: builds the agent and the benchmark
//! (release) and runs them; the benchmark writes bench/RESULTS.md and its
//! plots. A run of some sections only (`--sections`) writes to
//! target/bench-sections/ instead, so that it never replaces the committed
//! results of a whole run. Not part of `cargo xtask test`.
use anyhow::{bail, Context, Result};

use crate::util::{cargo, root};

pub fn run(full: bool, sections: Option<&str>) -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "weir-bench",
    ])?;
    let target = root().join("target/release");
    let out = match sections {
        None => root().join("bench"),
        Some(_) => root().join("target/bench-sections"),
    };
    let mut args = vec![
        "--mode".to_string(),
        if full { "full" } else { "quick" }.to_string(),
        "--out".to_string(),
        out.display().to_string(),
    ];
    if let Some(s) = sections {
        args.extend(["--sections".to_string(), s.to_string()]);
    }
    // The harness starts the agent from $WEIR_BIN: measure the release build.
    let status = std::process::Command::new(target.join("weir-bench"))
        .args(&args)
        .env("WEIR_BIN", target.join("weir"))
        .status()
        .context("running weir-bench")?;
    if !status.success() {
        bail!("weir-bench failed ({status})");
    }
    if sections.is_some() {
        println!(
            "bench: results of the sections run in {} (bench/RESULTS.md is left as it was)",
            out.join("RESULTS.md").display()
        );
    }
    Ok(())
}
