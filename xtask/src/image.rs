//! `cargo xtask image`: the agent's OCI image, built on this machine. No
//! registry image can be pulled here, so the base is made from Debian's
//! packages: a minbase debootstrap of the release these machines run, from
//! the mirror its apt sources name, imported into podman once and cached
//! (~/.cache/weir). The agent binary goes on top. manifests/Dockerfile stays
//! for users who build elsewhere.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{output, root, status, succeeds};

/// The base image's name in podman's store.
const BASE: &str = "localhost/weir-base:bookworm";
/// The Debian release of the base: the one these machines run (the agent
/// binary is built here, against its glibc).
const SUITE: &str = "bookworm";
/// The label of the images this builds, so that pruning touches only them.
const LABEL: &str = "dev.weir.image=agent";
/// The tag the image test runs (tests/tests/image.rs), built from the debug agent.
pub const TEST_TAG: &str = "localhost/weir:test";

fn cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/weir")
}

/// The Debian mirror this machine's apt uses (deb822 `URIs:` or a
/// sources.list `deb` line).
fn mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(s);
    }
    for e in std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "sources" || x == "list") {
            texts.push(std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    if let Some(url) = mirror_in(&texts) {
        return Ok(url);
    }
    bail!("no Debian mirror in /etc/apt/sources.list{{,.d}}: the image's base is built from it")
}

/// The first non-security Debian mirror in apt source texts.
fn mirror_in(texts: &[String]) -> Option<String> {
    for text in texts {
        for line in text.lines().map(str::trim) {
            // deb822 `URIs: URL`, or `deb [options] URL suite ...`.
            let url = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                let rest = line.strip_prefix("deb ")?.trim_start();
                let rest = match rest.strip_prefix('[') {
                    Some(r) => r.split_once(']')?.1,
                    None => rest,
                };
                rest.split_whitespace().next()
            });
            if let Some(url) = url.filter(|u| u.starts_with("http") && !u.contains("security")) {
                return Some(url.split_whitespace().next().unwrap_or(url).to_string());
            }
        }
    }
    None
}

/// Imports the base image into podman, making its rootfs tarball first if
/// it is not cached.
fn base() -> Result<()> {
    if succeeds("podman", &["image", "exists", BASE]) {
        return Ok(());
    }
    let tar = cache().join(format!("{SUITE}-minbase.tar"));
    if !tar.exists() {
        let dir = cache().join(format!("{SUITE}-rootfs"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(cache())?;
        let mirror = mirror()?;
        eprintln!("image: debootstrap --variant=minbase {SUITE} (about 20 s)");
        let dir_s = dir.to_string_lossy().into_owned();
        status(
            "debootstrap",
            &["--variant=minbase", SUITE, &dir_s, &mirror],
        )
        .context("debootstrap of the image's base")?;
        let partial = tar.with_extension("tar.partial");
        let partial_s = partial.to_string_lossy().into_owned();
        status("tar", &["-C", &dir_s, "-cf", &partial_s, "."])?;
        std::fs::rename(&partial, &tar)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    status("podman", &["import", &tar.to_string_lossy(), BASE]).context("podman import")
}

/// Builds image `tag` with the agent binary `binary` on the base.
pub fn build(binary: &Path, tag: &str) -> Result<()> {
    if !binary.exists() {
        bail!("{} does not exist: build the agent first", binary.display());
    }
    base()?;
    let ctx = root().join("target/image");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    // Without debug info: the debug build carries some 200 MB of it.
    let bin_s = binary.to_string_lossy().into_owned();
    let dest = ctx.join("weir").to_string_lossy().into_owned();
    if status("strip", &["--strip-debug", "-o", &dest, &bin_s]).is_err() {
        std::fs::copy(binary, ctx.join("weir")).context("copying the agent binary")?;
    }
    std::fs::write(
        ctx.join("Containerfile"),
        format!(
            "FROM {BASE}\nLABEL {LABEL}\nCOPY weir /usr/local/bin/weir\nENTRYPOINT [\"/usr/local/bin/weir\"]\n"
        ),
    )?;
    let ctx_s = ctx.to_string_lossy().into_owned();
    status(
        "podman",
        &["build", "--quiet", "--network", "none", "-t", tag, &ctx_s],
    )
    .context("podman build")?;
    // The image this tag had before is left untagged: remove such leftovers
    // of ours (and nothing else on the machine).
    let _ = output(
        "podman",
        &[
            "image",
            "prune",
            "--force",
            "--filter",
            &format!("label={LABEL}"),
        ],
    );
    let size = output(
        "podman",
        &["image", "inspect", "--format", "{{.Size}}", tag],
    )
    .unwrap_or_default();
    eprintln!(
        "image: built {tag} ({} MB)",
        size.trim().parse::<u64>().unwrap_or(0) / 1_000_000
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n";
        let security = "deb http://mirror.example/debian-security bookworm-security main\n";
        let options =
            "deb [signed-by=/k.gpg arch=amd64] http://other.example/debian bookworm main\n";
        let got =
            |texts: &[&str]| mirror_in(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        assert_eq!(
            got(&[deb822]).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            got(&[security, options]).as_deref(),
            Some("http://other.example/debian")
        );
        assert_eq!(got(&[security]), None);
    }
}
