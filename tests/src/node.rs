//! Wiring a node namespace the way a CNI does it, shared by the one-node
//! sandbox and the multi-node cluster: the node forwards, each pod has a /32
//! and a default route to a gateway address that every host-side device
//! holds, and the node has a /32 route per pod.
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

use crate::{
    cmd::{ip, run},
    netns::Netns,
};

/// The gateway address pods route through (held by every host-side device).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix of host-side pod devices; the agent is started with `--pod-devices lxc*`.
pub const POD_DEVICE_PREFIX: &str = "lxc";

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The node the pod runs on, as EndpointSlices name it (`nodeName`).
    pub node: String,
    /// The host-side device in the node namespace.
    pub device: String,
    pub netns: Netns,
}

/// Makes namespace `ns` a router: IP forwarding on, reverse-path filtering
/// off (replies of NATed flows may come back on another device than the
/// route to their source) for all, default and `devices`, and no ICMP
/// redirects (a node that forwards a packet out of the device it came in on,
/// as a load balancer does, must not tell the client to bypass it).
pub fn make_router(ns: &str, devices: &[&str]) -> Result<()> {
    let mut settings = vec!["net.ipv4.ip_forward=1".to_string()];
    for conf in ["all", "default"].iter().chain(devices) {
        settings.push(format!("net.ipv4.conf.{conf}.rp_filter=0"));
        settings.push(format!("net.ipv4.conf.{conf}.send_redirects=0"));
    }
    let mut args = vec!["netns", "exec", ns, "sysctl", "-qw"];
    args.extend(settings.iter().map(String::as_str));
    run("ip", &args).map(drop)
}

/// Creates namespace `ns_name` for pod `name` with address `pod_ip` and wires
/// it into the node namespace `node_ns` (node `node_name`) through the
/// host-side veth `lxc<name>` (so `name` has at most 12 characters).
pub fn add_pod(
    node_ns: &str,
    node_name: &str,
    ns_name: &str,
    name: &str,
    pod_ip: Ipv4Addr,
) -> Result<Pod> {
    let device = format!("{POD_DEVICE_PREFIX}{name}");
    if device.len() > 15 {
        bail!("pod name {name:?} is too long: {device} exceeds 15 characters (IFNAMSIZ)");
    }
    let netns = Netns::create(ns_name)?;
    let pod_ns = netns.name.as_str();
    let (addr, gw) = (format!("{pod_ip}/32"), GATEWAY.to_string());
    let gw_host = format!("{gw}/32");
    let steps: [&[&str]; 8] = [
        &[
            "-n", node_ns, "link", "add", &device, "type", "veth", "peer", "name", "eth0", "netns",
            pod_ns,
        ],
        &["-n", node_ns, "link", "set", &device, "up"],
        &["-n", node_ns, "addr", "add", &gw_host, "dev", &device],
        &["-n", node_ns, "route", "add", &addr, "dev", &device],
        &["-n", pod_ns, "link", "set", "eth0", "up"],
        &["-n", pod_ns, "addr", "add", &addr, "dev", "eth0"],
        &[
            "-n", pod_ns, "route", "add", &gw_host, "dev", "eth0", "scope", "link",
        ],
        &[
            "-n", pod_ns, "route", "add", "default", "via", &gw, "dev", "eth0",
        ],
    ];
    for step in steps {
        ip(step).with_context(|| format!("wiring pod {name} into {node_ns}"))?;
    }
    crate::cmd::full_checksums(pod_ns, "eth0")?;
    Ok(Pod {
        name: name.to_string(),
        ip: pod_ip,
        node: node_name.to_string(),
        device,
        netns,
    })
}

/// The IPv6 gateway address pods route through (held by every host-side
/// device, as GATEWAY).
pub const GATEWAY6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Gives `pod` (in node namespace `node_ns`) the IPv6 address `addr` too, as
/// a dual-stack CNI does: a /128 on the pod's eth0 and a default route to
/// GATEWAY6 on its host-side device, a /128 route on the node. No duplicate
/// address detection, so the addresses work at once. Forwarding for IPv6 is
/// turned on in the node.
pub fn add_pod_ipv6(node_ns: &str, pod: &Pod, addr: std::net::Ipv6Addr) -> Result<()> {
    let (pod_ns, device) = (pod.netns.name.as_str(), pod.device.as_str());
    let (a, gw) = (format!("{addr}/128"), GATEWAY6.to_string());
    let gw_host = format!("{gw}/128");
    let steps: [&[&str]; 5] = [
        &[
            "-n", node_ns, "-6", "addr", "add", &gw_host, "dev", device, "nodad",
        ],
        &["-n", node_ns, "-6", "route", "add", &a, "dev", device],
        &[
            "-n", pod_ns, "-6", "addr", "add", &a, "dev", "eth0", "nodad",
        ],
        &["-n", pod_ns, "-6", "route", "add", &gw_host, "dev", "eth0"],
        &[
            "-n", pod_ns, "-6", "route", "add", "default", "via", &gw, "dev", "eth0",
        ],
    ];
    for step in steps {
        ip(step).with_context(|| format!("giving pod {} an IPv6 address", pod.name))?;
    }
    run(
        "ip",
        &[
            "netns",
            "exec",
            node_ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ],
    )?;
    // Neighbour discovery needs the link-local addresses, which stay
    // tentative (duplicate address detection) for a second or two after
    // the link came up: wait for both ends, at most 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for (ns, dev) in [(node_ns, device), (pod_ns, "eth0")] {
        while !ip(&["-n", ns, "-6", "addr", "show", "dev", dev, "tentative"])?
            .trim()
            .is_empty()
        {
            if std::time::Instant::now() > deadline {
                bail!("{dev} in {ns} still has tentative IPv6 addresses after 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(())
}
