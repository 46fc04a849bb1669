//! Packets for BPF_PROG_TEST_RUN tests, built with etherparse so that every
//! checksum in an expected packet is computed independently of the code
//! under test.
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, PacketBuilderStep};
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{CtKey, BACKEND_ACTIVE};
use weir::translate::Backend;

use crate::{
    cmd::{ip, run},
    netns::{enter, unique_tag, Netns},
};

pub const MAC_POD: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_NODE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// A packet description; `build` turns it into bytes.
#[derive(Clone, Copy, Debug)]
pub struct Pkt {
    pub l4: L4,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    /// Adds 4 bytes of IPv4 options (NOP, NOP, NOP, EOL): IHL 6.
    pub ip_options: bool,
    pub more_fragments: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Pkt {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            l4: L4::Tcp,
            src,
            dst,
            sport,
            dport,
            ip_options: false,
            more_fragments: false,
            src_mac: MAC_POD,
            dst_mac: MAC_NODE,
        }
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            l4: L4::Udp,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    pub fn with_src(self, src: [u8; 4], sport: u16) -> Self {
        Self { src, sport, ..self }
    }

    pub fn with_dst(self, dst: [u8; 4], dport: u16) -> Self {
        Self { dst, dport, ..self }
    }

    pub fn with_macs(self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            src_mac,
            dst_mac,
            ..self
        }
    }

    /// Ethernet + IPv4 + TCP (SYN) or UDP with a small payload and correct checksums.
    pub fn build(&self) -> Vec<u8> {
        let proto = match self.l4 {
            L4::Tcp => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
        };
        let mut ip = Ipv4Header::new(0, 64, proto, self.src, self.dst).expect("valid header");
        ip.identification = 0x1234;
        ip.more_fragments = self.more_fragments;
        if self.ip_options {
            ip.options = [1u8, 1, 1, 0].into();
        }
        let builder = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ip(IpHeaders::Ipv4(ip, Default::default()));
        let payload = b"weir packet test";
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp => builder
                .tcp(self.sport, self.dport, 1000, 64240)
                .syn()
                .write(&mut out, payload),
            L4::Udp => builder.udp(self.sport, self.dport).write(&mut out, payload),
        }
        .expect("packet fits");
        out
    }

    /// Offset of the L4 checksum in `build()`'s output.
    pub fn l4_csum_offset(&self) -> usize {
        14 + if self.ip_options { 24 } else { 20 } + if self.l4 == L4::Tcp { 16 } else { 6 }
    }
}

/// The Ethernet and IPv4 headers of an answer the datapath builds itself (a
/// reset or an ICMP error): addresses swapped back towards the sender, DF
/// set, id 0.
pub fn answer(src: [u8; 4], dst: [u8; 4], proto: IpNumber) -> PacketBuilderStep<IpHeaders> {
    let mut ip = Ipv4Header::new(0, 64, proto, src, dst).expect("header");
    ip.identification = 0;
    ip.dont_fragment = true;
    PacketBuilder::ethernet2(MAC_NODE, MAC_POD).ip(IpHeaders::Ipv4(ip, Default::default()))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn ct_key(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// An active backend.
pub fn backend(addr: [u8; 4], port: u16, proto: u8) -> Backend {
    Backend {
        addr: addr.into(),
        port,
        proto,
        state: BACKEND_ACTIVE,
    }
}

/// This node's uplink address (a NodePort address) and MAC in `FibNs::with_uplink`.
pub const NODE_IP: [u8; 4] = [198, 18, 100, 11];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x0b];
/// The other node, through which its pods (198.18.12.0/24) are reached.
pub const NODE2_IP: [u8; 4] = [198, 18, 100, 12];
pub const NODE2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x0c];
/// An external client on the uplink's subnet.
pub const UPLINK_CLIENT: [u8; 4] = [198, 18, 100, 100];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x64];

/// The IPv6 twins of NODE_IP, NODE2_IP and UPLINK_CLIENT (on 2001:db8:0:100::/64).
pub const NODE_IP6: [u8; 16] = v6(0x100, 0x11);
pub const NODE2_IP6: [u8; 16] = v6(0x100, 0x12);
pub const UPLINK_CLIENT6: [u8; 16] = v6(0x100, 0x100);

/// A namespace to run BPF_PROG_TEST_RUN in, so that the FIB lookups the
/// programs make have a fixed answer whatever the machine's routes are.
pub struct FibNs {
    pub ns: Netns,
    /// ifindex of the uplink up0 (0 in an empty namespace).
    pub ifindex: u32,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FibNs {
    /// No routes: every lookup fails and packets go to the stack.
    pub fn empty() -> Result<Self> {
        Ok(Self {
            ns: Netns::create(&format!("{}-fib", unique_tag()))?,
            ifindex: 0,
        })
    }

    /// This node's uplink up0 (NODE_IP/24, forwarding on), a route to the
    /// other node's pods and permanent neighbour entries for the other node
    /// and the client.
    pub fn with_uplink() -> Result<Self> {
        let mut fib = Self::empty()?;
        let n = fib.ns.name.clone();
        let n = n.as_str();
        ip(&[
            "-n", n, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ])?;
        ip(&[
            "-n",
            n,
            "link",
            "set",
            "up0",
            "address",
            &mac(NODE_MAC),
            "up",
        ])?;
        ip(&["-n", n, "link", "set", "up1", "up"])?;
        let node = format!("{}/24", Ipv4Addr::from(NODE_IP));
        ip(&["-n", n, "addr", "add", &node, "dev", "up0"])?;
        for (addr, m) in [(NODE2_IP, NODE2_MAC), (UPLINK_CLIENT, CLIENT_MAC)] {
            let addr = Ipv4Addr::from(addr).to_string();
            ip(&[
                "-n",
                n,
                "neigh",
                "add",
                &addr,
                "lladdr",
                &mac(m),
                "dev",
                "up0",
                "nud",
                "permanent",
            ])?;
        }
        let via = Ipv4Addr::from(NODE2_IP).to_string();
        ip(&["-n", n, "route", "add", "198.18.12.0/24", "via", &via])?;
        run(
            "ip",
            &["netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        )?;
        fib.ifindex = fib
            .ns
            .run(|| -> Result<u32> { Ok(nix::net::if_::if_nametoindex("up0")?) })??;
        Ok(fib)
    }

    /// `with_uplink`, and IPv6 on it: NODE_IP6/64 on up0, permanent
    /// neighbour entries for NODE2_IP6 and UPLINK_CLIENT6, and a route to the
    /// other node's pods (2001:db8:12::/64) through it.
    pub fn with_uplink6() -> Result<Self> {
        let fib = Self::with_uplink()?;
        let n = fib.ns.name.clone();
        let n = n.as_str();
        let node = format!("{}/64", std::net::Ipv6Addr::from(NODE_IP6));
        ip(&["-n", n, "-6", "addr", "add", &node, "dev", "up0", "nodad"])?;
        for (addr, m) in [(NODE2_IP6, NODE2_MAC), (UPLINK_CLIENT6, CLIENT_MAC)] {
            let addr = std::net::Ipv6Addr::from(addr).to_string();
            ip(&[
                "-n",
                n,
                "-6",
                "neigh",
                "add",
                &addr,
                "lladdr",
                &mac(m),
                "dev",
                "up0",
                "nud",
                "permanent",
            ])?;
        }
        let via = std::net::Ipv6Addr::from(NODE2_IP6).to_string();
        ip(&[
            "-n",
            n,
            "-6",
            "route",
            "add",
            "2001:db8:0:12::/64",
            "via",
            &via,
        ])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        Ok(fib)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let name = self.ns.name.clone();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                enter(&name)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("test thread panicked"))?
        })
    }
}

/// An IPv6 packet description (as `Pkt`); `build` turns it into bytes.
#[derive(Clone, Copy, Debug)]
pub struct Pkt6 {
    pub l4: L4,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// A hop-by-hop options header (8 bytes of padding options) before
    /// the L4 header.
    pub hop_by_hop: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Pkt6 {
    pub fn tcp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Self {
        Self {
            l4: L4::Tcp,
            src,
            dst,
            sport,
            dport,
            hop_by_hop: false,
            src_mac: MAC_POD,
            dst_mac: MAC_NODE,
        }
    }

    pub fn udp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Self {
        Self {
            l4: L4::Udp,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    pub fn with_src(self, src: [u8; 16], sport: u16) -> Self {
        Self { src, sport, ..self }
    }

    pub fn with_dst(self, dst: [u8; 16], dport: u16) -> Self {
        Self { dst, dport, ..self }
    }

    pub fn with_macs(self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            src_mac,
            dst_mac,
            ..self
        }
    }

    /// Ethernet + IPv6 + TCP (SYN) or UDP with a small payload and correct
    /// checksums (etherparse's).
    pub fn build(&self) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let payload = b"weir packet test";
        let mut out = Vec::new();
        if self.hop_by_hop {
            let mut ip = etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP,
                hop_limit: 64,
                source: self.src,
                destination: self.dst,
            };
            let proto = match self.l4 {
                L4::Tcp => IpNumber::TCP,
                L4::Udp => IpNumber::UDP,
            };
            // Next header, length 0 (8 bytes), a PadN option of 4 bytes.
            let hbh = [proto.0, 0, 1, 4, 0, 0, 0, 0];
            let mut l4 = Vec::new();
            let inner = PacketBuilder::ipv6(self.src, self.dst, 64);
            match self.l4 {
                L4::Tcp => inner
                    .tcp(self.sport, self.dport, 1000, 64240)
                    .syn()
                    .write(&mut l4, payload),
                L4::Udp => inner.udp(self.sport, self.dport).write(&mut l4, payload),
            }
            .expect("packet fits");
            let l4 = &l4[40..];
            ip.payload_length = (hbh.len() + l4.len()) as u16;
            let mut eth = Vec::new();
            etherparse::Ethernet2Header {
                source: self.src_mac,
                destination: self.dst_mac,
                ether_type: etherparse::EtherType::IPV6,
            }
            .write(&mut eth)
            .expect("ethernet");
            out.extend(eth);
            ip.write(&mut out).expect("ipv6");
            out.extend(hbh);
            out.extend(l4);
            return out;
        }
        let builder = builder.ipv6(self.src, self.dst, 64);
        match self.l4 {
            L4::Tcp => builder
                .tcp(self.sport, self.dport, 1000, 64240)
                .syn()
                .write(&mut out, payload),
            L4::Udp => builder.udp(self.sport, self.dport).write(&mut out, payload),
        }
        .expect("packet fits");
        out
    }
}

/// The Ethernet and IPv6 headers of an answer the datapath builds itself:
/// towards the sender, hop limit 64.
pub fn answer6(src: [u8; 16], dst: [u8; 16]) -> PacketBuilderStep<IpHeaders> {
    PacketBuilder::ethernet2(MAC_NODE, MAC_POD).ipv6(src, dst, 64)
}

/// The desired state of just `frontends`.
pub fn desired(
    frontends: Vec<(weir::translate::FrontendKey, weir::translate::Frontend)>,
) -> weir::translate::Desired {
    weir::translate::Desired {
        frontends: frontends.into_iter().map(|(k, f)| (k, f.into())).collect(),
        ..Default::default()
    }
}

/// Unpinned maps with IPv6 on (`--ipv6`), holding `frontends`.
pub fn ipv6_dataplane(
    frontends: Vec<(weir::translate::FrontendKey, weir::translate::Frontend)>,
) -> Result<weir::dataplane::Dataplane> {
    let cfg = weir::dataplane::sync::PlanConfig {
        ipv6: true,
        ..Default::default()
    };
    let mut dp = weir::dataplane::Dataplane::load_unpinned(cfg)?;
    dp.sync(&desired(frontends))?;
    Ok(dp)
}

/// An active IPv6 backend.
pub fn backend6(addr: [u8; 16], port: u16, proto: u8) -> Backend {
    Backend {
        addr: addr.into(),
        port,
        proto,
        state: BACKEND_ACTIVE,
    }
}

/// The IPv6 address 2001:db8:0:`net`::`last` (in 2001:db8::/32; each `net`
/// a /64 of its own).
pub const fn v6(net: u16, last: u16) -> [u8; 16] {
    let n = net.to_be_bytes();
    let l = last.to_be_bytes();
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, n[0], n[1], 0, 0, 0, 0, 0, 0, l[0], l[1],
    ]
}

/// An ICMP error (`kind`) from `src` to `dst` quoting `quoted` (an IPv4
/// packet, as many of its bytes as given), checksummed by etherparse.
pub fn icmp_error(
    src: [u8; 4],
    dst: [u8; 4],
    kind: etherparse::Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_POD, MAC_NODE)
        .ipv4(src, dst, 64)
        .icmpv4(kind)
        .write(&mut out, quoted)
        .expect("packet fits");
    out
}

/// An ICMPv6 error (`kind`) from `src` to `dst` quoting `quoted` (an IPv6
/// packet), checksummed by etherparse.
pub fn icmp6_error(
    src: [u8; 16],
    dst: [u8; 16],
    kind: etherparse::Icmpv6Type,
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_POD, MAC_NODE)
        .ipv6(src, dst, 64)
        .icmpv6(kind)
        .write(&mut out, quoted)
        .expect("packet fits");
    out
}

/// ICMPv4 "fragmentation needed" with a next-hop MTU of 1400.
pub fn frag_needed() -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
    )
}

/// ICMPv4 "port unreachable".
pub fn port_unreachable() -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
}
