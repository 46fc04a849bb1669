//! Address and port rewriting (DNAT, SNAT and their reversal), with the
//! checksum updates each packet kind needs (packet::Packet::rewrite and
//! rewrite6, through the family's `fam::rewrite`).
use crate::packet::{Packet, Side};

use super::fam::{self, Addr, Flow};

/// Rewrites the destination to `addr:port`.
#[inline(always)]
pub fn rewrite_dst<P: Packet>(p: &P, flow: &Flow, addr: Addr, port: u16) -> Result<(), i64> {
    fam::rewrite(p, flow, Side::Dst, addr, port)
}

/// Rewrites the source to `addr:port`.
#[inline(always)]
pub fn rewrite_src<P: Packet>(p: &P, flow: &Flow, addr: Addr, port: u16) -> Result<(), i64> {
    fam::rewrite(p, flow, Side::Src, addr, port)
}
