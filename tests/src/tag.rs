//! Names of what the harness leaves in the system (namespaces "wr<pid>x<n>-<role>",
//! pins "weir-test-wr<pid>x<n>..."), and how to tell a leftover from a live one.
//!
//! xtask includes this file with `#[path]` rather than depending on this crate:
//! building this crate needs the eBPF toolchain, which `cargo xtask setup` installs.

/// Prefix of every namespace the harness creates; `cargo xtask test` removes leftovers.
pub const PREFIX: &str = "wr";

/// Whether `name` (a namespace, or a pin directory without "weir-test-") was made
/// by a harness process that is gone. A suite running in parallel, e.g. in another
/// worktree, keeps its own.
pub fn is_stale_tag(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let tag = rest.split_once('-').map_or(rest, |(tag, _role)| tag);
    let Some((pid, n)) = tag.split_once('x') else {
        return false;
    };
    let n = n.trim_end_matches(|c: char| !c.is_ascii_digit());
    !pid.is_empty()
        && !n.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !std::path::Path::new("/proc").join(pid).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tags_of_dead_processes_are_stale() {
        let me = std::process::id();
        assert!(!is_stale_tag(&format!("wr{me}x3-node")));
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(is_stale_tag("wr99999999x3-node"));
        assert!(is_stale_tag("wr99999999x12"));
        assert!(!is_stale_tag("wrx3-node"));
        assert!(!is_stale_tag("wr99999999-node"));
        assert!(!is_stale_tag("other99999999x3"));
    }
}
