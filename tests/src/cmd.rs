//! Running helper commands (ip, nsenter) with errors that say what failed.
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `program args...`; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args...`
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Makes `dev` in namespace `ns` send full checksums. A veth otherwise hands
/// locally sent packets on with a partial checksum (CHECKSUM_PARTIAL) that
/// only a real NIC would complete; a frame XDP rewrites and sends with
/// XDP_TX loses that state and reaches the client with a wrong checksum. On
/// a wire every packet carries a full one, so test hosts do too.
pub fn full_checksums(ns: &str, dev: &str) -> Result<()> {
    run(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
    )
    .map(|_| ())
    .with_context(|| format!("turning off checksum offload on {dev} in {ns}"))
}
