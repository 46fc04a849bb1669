//! Address and port rewriting (DNAT, SNAT and their reversal), with the
//! checksum updates each packet kind needs (packet::Packet::rewrite).
use crate::{
    packet::{Packet, Side},
    parse::Flow,
};

/// Rewrites the destination to `addr:port`.
#[inline(always)]
pub fn rewrite_dst<P: Packet>(p: &P, flow: &Flow, addr: [u8; 4], port: u16) -> Result<(), i64> {
    p.rewrite(flow, Side::Dst, addr, port)
}

/// Rewrites the source to `addr:port`.
#[inline(always)]
pub fn rewrite_src<P: Packet>(p: &P, flow: &Flow, addr: [u8; 4], port: u16) -> Result<(), i64> {
    p.rewrite(flow, Side::Src, addr, port)
}
