//! The IPv6 maps' keys and values: the IPv4 types with 16-byte addresses,
//! the same field names (so the kernel's logic is written once for both
//! families, see lb-ebpf's family modules), and fields ordered so that no
//! padding is needed (explicit `_pad` fields, zero). Each is 8-byte aligned
//! with its addresses at 8-byte offsets, so that the kernel moves an
//! address in two loads rather than sixteen byte loads (and its registers
//! and stack, 512 bytes in all, hold the IPv6 path).

/// A frontend (ServiceKey with an IPv6 address).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: u32,
}

/// A backend (Backend with an IPv6 address).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub state: u8,
    pub _pad: u32,
}

/// Reverse NAT entry (RevNat with an IPv6 address).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// Conntrack key (CtKey with IPv6 addresses).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack value (CtValue with IPv6 addresses; the same meaning).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue6 {
    pub backend_id: u32,
    pub service_id: u32,
    pub last_seen_ns: u64,
    pub nat_addr: [u8; 16],
    pub snat_addr: [u8; 16],
    pub nat_port: u16,
    pub snat_port: u16,
    pub kind: u8,
    pub flags: u8,
    pub _pad: u16,
}

/// Session affinity key (AffinityKey with an IPv6 client).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey6 {
    pub client: [u8; 16],
    pub service_id: u32,
    pub _pad: u32,
}

/// Data of an SRC_RANGES6_V1 key: as SourceRange, with an IPv6 client. A
/// range a::/n of service s is stored with prefix 32 + n.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange6 {
    pub service_id: [u8; 4],
    pub addr: [u8; 16],
}

/// A `weir monitor` event of an IPv6 flow (MonitorEvent with IPv6
/// addresses; the same field names and meaning). The reader tells the two
/// apart by their size.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub nat_addr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub kind: u8,
    pub reason: u8,
    pub _pad: [u8; 3],
    pub service_id: u32,
    pub _pad2: [u32; 2],
    pub netns_cookie: u64,
}

const _: () = {
    assert!(core::mem::size_of::<MonitorEvent6>() == 80);
    assert!(core::mem::size_of::<ServiceKey6>() == 24);
    assert!(core::mem::size_of::<Backend6>() == 24);
    assert!(core::mem::size_of::<RevNat6>() == 24);
    assert!(core::mem::size_of::<CtKey6>() == 40);
    assert!(core::mem::size_of::<CtValue6>() == 56);
    assert!(core::mem::size_of::<AffinityKey6>() == 24);
    assert!(core::mem::size_of::<SourceRange6>() == 20);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, padding-free (sizes asserted above).
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for RevNat6 {}
    unsafe impl aya::Pod for CtKey6 {}
    unsafe impl aya::Pod for CtValue6 {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for SourceRange6 {}
    unsafe impl aya::Pod for MonitorEvent6 {}
}
