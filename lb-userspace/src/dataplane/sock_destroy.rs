//! Ending sockets that socket LB sent to a backend that went away. A
//! connected UDP socket (a DNS stub resolver's, say) keeps its backend
//! address forever once translated at connect(), so without this it would
//! talk to a dead pod until the application gives up; ended, it gets an
//! error, reconnects, and socket LB picks a live backend.
//!
//! The sockets are found and ended with sock_diag (SOCK_DIAG_BY_FAMILY,
//! then SOCK_DESTROY, the kernel's CONFIG_INET_DIAG_DESTROY, as `ss -K`
//! does), matched by destination and by socket cookie against
//! SOCK_REVNAT_V1, so only sockets socket LB translated are touched. UDP
//! sockets go when their backend goes or becomes terminating; TCP sockets
//! only when the backend is deleted outright (a terminating pod may still
//! finish its connections). sock_diag sees the agent's network namespace:
//! host processes and hostNetwork pods, the sockets socket LB exists for.
//! Sockets of pods in other namespaces (`--socket-lb=all`) are not reached
//! yet; bpf_sock_destroy from socket iterators would reach them.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
};

use lb_common::{BACKEND_TERMINATING, PROTO_TCP, PROTO_UDP};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// A backend whose sockets are to be ended: address, port (host order), protocol.
pub type Endpoint = (IpAddr, u16, u8);

use crate::frontend::Backend;

/// The backends of `before` that `after` no longer has (all their sockets
/// end), and those `after` has only as terminating while `before` had them
/// active (their UDP sockets end). Pure.
pub fn gone(before: &BTreeMap<u32, Backend>, after: &BTreeMap<u32, Backend>) -> Vec<Endpoint> {
    let key = |b: &Backend| (b.addr, b.port, b.proto);
    let now: BTreeMap<Endpoint, bool> = after.values().fold(BTreeMap::new(), |mut m, b| {
        let active = b.state & BACKEND_TERMINATING == 0;
        *m.entry(key(b)).or_insert(false) |= active;
        m
    });
    let mut out: BTreeSet<Endpoint> = BTreeSet::new();
    for b in before.values() {
        let k = key(b);
        match now.get(&k) {
            None => {
                out.insert(k);
            }
            Some(false) if b.state & BACKEND_TERMINATING == 0 && b.proto == PROTO_UDP => {
                out.insert(k);
            }
            Some(_) => {}
        }
    }
    out.into_iter().collect()
}

/// Ends the sockets of this network namespace connected to one of `gone`
/// that socket LB sent there: `translated` holds (cookie, backend address,
/// port) from SOCK_REVNAT_V1. Returns how many were ended, and why others
/// could not be (e.g. a kernel without CONFIG_INET_DIAG_DESTROY).
pub fn end_sockets(
    gone: &[Endpoint],
    translated: &BTreeSet<(u64, IpAddr, u16)>,
) -> io::Result<(usize, Vec<String>)> {
    let mut ended = 0;
    let mut failed = Vec::new();
    for proto in [PROTO_UDP, PROTO_TCP] {
        if !gone.iter().any(|(_, _, p)| *p == proto) {
            continue;
        }
        for family in [AF_INET, AF_INET6] {
            for id in dump(family, proto)? {
                // An AF_INET6 socket sent to an IPv4 backend through a
                // mapped address (::ffff:a.b.c.d) has it as its destination.
                let (dst, port) = (id.destination_address.to_canonical(), id.destination_port);
                let cookie = u64::from_ne_bytes(id.cookie);
                let wanted =
                    gone.contains(&(dst, port, proto)) && translated.contains(&(cookie, dst, port));
                if wanted {
                    match destroy(family, proto, id) {
                        Ok(()) => ended += 1,
                        Err(e) => failed.push(format!(
                            "{} (cookie {cookie}): {e}",
                            std::net::SocketAddr::new(dst, port)
                        )),
                    }
                }
            }
        }
    }
    Ok((ended, failed))
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

fn request(family: u8, proto: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: proto,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    })
}

/// Every socket of `family` (AF_INET or AF_INET6) and `proto` in this namespace.
fn dump(family: u8, proto: u8) -> io::Result<Vec<SocketId>> {
    let s = socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let any = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut msg = NetlinkMessage::new(header, request(family, proto, any).into());
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    // Bounded: a dump ends with NLMSG_DONE; 10k reads of 64 KiB is far more than any host has.
    for _ in 0..10_000 {
        let n = s.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(r.header.socket_id)
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
    Err(io::Error::other(
        "the socket dump did not end after 10,000 reads",
    ))
}

/// SOCK_DESTROY of one socket, by its full id (cookie included).
fn destroy(family: u8, proto: u8, id: SocketId) -> io::Result<()> {
    let s = socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(SockDiagDestroy::new(request(family, proto, id))),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0)?;
    let mut rx = vec![0u8; 4096];
    let n = s.recv(&mut &mut rx[..], 0)?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::BACKEND_ACTIVE;

    fn backend(last: u8, proto: u8, state: u8) -> Backend {
        Backend {
            addr: [198, 18, 1, last].into(),
            port: 53,
            proto,
            state,
        }
    }

    #[test]
    fn deleted_backends_end_all_sockets_and_terminating_ones_only_udp() {
        let before = BTreeMap::from([
            (1, backend(11, PROTO_UDP, BACKEND_ACTIVE)),
            (2, backend(12, PROTO_UDP, BACKEND_ACTIVE)),
            (3, backend(13, PROTO_TCP, BACKEND_ACTIVE)),
            (4, backend(14, PROTO_TCP, BACKEND_ACTIVE)),
            (5, backend(15, PROTO_UDP, BACKEND_ACTIVE)),
        ]);
        let after = BTreeMap::from([
            // 11 deleted; 12 terminating (UDP: ends); 13 deleted; 14 terminating (TCP: stays).
            (2, backend(12, PROTO_UDP, BACKEND_TERMINATING)),
            (4, backend(14, PROTO_TCP, BACKEND_TERMINATING)),
            // 15 moved to another id, still active: stays.
            (9, backend(15, PROTO_UDP, BACKEND_ACTIVE)),
        ]);
        let ip = |last| IpAddr::from([198, 18, 1, last]);
        assert_eq!(
            gone(&before, &after),
            vec![
                (ip(11), 53, PROTO_UDP),
                (ip(12), 53, PROTO_UDP),
                (ip(13), 53, PROTO_TCP),
            ]
        );
        assert!(gone(&after, &after).is_empty());
    }
}
