//! XDP on the uplinks (`--devices`): native mode where the driver has it,
//! generic (skb) mode otherwise, as `--xdp-mode` allows. Links are pinned
//! under bpffs as `xdp_<mode>_<device>_<ifindex>` so they outlive the agent
//! and `weir status` can tell the mode; a new agent swaps its program into
//! them (bpf_link_update). The node's address on each uplink goes into
//! NODE_ADDRS_V1: the source address of SNATed flows.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use super::Dataplane;

/// Which XDP modes the agent may use (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpPolicy {
    /// Native, falling back to generic.
    #[default]
    Auto,
    Native,
    Generic,
    Off,
}

impl XdpPolicy {
    fn modes(self) -> &'static [XdpMode] {
        match self {
            XdpPolicy::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpPolicy::Native => &[XdpMode::Driver],
            XdpPolicy::Generic => &[XdpMode::Skb],
            XdpPolicy::Off => &[],
        }
    }
}

/// The name `weir status` shows for a mode.
pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}

/// The pin file name of an XDP link, and its inverse (mode, device).
pub fn pin_name(mode: &str, device: &str, ifindex: u32) -> String {
    format!("xdp_{mode}_{device}_{ifindex}")
}

pub fn parse_pin_name(name: &str) -> Option<(&str, &str)> {
    let (mode, rest) = name.strip_prefix("xdp_")?.split_once('_')?;
    let (device, _ifindex) = rest.rsplit_once('_')?;
    Some((mode, device))
}

/// An XDP attachment the agent holds.
pub struct XdpAttachment {
    pub ifindex: u32,
    pub mode: &'static str,
    _link: XdpLink,
}

#[derive(Default)]
pub struct XdpAttachments {
    pub policy: XdpPolicy,
    pub links: BTreeMap<String, XdpAttachment>,
}

/// What an XDP reconcile did, for logging.
#[derive(Debug, Default)]
pub struct XdpReport {
    /// (device, mode, how): how is "attached" or "took over the pinned link".
    pub attached: Vec<(String, &'static str, &'static str)>,
    /// Devices where native XDP failed and generic was used: (device, native error).
    pub fell_back: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
    pub detached: Vec<String>,
}

fn attach(
    prog: &mut Xdp,
    device: &str,
    ifindex: u32,
    mode: XdpMode,
    dir: Option<&Path>,
) -> Result<XdpLink, String> {
    let id = prog.attach(device, mode).map_err(|e| e.to_string())?;
    let link = prog.take_link(id).map_err(|e| e.to_string())?;
    let Some(dir) = dir else { return Ok(link) };
    let fd_link = FdLink::try_from(link).map_err(|e| e.to_string())?;
    let path = dir.join(pin_name(mode_name(mode), device, ifindex));
    let pinned = fd_link
        .pin(&path)
        .map_err(|e| format!("pinning the link at {}: {e}", path.display()))?;
    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
}

fn adopt(prog: &mut Xdp, path: &Path) -> Result<XdpLink, String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    prog.take_link(id).map_err(|e| e.to_string())
}

/// The pinned XDP link of (device, ifindex) an earlier agent left, with its mode.
fn existing_pin(dir: &Path, device: &str, ifindex: u32) -> Option<(PathBuf, &'static str)> {
    ["native", "generic"].into_iter().find_map(|mode| {
        let path = dir.join(pin_name(mode, device, ifindex));
        path.exists().then_some((path, mode))
    })
}

/// The first IPv4 address of each device, by name.
pub fn device_addrs() -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.entry(ifa.interface_name.clone()).or_insert(sin.ip());
        }
    }
    out
}

impl Dataplane {
    /// Attaches XDP to every wanted uplink (name, ifindex) not yet attached,
    /// adopting pinned links, detaches the rest, and refreshes NODE_ADDRS_V1.
    pub fn reconcile_xdp(&mut self, wanted: &[(String, u32)]) -> XdpReport {
        let mut report = XdpReport::default();
        let dir = self.attachments.pin_dir().map(Path::to_path_buf);
        let policy = self.xdp.policy;
        let wanted: Vec<&(String, u32)> = if policy == XdpPolicy::Off {
            Vec::new()
        } else {
            wanted.iter().collect()
        };
        let gone: Vec<String> = self
            .xdp
            .links
            .iter()
            .filter(|(name, a)| !wanted.iter().any(|(n, i)| n == *name && *i == a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(a) = self.xdp.links.remove(&name) {
                if let Some(dir) = &dir {
                    let _ = std::fs::remove_file(dir.join(pin_name(a.mode, &name, a.ifindex)));
                }
                let _ = self.maps.node_addrs.remove(&a.ifindex);
            }
            report.detached.push(name);
        }
        let prog = super::loader::xdp_program(&mut self.ebpf);
        for (name, ifindex) in wanted {
            if self.xdp.links.contains_key(name) {
                continue;
            }
            let pinned = dir.as_deref().and_then(|d| existing_pin(d, name, *ifindex));
            let mut result = Err(String::from("no XDP mode allowed"));
            if let Some((path, mode)) = pinned {
                result = adopt(prog, &path).map(|link| (link, mode, "took over the pinned link"));
                if result.is_err() {
                    // A pin we cannot use: replace it.
                    let _ = std::fs::remove_file(&path);
                }
            }
            let mut native_error = None;
            for mode in policy.modes() {
                if result.is_ok() {
                    break;
                }
                result = attach(prog, name, *ifindex, *mode, dir.as_deref())
                    .map(|link| (link, mode_name(*mode), "attached"));
                if let (Err(e), XdpMode::Driver) = (&result, mode) {
                    native_error = Some(e.clone());
                }
            }
            match result {
                Ok((link, mode, how)) => {
                    if let (Some(e), "generic") = (native_error, mode) {
                        report.fell_back.push((name.clone(), e));
                    }
                    report.attached.push((name.clone(), mode, how));
                    self.xdp.links.insert(
                        name.clone(),
                        XdpAttachment {
                            ifindex: *ifindex,
                            mode,
                            _link: link,
                        },
                    );
                }
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        let addrs = device_addrs();
        for (name, a) in &self.xdp.links {
            if let Some(addr) = addrs.get(name) {
                if self.maps.node_addrs.get(&a.ifindex, 0).ok() != Some(addr.octets()) {
                    let _ = self.maps.node_addrs.insert(a.ifindex, addr.octets(), 0);
                }
            }
        }
        report
    }
}

/// The XDP_PASS program attached to the far side of a veth uplink, which a
/// veth needs to deliver frames the uplink's program sends with XDP_TX or
/// redirects (see lb-ebpf's weir_xdp_pass). Dropping it detaches it.
pub struct PeerPass {
    _ebpf: aya::Ebpf,
}

/// Attaches weir_xdp_pass natively to `device` in the calling thread's
/// network namespace. Its object's maps are created at one entry each: the
/// program uses none of them.
pub fn attach_peer_pass(device: &str) -> Result<PeerPass, super::LoadError> {
    let mut loader = aya::EbpfLoader::new();
    for name in lb_common::ALL_MAPS {
        if name != lb_common::MAP_MONITOR && name != lb_common::MAP_STATS {
            loader.map_max_entries(name, 1);
        }
    }
    let mut ebpf = loader.load(crate::EBPF_OBJECT)?;
    let name = lb_common::PROG_XDP_PASS;
    let program_error = |source| super::LoadError::Program { name, source };
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(program_error(aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(program_error)?;
    prog.load().map_err(program_error)?;
    prog.attach(device, XdpMode::Driver)
        .map_err(program_error)?;
    Ok(PeerPass { _ebpf: ebpf })
}
