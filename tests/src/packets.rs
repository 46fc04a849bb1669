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
