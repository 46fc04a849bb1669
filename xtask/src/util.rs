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

/// Runs `cargo test ...`, passing its output through, and ends with one
/// summary line over every test binary ("N passed, N failed").
pub fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, " passed");
                failed += count(rest, " failed");
                ignored += count(rest, " ignored");
            }
        }
    }
    let status = child.wait()?;
    println!("\nweir tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The number before `what` in a "test result:" line ("ok. 7 passed; 0 failed; ...").
fn count(line: &str, what: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
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
            if crate::tag::is_stale_tag(name) {
                let _ = status("ip", &["netns", "del", name]);
            }
        }
    }
    // Containers of the image test (tests/image.rs), named weir-test-<tag>.
    if let Some(names) = output("podman", &["ps", "-a", "--format", "{{.Names}}"]) {
        for name in names.lines() {
            if name
                .strip_prefix("weir-test-")
                .is_some_and(crate::tag::is_stale_tag)
            {
                let _ = status("podman", &["rm", "--force", name]);
            }
        }
    }
    // Test cgroups (weir_tests::cgroup), below the cgroup2 mount.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for dir in mounts.lines().filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    }) {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix("weir-test-")
                .is_some_and(crate::tag::is_stale_tag)
            {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix("weir-test-")
                .is_some_and(crate::tag::is_stale_tag)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
