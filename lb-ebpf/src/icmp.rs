//! ICMP errors about translated flows, translated back (as conntrack NAT
//! does for kube-proxy), so that path MTU discovery and unreachable errors
//! work through a service. Included by v4.rs and v6.rs.
//!
//! The quoted packet's reverse is the flow the error travels with, so its
//! conntrack entry says what to do:
//! - a reply entry: the quoted packet went client -> backend (translated),
//!   and the error goes back to the client, who must see the packet it
//!   sent: client -> frontend. The error's own source becomes the frontend
//!   when the backend itself sent it; with SNAT the error comes to the
//!   node's address and goes on to the client.
//! - a forward entry: the quoted packet went frontend -> client (a reply,
//!   reverse-NATed), and the error goes to the backend, which must see
//!   backend -> client (or -> the node's SNAT address).
//!
//! Every checksum follows incrementally: the outer IPv4 header's, the
//! quoted IPv4 header's, the quoted L4 one when it is quoted, and the ICMP
//! checksum over all of them (ICMPv6's also over the outer addresses).
use lb_common::{csum_replace2, CT_REPLY, PROTO_UDP};

use crate::{
    addr::Addr as _,
    packet::{Packet, Side},
    parse::ETH_HLEN,
    quoted::Quoted,
    verdict::Action,
};

use super::{
    conntrack,
    fam::{self, Addr},
};

#[inline(always)]
fn word<P: Packet>(p: &P, off: usize) -> Result<u16, i64> {
    p.load::<[u8; 2]>(off).map(u16::from_be_bytes)
}

#[inline(always)]
fn put_word<P: Packet>(p: &P, off: usize, v: u16) -> Result<(), i64> {
    p.store(off, &v.to_be_bytes())
}

/// Replaces the checksum word at `off` by what `update` makes of it; the
/// ICMP checksum `icmp` follows when the word is inside the ICMP message.
#[inline(always)]
fn update<P: Packet>(
    p: &P,
    off: usize,
    icmp: Option<&mut u16>,
    update: impl FnOnce(u16) -> u16,
) -> Result<(), i64> {
    let old = word(p, off)?;
    let new = update(old);
    put_word(p, off, new)?;
    if let Some(icmp) = icmp {
        *icmp = csum_replace2(*icmp, old, new);
    }
    Ok(())
}

/// Rewrites one side of the quoted packet.
#[inline(always)]
fn set_inner<P: Packet>(
    p: &P,
    q: &Quoted<Addr>,
    side: Side,
    addr: Addr,
    port: u16,
    icmp: &mut u16,
) -> Result<(), i64> {
    let (old, old_port, addr_off, port_off) = match side {
        Side::Src => (q.inner.saddr, q.inner.sport, fam::IP_SRC, 0),
        Side::Dst => (q.inner.daddr, q.inner.dport, fam::IP_DST, 2),
    };
    p.store(q.inner_ip + addr_off, &addr)?;
    *icmp = Addr::csum_replace(*icmp, old, addr);
    if let Some(csum) = fam::IP_CSUM {
        update(p, q.inner_ip + csum, Some(icmp), |c| {
            Addr::csum_replace(c, old, addr)
        })?;
    }
    put_word(p, q.inner.l4_off + port_off, port)?;
    *icmp = csum_replace2(*icmp, old_port, port);
    // The quoted L4 checksum, when the error quotes it (a quoted UDP
    // checksum of 0 means none was computed: it stays 0).
    let csum_off = q.inner.l4_csum_off();
    if csum_off + 2 <= p.len() as usize {
        let udp = q.inner.proto == PROTO_UDP;
        if !(udp && word(p, csum_off)? == 0) {
            update(p, csum_off, Some(icmp), |c| {
                let n = csum_replace2(Addr::csum_replace(c, old, addr), old_port, port);
                if udp && n == 0 {
                    0xffff
                } else {
                    n
                }
            })?;
        }
    }
    Ok(())
}

/// Rewrites one address of the error's own header.
#[inline(always)]
fn set_outer<P: Packet>(
    p: &P,
    side: Side,
    old: Addr,
    addr: Addr,
    icmp: &mut u16,
) -> Result<(), i64> {
    let off = match side {
        Side::Src => fam::IP_SRC,
        Side::Dst => fam::IP_DST,
    };
    p.store(ETH_HLEN + off, &addr)?;
    if let Some(csum) = fam::IP_CSUM {
        update(p, ETH_HLEN + csum, None, |c| {
            Addr::csum_replace(c, old, addr)
        })?;
    }
    if fam::ICMP_PSEUDO_HEADER {
        *icmp = Addr::csum_replace(*icmp, old, addr);
    }
    Ok(())
}

/// What `find` learnt, for the rewrite: the error, and its flow's
/// conntrack entry's addresses (copied: a map value pointer cannot be kept).
pub struct Relay {
    pub q: Quoted<Addr>,
    pub nat_addr: Addr,
    pub snat_addr: Addr,
    pub nat_port: u16,
    pub snat_port: u16,
}

/// Where an ICMP error about a tracked flow goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Towards {
    /// Not an ICMP error about a tracked flow: pass it as it is.
    Nowhere,
    Client,
    Backend,
}

/// The first phase (a subprogram of its own, as the rewrites are: the three
/// do not fit one frame): parses an ICMP error into per-CPU scratch space
/// and looks up the flow it travels with, the quoted packet's reverse.
#[inline(always)]
pub fn find<P: Packet>(p: &P) -> Towards {
    let Some(r) = crate::maps::scratch::<Relay>() else {
        return Towards::Nowhere;
    };
    if !fam::icmp_error(p, &mut r.q) {
        return Towards::Nowhere;
    }
    let q = &r.q;
    let key = conntrack::tuple(
        q.inner.daddr,
        q.inner.saddr,
        q.inner.dport,
        q.inner.sport,
        q.inner.proto,
    );
    let Some(ct) = conntrack::lookup(&key) else {
        return Towards::Nowhere;
    };
    r.nat_addr = ct.nat_addr;
    r.nat_port = ct.nat_port;
    r.snat_addr = ct.snat_addr;
    r.snat_port = ct.snat_port;
    if ct.kind == CT_REPLY {
        Towards::Client
    } else {
        Towards::Backend
    }
}

/// Writes the ICMP checksum; a failed write anywhere drops the error.
#[inline(always)]
fn finish<P: Packet>(p: &P, q: &Quoted<Addr>, written: Result<u16, i64>) -> Action {
    match written.and_then(|icmp| put_word(p, q.icmp + 2, icmp)) {
        Ok(()) => Action::Pass,
        Err(_) => {
            crate::maps::count_drop(lb_common::DROP_REWRITE_FAILED);
            Action::Drop
        }
    }
}

/// The error goes back to the client of the quoted (translated) packet.
#[inline(always)]
pub fn to_client<P: Packet>(p: &P) -> Action {
    let Some(r) = crate::maps::scratch::<Relay>() else {
        return Action::Pass;
    };
    let q = &r.q;
    let written = word(p, q.icmp + 2).and_then(|mut icmp| {
        set_inner(p, q, Side::Dst, r.nat_addr, r.nat_port, &mut icmp)?;
        if q.saddr.same(&q.inner.daddr) {
            // The backend itself sent it: from the frontend.
            set_outer(p, Side::Src, q.saddr, r.nat_addr, &mut icmp)?;
        }
        if !r.snat_addr.is_zero() {
            set_inner(p, q, Side::Src, r.snat_addr, r.snat_port, &mut icmp)?;
            set_outer(p, Side::Dst, q.daddr, r.snat_addr, &mut icmp)?;
        }
        Ok(icmp)
    });
    finish(p, q, written)
}

/// The error goes to the backend that sent the quoted (reverse-NATed) reply.
#[inline(always)]
pub fn to_backend<P: Packet>(p: &P) -> Action {
    let Some(r) = crate::maps::scratch::<Relay>() else {
        return Action::Pass;
    };
    let q = &r.q;
    let written = word(p, q.icmp + 2).and_then(|mut icmp| {
        set_inner(p, q, Side::Src, r.nat_addr, r.nat_port, &mut icmp)?;
        set_outer(p, Side::Dst, q.daddr, r.nat_addr, &mut icmp)?;
        if !r.snat_addr.is_zero() {
            set_inner(p, q, Side::Dst, r.snat_addr, r.snat_port, &mut icmp)?;
        }
        Ok(icmp)
    });
    finish(p, q, written)
}
