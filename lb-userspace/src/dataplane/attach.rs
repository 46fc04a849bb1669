//! Attaching the tc program to uplinks (`--devices`) and host-side pod
//! devices (`--pod-devices` globs). Pods come and go, so the agent lists the
//! links (a netlink RTM_GETLINK dump through if_nameindex) on every tick and
//! reconciles: new matching devices are attached, vanished ones forgotten.
use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    SchedClassifier, TcAttachType,
};

use super::Dataplane;

/// Which devices to attach to.
#[derive(Clone, Debug, Default)]
pub struct DeviceSelector {
    pub devices: Vec<String>,
    pub pod_globs: Vec<glob::Pattern>,
}

impl DeviceSelector {
    pub fn new(devices: &[String], pod_globs: &[String]) -> Result<Self, glob::PatternError> {
        Ok(Self {
            devices: devices.to_vec(),
            pod_globs: pod_globs
                .iter()
                .map(|g| glob::Pattern::new(g))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.devices.iter().any(|d| d == name) || self.pod_globs.iter().any(|g| g.matches(name))
    }

    /// The uplinks (--devices) among `links`: where XDP goes.
    pub fn uplinks(&self, links: &[(String, u32)]) -> Vec<(String, u32)> {
        links
            .iter()
            .filter(|(name, _)| self.devices.iter().any(|d| d == name))
            .cloned()
            .collect()
    }

    /// The links (name, ifindex) this selector picks.
    pub fn select(&self, links: &[(String, u32)]) -> Vec<(String, u32)> {
        links
            .iter()
            .filter(|(name, _)| self.matches(name))
            .cloned()
            .collect()
    }
}

/// The links of the current network namespace.
pub fn list_links() -> std::io::Result<Vec<(String, u32)>> {
    let list = nix::net::if_::if_nameindex().map_err(std::io::Error::from)?;
    Ok(list
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// The tc links the agent holds, by device name. With a pin directory each
/// link is pinned there, so it outlives the agent: traffic keeps flowing
/// while the agent restarts, and a new agent swaps its program into the same
/// link atomically (bpf_link_update) instead of detaching and re-attaching.
#[derive(Default)]
pub struct Attachments {
    links: BTreeMap<String, (u32, SchedClassifierLink)>,
    pin_dir: Option<PathBuf>,
}

impl Attachments {
    pub fn pinned(dir: PathBuf) -> Self {
        Self {
            links: BTreeMap::new(),
            pin_dir: Some(dir),
        }
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    fn pin_path(&self, name: &str, ifindex: u32) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join(format!("tc_{name}_{ifindex}")))
    }
}

/// What a reconcile did, for logging.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<String>,
    /// Devices whose pinned link from an earlier agent now runs this agent's program.
    pub adopted: Vec<String>,
    pub detached: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Takes over a link pinned by an earlier agent, running `prog` in it.
fn adopt(prog: &mut SchedClassifier, path: &Path) -> Result<SchedClassifierLink, String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    prog.take_link(id).map_err(|e| e.to_string())
}

/// Attaches `prog` to `name` and pins the link at `pin` (when given).
fn attach(
    prog: &mut SchedClassifier,
    name: &str,
    pin: Option<&Path>,
) -> Result<SchedClassifierLink, String> {
    let id = prog
        .attach(name, TcAttachType::Ingress)
        .map_err(|e| e.to_string())?;
    let link = prog.take_link(id).map_err(|e| e.to_string())?;
    let Some(pin) = pin else { return Ok(link) };
    let fd_link = FdLink::try_from(link).map_err(|e| e.to_string())?;
    let pinned = fd_link
        .pin(pin)
        .map_err(|e| format!("pinning the link at {}: {e}", pin.display()))?;
    SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
}

impl Dataplane {
    /// Attaches to every wanted device not yet attached, adopting links an
    /// earlier agent pinned, and detaches (unpins) the rest.
    /// Uplinks among them (`uplinks`) get the uplink program.
    pub fn reconcile_devices(
        &mut self,
        wanted: &[(String, u32)],
        uplinks: &[(String, u32)],
    ) -> AttachReport {
        let mut report = AttachReport::default();
        let att = &mut self.attachments;
        let gone: Vec<String> = att
            .links
            .iter()
            .filter(|(name, (ifindex, _))| !wanted.iter().any(|(n, i)| n == *name && i == ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some((ifindex, link)) = att.links.remove(&name) {
                // The device is gone (and its link with it) or was renamed.
                if let Some(pin) = att.pin_path(&name, ifindex) {
                    let _ = std::fs::remove_file(pin);
                }
                drop(link);
            }
            report.detached.push(name);
        }
        for (name, ifindex) in wanted {
            if att.links.contains_key(name) {
                continue;
            }
            let pin = att.pin_path(name, *ifindex);
            let prog = if uplinks.iter().any(|(n, _)| n == name) {
                super::loader::tc_uplink_program(&mut self.ebpf)
            } else {
                super::loader::tc_program(&mut self.ebpf)
            };
            let result = match pin.as_deref().filter(|p| p.exists()) {
                Some(existing) => adopt(prog, existing)
                    .inspect(|_| report.adopted.push(name.clone()))
                    .or_else(|e| {
                        // A pin we cannot use (e.g. a link left by another kernel object): replace it.
                        let _ = std::fs::remove_file(existing);
                        attach(prog, name, pin.as_deref()).map_err(|e2| format!("{e}; then {e2}"))
                    }),
                None => attach(prog, name, pin.as_deref())
                    .inspect(|_| report.attached.push(name.clone())),
            };
            match result {
                Ok(link) => {
                    att.links.insert(name.clone(), (*ifindex, link));
                }
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        // Pins of devices that no longer exist or are no longer wanted.
        if let Some(dir) = &att.pin_dir {
            let keep: Vec<PathBuf> = att
                .links
                .iter()
                .filter_map(|(n, (i, _))| att.pin_path(n, *i))
                .collect();
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let tc_pin = entry.file_name().to_string_lossy().starts_with("tc_");
                if tc_pin && !keep.contains(&entry.path()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        report
    }
}
