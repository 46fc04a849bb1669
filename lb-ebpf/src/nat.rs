//! Address and port rewriting (DNAT, SNAT and their reversal), with the
//! checksum updates each packet kind needs (packet::Packet::rewrite).
use crate::{
    packet::Packet,
    parse::{Flow, IP_DST_OFF, IP_SRC_OFF},
};

/// Rewrites the destination to `addr:port`.
#[inline(always)]
pub fn rewrite_dst<P: Packet>(p: &P, flow: &Flow, addr: [u8; 4], port: u16) -> Result<(), i64> {
    p.rewrite(flow, IP_DST_OFF, flow.daddr, addr, 2, flow.dport, port)
}

/// Rewrites the source to `addr:port`.
#[inline(always)]
pub fn rewrite_src<P: Packet>(p: &P, flow: &Flow, addr: [u8; 4], port: u16) -> Result<(), i64> {
    p.rewrite(flow, IP_SRC_OFF, flow.saddr, addr, 0, flow.sport, port)
}
