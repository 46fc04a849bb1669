//! What the load-balancing decision tells an entry point, for either family.

/// Where the program runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress on pod devices: every frontend, the internal view first;
    /// SNAT only for hairpin flows.
    Pod,
    /// An uplink (by ifindex), in XDP or, for what XDP leaves to it, tc:
    /// external frontends only, their external view; flows to remote
    /// backends are SNATed to the node's address.
    Uplink { ifindex: u32, xdp: bool },
}

/// What to do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand it to the stack (translated or not).
    Pass,
    /// Translated: send it straight to its egress device (fib.rs): an
    /// SNATed flow from an uplink, or a reverse-NATed reply. XDP undoes the
    /// translation with the verdict's flow and leaves the packet to tc when
    /// the FIB has no neighbour entry yet.
    Forward,
    /// No usable endpoint: answer with a TCP RST or ICMP port unreachable.
    Reject,
    /// Drop it (counted and reported already).
    Drop,
}
