//! One interface over the two kinds of packet the programs see: a tc skb and
//! an XDP frame. The load-balancing logic is written once against it; only
//! reading, writing, checksum updates and resizing differ.
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{
        bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{csum_replace2, csum_replace4, PROTO_UDP};

use crate::parse::{Flow, IP_CSUM_OFF};

pub trait Packet {
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64>;
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64>;
    /// The packet's length in bytes.
    fn len(&self) -> u32;
    /// Trims or grows the packet to `len` bytes.
    fn resize(&self, len: usize) -> Result<(), i64>;
    /// Adds `len` bytes in front of the packet (contents undefined); fails
    /// where the kind of packet has no cheap way to do it.
    fn prepend(&self, len: usize) -> Result<(), i64>;
    /// Replaces the address at `addr_off` and the port at `port_off` (in the
    /// L4 header) of `flow`, updating the IP and L4 checksums.
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &self,
        flow: &Flow,
        addr_off: usize,
        old_addr: [u8; 4],
        new_addr: [u8; 4],
        port_off: usize,
        old_port: u16,
        new_port: u16,
    ) -> Result<(), i64>;
}

/// A tc packet. Checksums go through the csum helpers, which also handle
/// CHECKSUM_PARTIAL skbs sent by local sockets.
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
    fn resize(&self, len: usize) -> Result<(), i64> {
        // SAFETY: the skb pointer is valid for the program's run.
        let ret = unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) };
        if ret < 0 {
            Err(ret)
        } else {
            Ok(())
        }
    }

    #[inline(always)]
    fn prepend(&self, _len: usize) -> Result<(), i64> {
        Err(-1)
    }

    #[inline(always)]
    fn rewrite(
        &self,
        flow: &Flow,
        addr_off: usize,
        old_addr: [u8; 4],
        new_addr: [u8; 4],
        port_off: usize,
        old_port: u16,
        new_port: u16,
    ) -> Result<(), i64> {
        let ctx = self.0;
        // A UDP checksum of 0 means "none" and must stay 0.
        let mangled = if flow.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let csum_off = flow.l4_csum_off();
        if old_addr != new_addr {
            let from = u32::from_ne_bytes(old_addr) as u64;
            let to = u32::from_ne_bytes(new_addr) as u64;
            ctx.l4_csum_replace(csum_off, from, to, BPF_F_PSEUDO_HDR as u64 | mangled | 4)?;
            ctx.l3_csum_replace(IP_CSUM_OFF, from, to, 4)?;
            ctx.store(addr_off, &new_addr, 0)?;
        }
        if old_port != new_port {
            let from = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
            let to = u16::from_ne_bytes(new_port.to_be_bytes()) as u64;
            ctx.l4_csum_replace(csum_off, from, to, mangled | 2)?;
            ctx.store(flow.l4_off + port_off, &new_port.to_be_bytes(), 0)?;
        }
        Ok(())
    }
}

/// An XDP frame, read and written through bpf_xdp_load_bytes and
/// bpf_xdp_store_bytes (Linux 5.18): like the tc path, variable header
/// offsets need no bounds dance with the verifier. Checksums are updated
/// incrementally in software (RFC 1624): XDP has no csum helpers.
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
        if ret < 0 {
            return Err(ret);
        }
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
        if ret < 0 {
            Err(ret)
        } else {
            Ok(())
        }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as u32 }
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), i64> {
        let delta = len as i32 - self.len() as i32;
        // SAFETY: the context pointer is valid for the program's run.
        let ret = unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) };
        if ret < 0 {
            Err(ret)
        } else {
            Ok(())
        }
    }

    #[inline(always)]
    fn prepend(&self, len: usize) -> Result<(), i64> {
        // SAFETY: the context pointer is valid for the program's run.
        let ret = unsafe { bpf_xdp_adjust_head(self.0.ctx, -(len as i32)) };
        if ret < 0 {
            Err(ret)
        } else {
            Ok(())
        }
    }

    #[inline(always)]
    fn rewrite(
        &self,
        flow: &Flow,
        addr_off: usize,
        old_addr: [u8; 4],
        new_addr: [u8; 4],
        port_off: usize,
        old_port: u16,
        new_port: u16,
    ) -> Result<(), i64> {
        let csum_off = flow.l4_csum_off();
        let mut l4 = self.load_u16(csum_off)?;
        // A UDP checksum of 0 means "none" and stays 0.
        let l4_none = flow.proto == PROTO_UDP && l4 == 0;
        if old_addr != new_addr {
            let ip = self.load_u16(IP_CSUM_OFF)?;
            self.store_u16(IP_CSUM_OFF, csum_replace4(ip, old_addr, new_addr))?;
            l4 = csum_replace4(l4, old_addr, new_addr);
            self.store(addr_off, &new_addr)?;
        }
        if old_port != new_port {
            l4 = csum_replace2(l4, old_port, new_port);
            self.store(flow.l4_off + port_off, &new_port.to_be_bytes())?;
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
}
