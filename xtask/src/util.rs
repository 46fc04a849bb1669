//! Process helpers for xtask.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command to completion, failing if it fails.
pub fn status(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Whether a command succeeds (output discarded).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A command's stdout, if it succeeds.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    status(env!("CARGO"), args)
}

/// Runs `program args` with inherited stdio and returns its exit status as ours.
pub fn exec(program: &Path, args: &[String]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {}", program.display()))?;
    if !status.success() {
        bail!("{} exited with {status}", program.display());
    }
    Ok(())
}

/// Removes namespaces and pins left by tests that were killed before their cleanup ran.
pub fn clean_leftovers() {
    if let Some(list) = output("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_test_netns(name) {
                let _ = status("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("weir-test-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Test namespaces are named "wr<pid>x<n>-<role>" (weir_tests::netns::unique_tag).
fn is_test_netns(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(weir_tests::netns::PREFIX) else {
        return false;
    };
    let Some((tag, _role)) = rest.split_once('-') else {
        return false;
    };
    let Some((pid, n)) = tag.split_once('x') else {
        return false;
    };
    !pid.is_empty() && !n.is_empty() && pid.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit())
}
