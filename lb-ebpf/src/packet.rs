//! One interface over the two kinds of packet the programs see: a tc skb and
//! an XDP frame. The load-balancing logic is written once against it; only
//! reading, writing, checksum updates and resizing differ.
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{
        bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{csum_replace16, csum_replace2, csum_replace4, PROTO_TCP, PROTO_UDP};

use crate::{
    addr::{words6, Addr as _},
    parse::{
        direct_access, Flow, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4_OFF, TCP_HEADERS, UDP_HEADERS,
    },
    parse6::{Flow6, IP6_DST_OFF, IP6_SRC_OFF, L4_OFF6, TCP6_HEADERS, UDP6_HEADERS},
};

/// A helper's return value as a Result (negative: an errno).
#[inline(always)]
fn status(ret: i64) -> Result<(), i64> {
    if ret < 0 {
        Err(ret)
    } else {
        Ok(())
    }
}

/// Which end of a flow a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    /// The offset of its IPv4 address.
    #[inline(always)]
    fn addr_off(self) -> usize {
        match self {
            Side::Src => IP_SRC_OFF,
            Side::Dst => IP_DST_OFF,
        }
    }

    /// The offset of its port in the L4 header.
    #[inline(always)]
    fn port_off(self) -> usize {
        match self {
            Side::Src => 0,
            Side::Dst => 2,
        }
    }

    /// The offset of its IPv6 address.
    #[inline(always)]
    fn addr6_off(self) -> usize {
        match self {
            Side::Src => IP6_SRC_OFF,
            Side::Dst => IP6_DST_OFF,
        }
    }

    /// What `flow` has there: address and port.
    #[inline(always)]
    fn of<A: Copy>(self, flow: &Flow<A>) -> (A, u16) {
        match self {
            Side::Src => (flow.saddr, flow.sport),
            Side::Dst => (flow.daddr, flow.dport),
        }
    }
}

pub trait Packet {
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64>;
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64>;
    /// The packet's length in bytes.
    fn len(&self) -> u32;
    /// The first `N` bytes in place, when the packet's linear part holds
    /// them (direct packet access: no helper call per field). Valid until
    /// the next helper that changes the packet.
    fn head<const N: usize>(&self) -> Option<*mut [u8; N]>;
    /// Trims or grows the packet to `len` bytes.
    fn resize(&self, len: usize) -> Result<(), i64>;
    /// Adds `len` bytes in front of the packet (contents undefined); fails
    /// where the kind of packet has no cheap way to do it.
    fn prepend(&self, len: usize) -> Result<(), i64>;
    /// Replaces `side`'s address and port of `flow` with `addr:port`,
    /// updating the IP and L4 checksums.
    fn rewrite(&self, flow: &Flow, side: Side, addr: [u8; 4], port: u16) -> Result<(), i64>;
    /// The same for an IPv6 packet (which has no IP checksum; the L4 one
    /// covers the addresses through the pseudo-header).
    fn rewrite6(&self, flow: &Flow6, side: Side, addr: [u8; 16], port: u16) -> Result<(), i64>;
}

/// The first `N` bytes of a packet spanning `data..data_end`, if it has them.
#[inline(always)]
fn head_of<const N: usize>(data: usize, data_end: usize) -> Option<*mut [u8; N]> {
    if data + N > data_end {
        return None;
    }
    Some(data as *mut [u8; N])
}

/// A tc packet. Checksums go through the csum helpers, which also handle
/// CHECKSUM_PARTIAL skbs sent by local sockets (whose L4 checksum field holds
/// only the pseudo-header sum a software update would corrupt).
pub struct Tc<'a>(pub &'a TcContext);

impl Packet for Tc<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64> {
        self.0.load(off)
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64> {
        self.0.store(off, v, 0)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn head<const N: usize>(&self) -> Option<*mut [u8; N]> {
        head_of(self.0.data(), self.0.data_end())
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), i64> {
        // SAFETY: the skb pointer is valid for the program's run.
        let ret = unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) };
        status(ret)
    }

    #[inline(always)]
    fn prepend(&self, _len: usize) -> Result<(), i64> {
        Err(-1)
    }

    #[inline(always)]
    fn rewrite(&self, flow: &Flow, side: Side, addr: [u8; 4], port: u16) -> Result<(), i64> {
        let ctx = self.0;
        let (old_addr, old_port) = side.of(flow);
        // A UDP checksum of 0 means "none" and must stay 0.
        let mangled = if flow.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let csum_off = flow.l4_csum_off();
        let addr_changes = old_addr != addr;
        let port_changes = old_port != port;
        if addr_changes {
            let from = u32::from_ne_bytes(old_addr) as u64;
            let to = u32::from_ne_bytes(addr) as u64;
            ctx.l4_csum_replace(csum_off, from, to, BPF_F_PSEUDO_HDR as u64 | mangled | 4)?;
            ctx.l3_csum_replace(IP_CSUM_OFF, from, to, 4)?;
        }
        if port_changes {
            let from = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
            let to = u16::from_ne_bytes(port.to_be_bytes()) as u64;
            ctx.l4_csum_replace(csum_off, from, to, mangled | 2)?;
        }
        // The checksums are done; the fields themselves are written in
        // place where the headers allow it, else through the store helper.
        if direct_access() && flow.l4_off == L4_OFF {
            if let Some(h) = self.head::<UDP_HEADERS>() {
                // SAFETY: head checked that the bytes are in the packet.
                let h = unsafe { &mut *h };
                match side {
                    Side::Src => put::<UDP_HEADERS, IP_SRC_OFF, L4_OFF, 4>(
                        h,
                        addr_changes.then_some(addr),
                        port_changes.then_some(port),
                    ),
                    Side::Dst => put::<UDP_HEADERS, IP_DST_OFF, { L4_OFF + 2 }, 4>(
                        h,
                        addr_changes.then_some(addr),
                        port_changes.then_some(port),
                    ),
                }
                return Ok(());
            }
        }
        if addr_changes {
            ctx.store(side.addr_off(), &addr, 0)?;
        }
        if port_changes {
            ctx.store(flow.l4_off + side.port_off(), &port.to_be_bytes(), 0)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite6(&self, flow: &Flow6, side: Side, addr: [u8; 16], port: u16) -> Result<(), i64> {
        let ctx = self.0;
        let (old_addr, old_port) = side.of(flow);
        let mangled = if flow.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let csum_off = flow.l4_csum_off();
        let addr_changes = !old_addr.same(&addr);
        let port_changes = old_port != port;
        if addr_changes {
            let (from, to) = (words6(&old_addr), words6(&addr));
            for i in 0..4 {
                if from[i] != to[i] {
                    ctx.l4_csum_replace(
                        csum_off,
                        from[i] as u64,
                        to[i] as u64,
                        BPF_F_PSEUDO_HDR as u64 | mangled | 4,
                    )?;
                }
            }
        }
        if port_changes {
            let from = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
            let to = u16::from_ne_bytes(port.to_be_bytes()) as u64;
            ctx.l4_csum_replace(csum_off, from, to, mangled | 2)?;
        }
        if direct_access() && flow.l4_off == L4_OFF6 {
            if let Some(h) = self.head::<UDP6_HEADERS>() {
                // SAFETY: head checked that the bytes are in the packet.
                let h = unsafe { &mut *h };
                let (a, p) = (addr_changes.then_some(addr), port_changes.then_some(port));
                match side {
                    Side::Src => put::<UDP6_HEADERS, IP6_SRC_OFF, L4_OFF6, 16>(h, a, p),
                    Side::Dst => put::<UDP6_HEADERS, IP6_DST_OFF, { L4_OFF6 + 2 }, 16>(h, a, p),
                }
                return Ok(());
            }
        }
        if addr_changes {
            ctx.store(side.addr6_off(), &addr, 0)?;
        }
        if port_changes {
            ctx.store(flow.l4_off + side.port_off(), &port.to_be_bytes(), 0)?;
        }
        Ok(())
    }
}

/// Writes an address of `L` bytes (4 or 16) at `ADDR` and a port at `PORT`
/// of headers in place.
#[inline(always)]
fn put<const N: usize, const ADDR: usize, const PORT: usize, const L: usize>(
    h: &mut [u8; N],
    addr: Option<[u8; L]>,
    port: Option<u16>,
) {
    if let Some(a) = addr {
        let mut i = 0;
        while i < L {
            h[ADDR + i] = a[i];
            i += 1;
        }
    }
    if let Some(p) = port {
        let p = p.to_be_bytes();
        h[PORT] = p[0];
        h[PORT + 1] = p[1];
    }
}

/// An XDP frame. Headers at variable offsets (IP options) are read and
/// written through bpf_xdp_load_bytes and bpf_xdp_store_bytes (Linux 5.18),
/// which need no bounds dance with the verifier; the common case (no IP
/// options) is rewritten in place. Checksums are updated incrementally in
/// software (RFC 1624): XDP has no csum helpers.
///
/// The program is loaded without BPF_F_XDP_HAS_FRAGS, so a frame is always
/// one buffer: `data..data_end` is all of it.
pub struct Xdp<'a>(pub &'a XdpContext);

impl Xdp<'_> {
    /// Reads a big-endian u16 at `off`.
    #[inline(always)]
    fn load_u16(&self, off: usize) -> Result<u16, i64> {
        Ok(u16::from_be_bytes(self.load::<[u8; 2]>(off)?))
    }

    #[inline(always)]
    fn store_u16(&self, off: usize, v: u16) -> Result<(), i64> {
        self.store(off, &v.to_be_bytes())
    }

    /// Rewrites an IPv6 packet in place; false if its headers are not all
    /// in the frame (then the helpers take it).
    #[inline(always)]
    fn rewrite6_in_place(&self, flow: &Flow6, side: Side, addr: [u8; 16], port: u16) -> bool {
        let (old_addr, old_port) = side.of(flow);
        let tcp = flow.proto == PROTO_TCP;
        macro_rules! fields {
            ($n:expr, $csum:expr) => {{
                let Some(h) = self.head::<{ $n }>() else {
                    return false;
                };
                // SAFETY: head checked that the bytes are in the frame.
                let h = unsafe { &mut *h };
                match side {
                    Side::Src => update6::<{ $n }, IP6_SRC_OFF, L4_OFF6, { $csum }>(
                        h, !tcp, old_addr, addr, old_port, port,
                    ),
                    Side::Dst => update6::<{ $n }, IP6_DST_OFF, { L4_OFF6 + 2 }, { $csum }>(
                        h, !tcp, old_addr, addr, old_port, port,
                    ),
                }
            }};
        }
        if tcp {
            fields!(TCP6_HEADERS, L4_OFF6 + 16)
        } else {
            fields!(UDP6_HEADERS, L4_OFF6 + 6)
        }
        true
    }

    /// Rewrites a packet without IP options in place; false if its headers
    /// are not all in the frame (then the helpers take it).
    #[inline(always)]
    fn rewrite_in_place(&self, flow: &Flow, side: Side, addr: [u8; 4], port: u16) -> bool {
        let (old_addr, old_port) = side.of(flow);
        let tcp = flow.proto == PROTO_TCP;
        // One instance per header size and side, so every offset is a constant.
        macro_rules! fields {
            ($n:expr, $csum:expr) => {{
                let Some(h) = self.head::<{ $n }>() else {
                    return false;
                };
                // SAFETY: head checked that the bytes are in the frame.
                let h = unsafe { &mut *h };
                match side {
                    Side::Src => update::<{ $n }, IP_SRC_OFF, L4_OFF, { $csum }>(
                        h, !tcp, old_addr, addr, old_port, port,
                    ),
                    Side::Dst => update::<{ $n }, IP_DST_OFF, { L4_OFF + 2 }, { $csum }>(
                        h, !tcp, old_addr, addr, old_port, port,
                    ),
                }
            }};
        }
        if tcp {
            fields!(TCP_HEADERS, L4_OFF + 16)
        } else {
            fields!(UDP_HEADERS, L4_OFF + 6)
        }
        true
    }
}

/// The same update as the helper path of `Xdp::rewrite6`, on IPv6 headers
/// in place: the address at `ADDR`, the port at `PORT`, the L4 checksum at
/// `CSUM`.
#[inline(always)]
fn update6<const N: usize, const ADDR: usize, const PORT: usize, const CSUM: usize>(
    h: &mut [u8; N],
    udp: bool,
    old_addr: [u8; 16],
    addr: [u8; 16],
    old_port: u16,
    port: u16,
) {
    let mut l4 = u16::from_be_bytes([h[CSUM], h[CSUM + 1]]);
    // In IPv6 a UDP checksum is mandatory; 0 is still left as it came.
    let l4_none = udp && l4 == 0;
    let addr_changes = !old_addr.same(&addr);
    if addr_changes {
        l4 = csum_replace16(l4, old_addr, addr);
    }
    if old_port != port {
        l4 = csum_replace2(l4, old_port, port);
    }
    put::<N, ADDR, PORT, 16>(
        h,
        addr_changes.then_some(addr),
        (old_port != port).then_some(port),
    );
    if !l4_none {
        if udp && l4 == 0 {
            l4 = 0xffff;
        }
        let c = l4.to_be_bytes();
        h[CSUM] = c[0];
        h[CSUM + 1] = c[1];
    }
}

/// The same update as the helper path of `Xdp::rewrite`, on headers in place:
/// the address at `ADDR`, the port at `PORT`, the L4 checksum at `CSUM`.
#[inline(always)]
fn update<const N: usize, const ADDR: usize, const PORT: usize, const CSUM: usize>(
    h: &mut [u8; N],
    udp: bool,
    old_addr: [u8; 4],
    addr: [u8; 4],
    old_port: u16,
    port: u16,
) {
    let mut l4 = u16::from_be_bytes([h[CSUM], h[CSUM + 1]]);
    // A UDP checksum of 0 means "none" and stays 0.
    let l4_none = udp && l4 == 0;
    if old_addr != addr {
        let ip = u16::from_be_bytes([h[IP_CSUM_OFF], h[IP_CSUM_OFF + 1]]);
        let ip = csum_replace4(ip, old_addr, addr).to_be_bytes();
        h[IP_CSUM_OFF] = ip[0];
        h[IP_CSUM_OFF + 1] = ip[1];
        l4 = csum_replace4(l4, old_addr, addr);
    }
    if old_port != port {
        l4 = csum_replace2(l4, old_port, port);
    }
    put::<N, ADDR, PORT, 4>(
        h,
        (old_addr != addr).then_some(addr),
        (old_port != port).then_some(port),
    );
    if !l4_none {
        // In UDP a computed 0 is sent as 0xffff (0 would mean "none").
        if udp && l4 == 0 {
            l4 = 0xffff;
        }
        let c = l4.to_be_bytes();
        h[CSUM] = c[0];
        h[CSUM + 1] = c[1];
    }
}

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: v has room for size_of::<T>() bytes; the helper checks the frame bounds.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                off as u32,
                v.as_mut_ptr() as *mut _,
                size_of::<T>() as u32,
            )
        };
        status(ret)?;
        // SAFETY: the helper filled every byte.
        Ok(unsafe { v.assume_init() })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64> {
        // SAFETY: v is size_of::<T>() readable bytes; the helper checks the frame bounds.
        let ret = unsafe {
            bpf_xdp_store_bytes(
                self.0.ctx,
                off as u32,
                v as *const T as *mut _,
                size_of::<T>() as u32,
            )
        };
        status(ret)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        // One buffer (no frags): what bpf_xdp_get_buff_len would return.
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn head<const N: usize>(&self) -> Option<*mut [u8; N]> {
        head_of(self.0.data(), self.0.data_end())
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), i64> {
        let delta = len as i32 - self.len() as i32;
        // SAFETY: the context pointer is valid for the program's run.
        let ret = unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) };
        status(ret)
    }

    #[inline(always)]
    fn prepend(&self, len: usize) -> Result<(), i64> {
        // SAFETY: the context pointer is valid for the program's run.
        let ret = unsafe { bpf_xdp_adjust_head(self.0.ctx, -(len as i32)) };
        status(ret)
    }

    #[inline(always)]
    fn rewrite(&self, flow: &Flow, side: Side, addr: [u8; 4], port: u16) -> Result<(), i64> {
        if direct_access() && flow.l4_off == L4_OFF && self.rewrite_in_place(flow, side, addr, port)
        {
            return Ok(());
        }
        let (old_addr, old_port) = side.of(flow);
        let csum_off = flow.l4_csum_off();
        let mut l4 = self.load_u16(csum_off)?;
        // A UDP checksum of 0 means "none" and stays 0.
        let l4_none = flow.proto == PROTO_UDP && l4 == 0;
        if old_addr != addr {
            let ip = self.load_u16(IP_CSUM_OFF)?;
            self.store_u16(IP_CSUM_OFF, csum_replace4(ip, old_addr, addr))?;
            l4 = csum_replace4(l4, old_addr, addr);
            self.store(side.addr_off(), &addr)?;
        }
        if old_port != port {
            l4 = csum_replace2(l4, old_port, port);
            self.store(flow.l4_off + side.port_off(), &port.to_be_bytes())?;
        }
        if !l4_none {
            // In UDP a computed 0 is sent as 0xffff (0 would mean "none").
            if flow.proto == PROTO_UDP && l4 == 0 {
                l4 = 0xffff;
            }
            self.store_u16(csum_off, l4)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite6(&self, flow: &Flow6, side: Side, addr: [u8; 16], port: u16) -> Result<(), i64> {
        if direct_access()
            && flow.l4_off == L4_OFF6
            && self.rewrite6_in_place(flow, side, addr, port)
        {
            return Ok(());
        }
        let (old_addr, old_port) = side.of(flow);
        let csum_off = flow.l4_csum_off();
        let mut l4 = self.load_u16(csum_off)?;
        let l4_none = flow.proto == PROTO_UDP && l4 == 0;
        if !old_addr.same(&addr) {
            l4 = csum_replace16(l4, old_addr, addr);
            self.store(side.addr6_off(), &addr)?;
        }
        if old_port != port {
            l4 = csum_replace2(l4, old_port, port);
            self.store(flow.l4_off + side.port_off(), &port.to_be_bytes())?;
        }
        if !l4_none {
            if flow.proto == PROTO_UDP && l4 == 0 {
                l4 = 0xffff;
            }
            self.store_u16(csum_off, l4)?;
        }
        Ok(())
    }
}
