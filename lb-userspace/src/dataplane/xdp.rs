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

use super::{veth_peer::PeerDelivery, Dataplane};

/// Which XDP modes the agent may use (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpPolicy {
    /// Native where frames it sends are delivered, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
    Off,
}

/// The modes to try on one uplink, in order, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeChoice {
    pub modes: &'static [XdpMode],
    pub reason: String,
    /// Said once when the choice may lose traffic (native forced on a veth
    /// whose peer may drop what it is sent).
    pub warning: Option<String>,
}

/// Picks the XDP modes for an uplink from the policy and what its far side
/// does with frames native XDP sends (veth_peer). Pure.
pub fn choose_modes(policy: XdpPolicy, peer: &PeerDelivery) -> ModeChoice {
    let choice = |modes, reason: &str| ModeChoice {
        modes,
        reason: reason.to_string(),
        warning: None,
    };
    match (policy, peer) {
        (XdpPolicy::Off, _) => choice(&[], "--xdp-mode off: tc serves external clients"),
        (XdpPolicy::Generic, _) => choice(&[XdpMode::Skb], "--xdp-mode generic"),
        (XdpPolicy::Native, PeerDelivery::MayDrop(why)) => ModeChoice {
            modes: &[XdpMode::Driver],
            reason: "--xdp-mode native".into(),
            warning: Some(format!(
                "native XDP as asked, but {why}: NodePort replies, rejects and traffic to remote \
                 backends may be lost (--xdp-mode auto would leave this uplink to tc)"
            )),
        },
        (XdpPolicy::Native, _) => choice(&[XdpMode::Driver], "--xdp-mode native"),
        (XdpPolicy::Auto, PeerDelivery::NotVeth) => choice(
            &[XdpMode::Driver, XdpMode::Skb],
            "native where the driver has it",
        ),
        (XdpPolicy::Auto, PeerDelivery::Delivers(why)) => {
            choice(&[XdpMode::Driver, XdpMode::Skb], &format!("native: {why}"))
        }
        // Generic XDP on a veth gains nothing over tc (the skb exists
        // already), and tc's checksum helpers also handle the partial
        // checksums that veths carry.
        (XdpPolicy::Auto, PeerDelivery::MayDrop(why)) => choice(
            &[],
            &format!("tc, not native XDP: {why} (generic XDP would gain nothing over tc here)"),
        ),
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
    /// Why this mode (for the log and `weir status`).
    pub reason: String,
    _link: XdpLink,
}

#[derive(Default)]
pub struct XdpAttachments {
    pub policy: XdpPolicy,
    pub links: BTreeMap<String, XdpAttachment>,
    /// Uplinks left to tc, with why.
    pub tc_only: BTreeMap<String, String>,
}

/// What an XDP reconcile did, for logging.
#[derive(Debug, Default)]
pub struct XdpReport {
    /// (device, mode, how, why): how is "attached" or "took over the pinned link".
    pub attached: Vec<(String, &'static str, &'static str, String)>,
    /// Choices that may lose traffic: (device, warning).
    pub warnings: Vec<(String, String)>,
    /// Uplinks newly left to tc (no XDP): (device, why).
    pub tc_only: Vec<(String, String)>,
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

/// Every IPv4 address of the network namespace: (device, address), in the kernel's order.
fn ipv4_addrs() -> Vec<(String, Ipv4Addr)> {
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|ifa| {
            let sin = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, sin))
        })
        .collect()
}

/// The first IPv4 address of each device, by name.
pub fn device_addrs() -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for (name, addr) in ipv4_addrs() {
        out.entry(name).or_insert(addr);
    }
    out
}

/// The first IPv6 address of each device that is not link-local, by name.
pub fn device_addrs6() -> BTreeMap<String, std::net::Ipv6Addr> {
    let mut out = BTreeMap::new();
    for (name, addr) in ip_addrs() {
        if let std::net::IpAddr::V6(a) = addr {
            out.entry(name).or_insert(a);
        }
    }
    out
}

/// Every address of both families but IPv6 link-local ones (fe80::/10,
/// which name no node to a client elsewhere), by device name.
fn ip_addrs() -> Vec<(String, std::net::IpAddr)> {
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|ifa| {
            let a = ifa.address.as_ref()?;
            let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
                (None, Some(v6)) if v6.ip().segments()[0] & 0xffc0 != 0xfe80 => {
                    std::net::IpAddr::V6(v6.ip())
                }
                _ => return None,
            };
            Some((ifa.interface_name, ip))
        })
        .collect()
}

/// This node's addresses: those of the uplinks `devices` (in their order)
/// and every non-loopback one, of both families.
pub fn local_addresses(devices: &[String]) -> crate::node_addrs::LocalAddresses {
    let addrs = ip_addrs();
    let mut local = crate::node_addrs::LocalAddresses::default();
    for device in devices {
        for (_, addr) in addrs.iter().filter(|(name, _)| name == device) {
            if !local.uplinks.contains(addr) {
                local.uplinks.push(*addr);
            }
        }
    }
    for (_, addr) in addrs.iter().filter(|(_, a)| !a.is_loopback()) {
        if !local.all.contains(addr) {
            local.all.push(*addr);
        }
    }
    local
}

/// Writes each uplink's address (`addr` of its name) into a NODE_ADDRS map
/// of one family, and removes the entries of uplinks without one or gone.
fn write_node_addrs<A: aya::Pod + PartialEq>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, u32, A>,
    uplinks: &[(String, u32)],
    addr: impl Fn(&str) -> Option<A>,
) {
    for (name, ifindex) in uplinks {
        match addr(name) {
            Some(a) => {
                if map.get(ifindex, 0).ok() != Some(a) {
                    let _ = map.insert(*ifindex, a, 0);
                }
            }
            None => {
                let _ = map.remove(ifindex);
            }
        }
    }
    let stale: Vec<u32> = map
        .keys()
        .flatten()
        .filter(|i| !uplinks.iter().any(|(_, u)| u == i))
        .collect();
    for ifindex in stale {
        let _ = map.remove(&ifindex);
    }
}

impl Dataplane {
    /// Attaches XDP to every wanted uplink (name, ifindex) not yet attached,
    /// in the mode `choose_modes` picks for it, adopting pinned links of that
    /// mode; detaches the rest; and writes each uplink's address into
    /// NODE_ADDRS_V1 (the SNAT source, for XDP and for tc alike).
    pub fn reconcile_xdp(&mut self, uplinks: &[(String, u32)]) -> XdpReport {
        let mut report = XdpReport::default();
        let dir = self.attachments.pin_dir().map(Path::to_path_buf);
        let policy = self.xdp.policy;
        let gone: Vec<String> = self
            .xdp
            .links
            .iter()
            .filter(|(name, a)| !uplinks.iter().any(|(n, i)| n == *name && *i == a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(a) = self.xdp.links.remove(&name) {
                if let Some(dir) = &dir {
                    let _ = std::fs::remove_file(dir.join(pin_name(a.mode, &name, a.ifindex)));
                }
            }
            report.detached.push(name);
        }
        self.xdp
            .tc_only
            .retain(|name, _| uplinks.iter().any(|(n, _)| n == name));
        let prog = super::loader::xdp_program(&mut self.ebpf);
        for (name, ifindex) in uplinks {
            if self.xdp.links.contains_key(name) {
                continue;
            }
            // Only auto and native look at the peer; it is read again each
            // time, so an uplink whose peer gains a native program gets XDP.
            let peer = match policy {
                XdpPolicy::Auto | XdpPolicy::Native => super::veth_peer::probe(*ifindex),
                XdpPolicy::Generic | XdpPolicy::Off => PeerDelivery::NotVeth,
            };
            let choice = choose_modes(policy, &peer);
            if choice.modes.is_empty() {
                if self.xdp.tc_only.get(name) != Some(&choice.reason) {
                    report.tc_only.push((name.clone(), choice.reason.clone()));
                    self.xdp.tc_only.insert(name.clone(), choice.reason);
                }
                if let Some((path, _)) =
                    dir.as_deref().and_then(|d| existing_pin(d, name, *ifindex))
                {
                    // An earlier agent's XDP link (--xdp-mode off now, or a
                    // veth auto no longer uses native XDP on).
                    let _ = std::fs::remove_file(path);
                    report.detached.push(name.clone());
                }
                continue;
            }
            self.xdp.tc_only.remove(name);
            if let Some(w) = &choice.warning {
                report.warnings.push((name.clone(), w.clone()));
            }
            let allowed: Vec<&str> = choice.modes.iter().map(|m| mode_name(*m)).collect();
            let pinned = dir.as_deref().and_then(|d| existing_pin(d, name, *ifindex));
            let mut result = Err(String::from("no XDP mode allowed"));
            if let Some((path, mode)) = pinned {
                if allowed.contains(&mode) {
                    result =
                        adopt(prog, &path).map(|link| (link, mode, "took over the pinned link"));
                }
                if result.is_err() {
                    // A pin we cannot use, or of a mode no longer chosen: replace it.
                    let _ = std::fs::remove_file(&path);
                }
            }
            let mut native_error = None;
            for mode in choice.modes {
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
                    let mut reason = choice.reason.clone();
                    if let (Some(e), "generic") = (native_error, mode) {
                        report.fell_back.push((name.clone(), e.clone()));
                        reason = format!("generic: native XDP failed ({e})");
                    }
                    report
                        .attached
                        .push((name.clone(), mode, how, reason.clone()));
                    self.xdp.links.insert(
                        name.clone(),
                        XdpAttachment {
                            ifindex: *ifindex,
                            mode,
                            reason,
                            _link: link,
                        },
                    );
                }
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        let addrs = device_addrs();
        write_node_addrs(&mut self.maps.node_addrs, uplinks, |n| {
            addrs.get(n).map(|a| a.octets())
        });
        // The same for IPv6 (NODE_ADDRS6_V1, the source of SNATed IPv6 flows).
        let addrs6 = device_addrs6();
        write_node_addrs(&mut self.maps.node_addrs6, uplinks, |n| {
            addrs6.get(n).map(|a| a.octets())
        });
        report
    }

    /// Each uplink's datapath for external clients and why, for `weir status`.
    pub fn uplink_modes(&self, uplinks: &[(String, u32)]) -> Vec<crate::control::UplinkStatus> {
        uplinks
            .iter()
            .map(|(name, _)| match self.xdp.links.get(name) {
                Some(a) => crate::control::UplinkStatus {
                    device: name.clone(),
                    mode: format!("xdp-{}", a.mode),
                    reason: a.reason.clone(),
                },
                None => crate::control::UplinkStatus {
                    device: name.clone(),
                    mode: "tc".into(),
                    reason: self
                        .xdp
                        .tc_only
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| "XDP could not be attached".into()),
                },
            })
            .collect()
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
    super::loader::load_retrying(|| prog.load()).map_err(program_error)?;
    prog.attach(device, XdpMode::Driver)
        .map_err(program_error)?;
    Ok(PeerPass { _ebpf: ebpf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_native_only_where_the_frames_it_sends_are_delivered() {
        let drops =
            PeerDelivery::MayDrop("its veth peer p1 is in another network namespace".into());
        let delivers = PeerDelivery::Delivers("its veth peer p1 runs an XDP program".into());
        let auto = |peer| choose_modes(XdpPolicy::Auto, peer);
        assert_eq!(
            auto(&PeerDelivery::NotVeth).modes,
            &[XdpMode::Driver, XdpMode::Skb]
        );
        assert_eq!(auto(&delivers).modes, &[XdpMode::Driver, XdpMode::Skb]);
        assert_eq!(
            auto(&delivers).reason,
            "native: its veth peer p1 runs an XDP program"
        );
        let bridged = auto(&drops);
        assert!(bridged.modes.is_empty());
        assert!(
            bridged
                .reason
                .starts_with("tc, not native XDP: its veth peer p1"),
            "{}",
            bridged.reason
        );
        assert_eq!(bridged.warning, None);
    }

    #[test]
    fn explicit_modes_keep_their_meaning_and_native_warns_where_it_may_lose_frames() {
        let drops = PeerDelivery::MayDrop("its veth peer p1 has neither".into());
        let native = choose_modes(XdpPolicy::Native, &drops);
        assert_eq!(native.modes, &[XdpMode::Driver]);
        let w = native.warning.expect("a warning");
        assert!(
            w.contains("its veth peer p1 has neither") && w.contains("may be lost"),
            "{w}"
        );
        assert_eq!(
            choose_modes(XdpPolicy::Native, &PeerDelivery::NotVeth).warning,
            None
        );
        assert_eq!(
            choose_modes(XdpPolicy::Generic, &drops).modes,
            &[XdpMode::Skb]
        );
        let off = choose_modes(XdpPolicy::Off, &PeerDelivery::NotVeth);
        assert!(
            off.modes.is_empty() && off.reason.contains("off"),
            "{off:?}"
        );
    }
}
