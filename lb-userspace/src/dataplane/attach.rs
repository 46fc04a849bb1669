//! Attaching the tc program to uplinks (`--devices`) and host-side pod
//! devices (`--pod-devices` globs). Pods come and go, so the agent lists the
//! links (a netlink RTM_GETLINK dump through if_nameindex) on every tick and
//! reconciles: new matching devices are attached, vanished ones forgotten.
use std::collections::BTreeMap;

use aya::programs::{tc::SchedClassifierLinkId, TcAttachType};

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

#[derive(Default)]
pub struct Attachments {
    links: BTreeMap<String, (u32, SchedClassifierLinkId)>,
}

impl Attachments {
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }
}

/// What a reconcile did, for logging.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub failed: Vec<(String, String)>,
}

impl Dataplane {
    /// Attaches to every wanted device not yet attached and forgets the rest.
    pub fn reconcile_devices(&mut self, wanted: &[(String, u32)]) -> AttachReport {
        let mut report = AttachReport::default();
        let prog = super::loader::tc_program(&mut self.ebpf);
        let mut links = std::mem::take(&mut self.attachments.links);
        let gone: Vec<String> = links
            .iter()
            .filter(|(name, (ifindex, _))| !wanted.iter().any(|(n, i)| n == *name && i == ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some((_, link)) = links.remove(&name) {
                // The device is gone (and its link with it) or was renamed.
                let _ = prog.detach(link);
            }
            report.detached.push(name);
        }
        for (name, ifindex) in wanted {
            if links.contains_key(name) {
                continue;
            }
            match prog.attach(name, TcAttachType::Ingress) {
                Ok(link) => {
                    links.insert(name.clone(), (*ifindex, link));
                    report.attached.push(name.clone());
                }
                Err(e) => report.failed.push((name.clone(), e.to_string())),
            }
        }
        self.attachments.links = links;
        report
    }
}
