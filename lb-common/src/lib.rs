//! Map keys, values and constants shared by the kernel programs (lb-ebpf) and
//! the agent (lb-userspace).
//!
//! Every type is `#[repr(C)]` and padding-free (explicit `_pad` fields, sizes
//! asserted below) so that a key written by the agent hashes to the same bytes
//! the kernel looks up. Addresses are stored as network-order byte arrays and
//! ports as host-order `u16`, so that `bpftool map dump` prints them readably
//! (`[198,19,0,10]`, `80`).
#![no_std]

pub mod filter;
pub mod v6;
pub use v6::*;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Scope of a frontend entry. Every frontend has a `SCOPE_EXTERNAL` entry (the
/// default view); a `SCOPE_INTERNAL` entry exists only where pods must see a
/// different set of backends (the traffic policies). Pod traffic looks up the
/// internal scope first and falls back to the external one.
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// Endpoint selection algorithms (ServiceValue::algorithm).
pub const ALG_RANDOM: u8 = 0;
pub const ALG_HASH: u8 = 1;
pub const ALG_MAGLEV: u8 = 2;

/// Backend state bits (Backend::state): an active backend has none; a
/// terminating one (serving while it shuts down) has BACKEND_TERMINATING.
pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;
/// The endpoint runs on this node: external traffic reaches it with DNAT
/// alone, without SNAT (the reply passes back through this node anyway).
pub const BACKEND_LOCAL: u8 = 2;

/// Service flags (ServiceValue::flags).
/// The frontend is reachable from outside the cluster (NodePort,
/// LoadBalancer, external IP): the XDP program on uplinks serves it.
pub const SVC_FLAG_EXTERNAL: u16 = 1;
/// Only clients in the service's loadBalancerSourceRanges (SRC_RANGES_V1) may connect.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 2;
/// externalTrafficPolicy Local on a node without local endpoints while the
/// service has endpoints elsewhere: drop (as kube-proxy does) rather than reject.
pub const SVC_FLAG_DROP_IF_EMPTY: u16 = 4;
/// On an external-scope entry: an internal-scope entry exists for the same
/// frontend, which pods use instead. Without it pods look up only the
/// external entry (one hash lookup, not two, for almost every frontend).
/// Set by the agent's planner, not by `translate`.
pub const SVC_FLAG_HAS_INTERNAL: u16 = 8;

/// Conntrack entry kinds (CtValue::kind).
/// A forward entry is keyed by the client's tuple towards the frontend and
/// names the backend; a reply entry is keyed by the backend's tuple towards the
/// client and names the frontend to restore as source.
pub const CT_FORWARD: u8 = 1;
pub const CT_REPLY: u8 = 2;

/// CtValue::flags: a FIN or RST was seen in this direction; the flow is
/// closing and the agent expires it after the close timeout.
pub const CT_FLAG_CLOSING: u8 = 1;

/// Source ports for SNAT of external flows to remote backends: above Linux's
/// default ephemeral range (32768-60999), so they do not collide with the
/// node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;
/// How many SNAT ports a new flow tries before it is dropped.
pub const SNAT_PORT_TRIES: u32 = 8;
/// The source a pod sees when it reaches its own service and is chosen as the
/// backend (hairpin): a link-local address routed back through the node, as
/// Cilium does, because a packet from the pod's own address would be dropped
/// as martian.
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];
/// The IPv6 hairpin source: 100::42:1, in the discard-only prefix 100::/64
/// (RFC 6666). Not link-local, so the pod routes its reply to its default
/// gateway (the node), where tc reverse-translates it; it never leaves.
pub const HAIRPIN_ADDR6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42, 0, 1];

/// Map names. The `_V1` suffix is the layout version: an incompatible layout
/// gets a new name so that an old pin is never reused with the wrong types.
pub const MAP_SERVICES: &str = "SERVICES_V1";
pub const MAP_SLOTS: &str = "SLOTS_V1";
pub const MAP_BACKENDS: &str = "BACKENDS_V1";
pub const MAP_REVNAT: &str = "REVNAT_V1";
/// V2: CtValue gained the SNAT address and port.
pub const MAP_CT: &str = "CT_V2";
pub const MAP_AFFINITY: &str = "AFFINITY_V1";
pub const MAP_MAGLEV: &str = "MAGLEV_V1";
pub const MAP_STATS: &str = "STATS_V1";
/// STATS_V1 as one array of atomic counters shared by all CPUs, for a
/// service id space beyond PERCPU_STATS_MAX (STATS_V1 then holds one entry).
pub const MAP_STATS_SHARED: &str = "STATS_SHARED_V1";
pub const MAP_DROPS: &str = "DROPS_V1";
pub const MAP_MONITOR: &str = "MONITOR_V1";
pub const MAP_CONFIG: &str = "CONFIG_V1";
pub const MAP_SOURCE_RANGES: &str = "SRC_RANGES_V1";
pub const MAP_NODE_ADDRS: &str = "NODE_ADDRS_V1";
/// The IPv6 twins of the maps keyed or valued by addresses (v6.rs types);
/// slots, Maglev tables and counters are shared by both families, since
/// service and backend ids are unique across them.
pub const MAP_SERVICES6: &str = "SERVICES6_V1";
pub const MAP_BACKENDS6: &str = "BACKENDS6_V1";
pub const MAP_REVNAT6: &str = "REVNAT6_V1";
pub const MAP_CT6: &str = "CT6_V1";
pub const MAP_AFFINITY6: &str = "AFFINITY6_V1";
pub const MAP_SOURCE_RANGES6: &str = "SRC_RANGES6_V1";
pub const MAP_NODE_ADDRS6: &str = "NODE_ADDRS6_V1";
/// Packets passed untranslated for a reason worth counting (PASS_*).
pub const MAP_PASSED: &str = "PASSED_V1";
pub const ALL_MAPS: [&str; 26] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_REVNAT,
    MAP_CT,
    MAP_AFFINITY,
    MAP_MAGLEV,
    MAP_STATS,
    MAP_STATS_SHARED,
    MAP_DROPS,
    MAP_MONITOR,
    MAP_CONFIG,
    MAP_SOURCE_RANGES,
    MAP_NODE_ADDRS,
    sock::MAP_SOCK_REVNAT,
    sock::MAP_SOCK_STATS,
    sock::MAP_SOCK_REVNAT6,
    filter::MAP_FILTER,
    MAP_SERVICES6,
    MAP_BACKENDS6,
    MAP_REVNAT6,
    MAP_CT6,
    MAP_AFFINITY6,
    MAP_SOURCE_RANGES6,
    MAP_NODE_ADDRS6,
    MAP_PASSED,
];

/// Pins of older layouts whose entries a new agent carries over: (old pin,
/// new map). Each new layout only appended fields whose zero means "absent",
/// so an old entry is copied with its value zero-extended.
pub const MAP_MIGRATIONS: [(&str, &str); 1] = [("CT_V1", MAP_CT)];

/// The kernel global holding the conntrack refresh interval (ns): an
/// established flow's packet rewrites its entry's timestamp only when it is
/// older than that.
pub const GLOBAL_CT_REFRESH_NS: &str = "CT_REFRESH_NS";
/// The kernel global that turns the in-place fast paths on (1) or off (0,
/// only to test that the helper paths produce the same bytes).
pub const GLOBAL_DIRECT_ACCESS: &str = "DIRECT_ACCESS";
/// The refresh interval when the agent sets none: 1 s.
pub const DEFAULT_CT_REFRESH_NS: u64 = 1_000_000_000;

/// CONFIG_V1 index 0: runtime flags the kernel reads.
pub const CONFIG_FLAGS: u32 = 0;
/// Flag: report every new flow to MONITOR_V1 (`weir monitor --flows`).
pub const FLAG_TRACE_FLOWS: u32 = 1;
pub const MONITOR_BYTES: u32 = 256 * 1024;

/// MonitorEvent::kind
pub const EVENT_DROP: u8 = 1;
pub const EVENT_FLOW: u8 = 2;
/// Socket LB sent a connect()/sendmsg() to a backend (with `--flows`).
pub const EVENT_SOCK_FLOW: u8 = 3;
/// Socket LB refused a connect()/sendmsg() (no endpoint: ECONNREFUSED).
pub const EVENT_SOCK_REFUSED: u8 = 4;

/// One datapath event for `weir monitor`: a drop (with `reason`, an index
/// into DROP_REASON_NAMES) or a new flow (with the backend in `nat_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub nat_addr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub kind: u8,
    pub reason: u8,
    pub _pad: [u8; 3],
    pub service_id: u32,
    pub _pad2: u32,
    /// Socket LB events: the network namespace cookie of the calling
    /// process's socket (0 for packet events).
    pub netns_cookie: u64,
}

/// The size of a MonitorEvent before `netns_cookie` was added: events of
/// that size (from an older agent's programs) are still read.
pub const MONITOR_EVENT_V1_SIZE: usize = 28;

/// Reasons counted in DROPS_V1 (per-CPU u64 by index).
pub const DROP_NO_ENDPOINT: u32 = 0;
/// A packet the datapath could not rewrite (helper failure).
pub const DROP_REWRITE_FAILED: u32 = 1;
/// The client is not in the service's loadBalancerSourceRanges.
pub const DROP_SOURCE_RANGE: u32 = 2;
/// externalTrafficPolicy Local and no endpoint on this node.
pub const DROP_NO_LOCAL_ENDPOINT: u32 = 3;
/// No SNAT address for the device, or every SNAT port tried was taken.
pub const DROP_SNAT_FAILED: u32 = 4;
pub const DROP_REASONS: u32 = 8;
/// Names of the drop reasons, by index, for metrics and the CLI.
pub const DROP_REASON_NAMES: [&str; 5] = [
    "no_endpoint",
    "rewrite_failed",
    "source_range",
    "no_local_endpoint",
    "snat_failed",
];

/// Reasons counted in PASSED_V1 (per-CPU u64 by index): packets that may be
/// for a service but were passed on untranslated.
/// An IPv6 packet with extension headers (the datapath does not walk them).
pub const PASS_IPV6_EXT: u32 = 0;
pub const PASS_REASONS: u32 = 4;
/// Names of the pass reasons, by index, for metrics and the CLI.
pub const PASS_REASON_NAMES: [&str; 1] = ["ipv6_extension_header"];

/// Global in lb-ebpf holding the Maglev table size M (set at load time).
pub const GLOBAL_MAGLEV_M: &str = "MAGLEV_M";
/// The kernel global that says which of STATS_V1 (0) and STATS_SHARED_V1
/// (1) counts services.
pub const GLOBAL_STATS_SHARED: &str = "STATS_SHARED";
/// The largest service id space counted per CPU: 262,145 entries of 24
/// bytes, 6 MiB per CPU. Beyond it (a larger `--max-services`) per-CPU
/// counters would cost up to 96 MiB per CPU at MAX_CAPACITY; the shared
/// array costs that once, and a locked add per packet.
pub const PERCPU_STATS_MAX: u32 = 262_144;
/// Default Maglev table size: prime, > 100 x the backends of services up to ~160 endpoints.
pub const DEFAULT_MAGLEV_M: u32 = 16_381;
/// No Maglev table (ServiceValue::maglev_table).
pub const NO_MAGLEV_TABLE: u32 = u32::MAX;

/// Program names (function names in lb-ebpf).
pub const PROG_TC_INGRESS: &str = "weir_tc_ingress";
pub const PROG_XDP: &str = "weir_xdp";
pub const PROG_TC_UPLINK: &str = "weir_tc_uplink";
pub const PROG_XDP_PASS: &str = "weir_xdp_pass";

/// Default capacity of the services map (frontends; `--max-services`).
pub const MAX_SERVICES: u32 = 65_536;
/// Default capacity of the backends map (`--max-backends`).
pub const MAX_BACKENDS: u32 = 65_536;
/// The largest `--max-services` / `--max-backends` the agent accepts. Ids are
/// u32 everywhere; this bound keeps a typo from asking the kernel for maps of
/// billions of preallocated entries.
pub const MAX_CAPACITY: u32 = 1 << 22;
pub const MAX_SLOTS: u32 = 262_144;
pub const MAX_CT: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 65_536;
pub const MAX_SOURCE_RANGES: u32 = 16_384;
pub const MAX_NODE_ADDRS: u32 = 64;

/// A frontend: the address, port and protocol a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// A frontend's entry. `count` backends live in slots 1..=count.
/// `affinity_timeout` (seconds) > 0 turns on ClientIP session affinity;
/// `maglev_table` is the table index in MAGLEV_V1 for ALG_MAGLEV.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    pub id: u32,
    pub count: u32,
    pub affinity_timeout: u32,
    pub maglev_table: u32,
    pub flags: u16,
    pub algorithm: u8,
    pub _pad: u8,
}

/// Key of the slots map: the n-th backend of a service (slots start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// A backend (an endpoint address and target port), shared by all frontends that use it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub state: u8,
}

/// Reverse NAT entry: the frontend restored as source on replies, by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat {
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// Conntrack key: a packet's 5-tuple in the direction it travels.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack value. For `CT_FORWARD`, `nat_*` is the backend the flow uses
/// and a non-zero `snat_addr` the source it is given (SNAT of external flows
/// to remote backends, hairpin); for `CT_REPLY`, `nat_*` is the frontend to
/// restore as source and a non-zero `snat_addr` the client to restore as
/// destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    pub backend_id: u32,
    pub service_id: u32,
    pub nat_addr: [u8; 4],
    pub nat_port: u16,
    pub kind: u8,
    pub flags: u8,
    pub last_seen_ns: u64,
    pub snat_addr: [u8; 4],
    pub snat_port: u16,
    pub _pad: u16,
}

/// Data of an SRC_RANGES_V1 key (after the LPM prefix length): the service id
/// big-endian, so that it is matched as a whole 32-bit prefix, then the client
/// address. A range a.b.c.d/n of service s is stored with prefix 32 + n.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    pub service_id: [u8; 4],
    pub addr: [u8; 4],
}

impl SourceRange {
    /// The LPM prefix length of range /`prefix` of a service.
    pub const fn prefix_len(prefix: u8) -> u32 {
        32 + prefix as u32
    }
}

/// RFC 1624 incremental checksum update: the Internet checksum `check` after
/// the 16-bit word `old` became `new` (all as read big-endian).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// As csum_replace2, for a 4-byte field (an IPv4 address).
#[inline(always)]
pub fn csum_replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = csum_replace2(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    csum_replace2(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// As csum_replace4, for a 16-byte field (an IPv6 address).
#[inline(always)]
pub fn csum_replace16(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut c = check;
    let mut i = 0;
    while i < 16 {
        c = csum_replace4(
            c,
            [old[i], old[i + 1], old[i + 2], old[i + 3]],
            [new[i], new[i + 1], new[i + 2], new[i + 3]],
        );
        i += 4;
    }
    c
}

/// Per-service counters (per CPU, indexed by service id): new flows, and
/// packets and bytes the datapath translated towards the service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Session affinity key: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: [u8; 4],
}

/// The backend a client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

/// Flow hash used by the `hash` algorithm: murmur3's finaliser over the
/// 5-tuple. Shared so that tests and the agent can predict the kernel's choice.
#[inline(always)]
pub fn flow_hash(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = u32::from_be_bytes(saddr);
    h = fmix(h ^ u32::from_be_bytes(daddr).rotate_left(13));
    h = fmix(h ^ (((sport as u32) << 16) | dport as u32));
    fmix(h ^ proto as u32)
}

/// `flow_hash` for IPv6: the addresses folded to 32 bits first.
#[inline(always)]
pub fn flow_hash6(saddr: [u8; 16], daddr: [u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    flow_hash(
        filter::fold6(saddr),
        filter::fold6(daddr),
        sport,
        dport,
        proto,
    )
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 8);
    assert!(core::mem::size_of::<ServiceValue>() == 20);
    assert!(core::mem::size_of::<AffinityKey>() == 8);
    assert!(core::mem::size_of::<ServiceStats>() == 24);
    assert!(core::mem::size_of::<MonitorEvent>() == 40);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<RevNat>() == 8);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtValue>() == 32);
    assert!(core::mem::size_of::<SourceRange>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, padding-free (sizes asserted above).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for SourceRange {}
}

/// The ingress hand-off: an sk_lookup program in the node's network
/// namespace steers TCP connections to an ingress address and port to the
/// embedded proxy's listening sockets. The agent creates these maps fresh at
/// every start (its sockets die with it), so they are not pinned.
pub mod ingress {
    /// {ingress address, port} -> index into INGRESS_SOCKETS_V1.
    pub const MAP_INGRESS_ADDRS: &str = "INGRESS_ADDRS_V1";
    /// SOCKMAP: the proxy's listening sockets, by SOCKET_* index.
    pub const MAP_INGRESS_SOCKETS: &str = "INGRESS_SOCKETS_V1";
    pub const PROG_INGRESS_LOOKUP: &str = "weir_ingress_lookup";
    pub const SOCKET_HTTP: u32 = 0;
    pub const SOCKET_HTTPS: u32 = 1;
    /// TLS and TCP listeners of the Gateway API (byte streams).
    pub const SOCKET_STREAM: u32 = 2;
    /// The proxy's IPv6 sockets follow its IPv4 ones: an IPv6 connection
    /// goes to index SOCKET_* + SOCKETS_IPV6. (A dual-stack socket cannot
    /// do both: bound to ::1, the kernel makes it IPv6-only.)
    pub const SOCKETS_IPV6: u32 = 3;
    pub const SOCKETS: u32 = 2 * SOCKETS_IPV6;
    pub const MAX_INGRESS_ADDRS: u32 = 4096;

    /// A destination the proxy takes over: address (network order bytes;
    /// IPv4 as its IPv4-mapped IPv6 address, ::ffff:a.b.c.d, so that one
    /// map serves both families) and port (host order).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct IngressKey {
        pub addr: [u8; 16],
        pub port: u16,
        pub _pad: u16,
    }

    impl IngressKey {
        pub fn new(addr: core::net::IpAddr, port: u16) -> Self {
            let addr = match addr {
                core::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                core::net::IpAddr::V6(a) => a.octets(),
            };
            Self {
                addr,
                port,
                _pad: 0,
            }
        }
    }

    const _: () = assert!(core::mem::size_of::<IngressKey>() == 20);

    #[cfg(feature = "user")]
    // SAFETY: repr(C), padding-free (size asserted above), plain integers.
    unsafe impl aya::Pod for IngressKey {}
}

/// Socket-level load balancing: cgroup v2 sock_addr programs translate a
/// service address to a backend at connect() and sendmsg(), and restore the
/// service address at recvmsg() and getpeername() from SOCK_REVNAT_V1, keyed
/// by the socket's cookie and the backend it was sent to.
pub mod sock {
    /// LRU: {socket cookie, backend} -> the service address the socket asked for.
    pub const MAP_SOCK_REVNAT: &str = "SOCK_REVNAT_V1";
    /// Per-CPU counters: SOCK_STAT_TRANSLATED, SOCK_STAT_REFUSED.
    pub const MAP_SOCK_STATS: &str = "SOCK_STATS_V1";
    pub const MAX_SOCK_REVNAT: u32 = 65_536;
    pub const SOCK_STAT_TRANSLATED: u32 = 0;
    pub const SOCK_STAT_REFUSED: u32 = 1;
    pub const SOCK_STATS: u32 = 2;

    pub const PROG_SOCK_CONNECT4: &str = "weir_sock_connect4";
    pub const PROG_SOCK_SENDMSG4: &str = "weir_sock_sendmsg4";
    pub const PROG_SOCK_RECVMSG4: &str = "weir_sock_recvmsg4";
    pub const PROG_SOCK_GETPEERNAME4: &str = "weir_sock_getpeername4";
    /// The AF_INET6 hooks: IPv6 frontends, and IPv4 frontends reached
    /// through IPv4-mapped addresses (::ffff:a.b.c.d) of dual-stack sockets.
    pub const PROG_SOCK_CONNECT6: &str = "weir_sock_connect6";
    pub const PROG_SOCK_SENDMSG6: &str = "weir_sock_sendmsg6";
    pub const PROG_SOCK_RECVMSG6: &str = "weir_sock_recvmsg6";
    pub const PROG_SOCK_GETPEERNAME6: &str = "weir_sock_getpeername6";
    /// Every socket program, in attach order (translation before restoring).
    pub const PROGRAMS: [&str; 8] = [
        PROG_SOCK_CONNECT4,
        PROG_SOCK_SENDMSG4,
        PROG_SOCK_RECVMSG4,
        PROG_SOCK_GETPEERNAME4,
        PROG_SOCK_CONNECT6,
        PROG_SOCK_SENDMSG6,
        PROG_SOCK_RECVMSG6,
        PROG_SOCK_GETPEERNAME6,
    ];
    /// LRU: SOCK_REVNAT_V1 for sockets sent to IPv6 backends. Sockets sent
    /// to IPv4 backends through mapped addresses use SOCK_REVNAT_V1.
    pub const MAP_SOCK_REVNAT6: &str = "SOCK_REVNAT6_V1";

    /// Load-time global: which sockets are translated (SOCK_LB_*).
    pub const GLOBAL_SOCK_LB_MODE: &str = "SOCK_LB_MODE";
    /// Load-time global: the host network namespace's cookie (host-only mode).
    pub const GLOBAL_HOST_NETNS_COOKIE: &str = "HOST_NETNS_COOKIE";
    pub const SOCK_LB_ALL: u32 = 1;
    pub const SOCK_LB_HOST_ONLY: u32 = 2;

    /// A translated socket and the backend it was sent to (ports host order).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SockRevKey {
        pub cookie: u64,
        pub backend_addr: [u8; 4],
        pub backend_port: u16,
        pub _pad: u16,
    }

    /// The service address the socket asked for.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockRevValue {
        pub addr: [u8; 4],
        pub port: u16,
        pub _pad: u16,
        pub service_id: u32,
    }

    /// SockRevKey with an IPv6 backend.
    #[repr(C, align(8))]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SockRevKey6 {
        pub cookie: u64,
        pub backend_addr: [u8; 16],
        pub backend_port: u16,
        pub _pad: u16,
        pub _pad2: u32,
    }

    /// SockRevValue with an IPv6 service address.
    #[repr(C, align(8))]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockRevValue6 {
        pub addr: [u8; 16],
        pub port: u16,
        pub _pad: u16,
        pub service_id: u32,
    }

    const _: () = {
        assert!(core::mem::size_of::<SockRevKey>() == 16);
        assert!(core::mem::size_of::<SockRevValue>() == 12);
        assert!(core::mem::size_of::<SockRevKey6>() == 32);
        assert!(core::mem::size_of::<SockRevValue6>() == 24);
    };

    #[cfg(feature = "user")]
    mod pod {
        // SAFETY: repr(C), padding-free (sizes asserted above), plain integers.
        unsafe impl aya::Pod for super::SockRevKey {}
        unsafe impl aya::Pod for super::SockRevValue {}
        unsafe impl aya::Pod for super::SockRevKey6 {}
        unsafe impl aya::Pod for super::SockRevValue6 {}
    }
}
