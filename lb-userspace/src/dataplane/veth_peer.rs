//! Whether a veth uplink's far side can take the frames native XDP sends
//! into the veth (XDP_TX, or a redirect into it). A native-XDP veth puts
//! them in its peer's ring, which only a peer with NAPI drains: one with an
//! XDP program, or (Linux 5.13+) with GRO on. Otherwise the kernel drops
//! them without a word. That is the usual case in kind, k3d and other
//! Docker-based clusters: each node's uplink is a veth whose far side is a
//! bridge port with nothing on it.
//!
//! The peer is asked for over rtnetlink: its ifindex and namespace id come
//! with the uplink (IFLA_LINK, IFLA_LINK_NETNSID), and RTM_GETLINK with
//! IFLA_TARGET_NETNSID reads it in its own namespace. Only an XDP program on
//! the peer counts: GRO on it is not readable from another namespace, and on
//! this project's kernel (6.18) a bridge port with GRO on did not pass native
//! XDP_TX frames on in our test, while one with an XDP program did.
use std::io;

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// IFLA_TARGET_NETNSID (linux/if_link.h): the namespace a request is about.
const IFLA_TARGET_NETNSID: u16 = 46;

/// What native XDP on an uplink would do with the frames it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerDelivery {
    /// Not a veth: the driver sends them.
    NotVeth,
    /// A veth whose peer drains them; says why.
    Delivers(String),
    /// A veth whose peer does not, or may not; says why.
    MayDrop(String),
}

/// Looks at uplink `ifindex` (in the calling thread's namespace) and its peer.
pub fn probe(ifindex: u32) -> PeerDelivery {
    let link = match get_link(ifindex, None) {
        Ok(link) => link,
        Err(e) => return PeerDelivery::MayDrop(format!("cannot read the link: {e}")),
    };
    if !is_veth(&link) {
        return PeerDelivery::NotVeth;
    }
    let Some(peer) = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    }) else {
        return PeerDelivery::MayDrop("a veth whose peer is not known".into());
    };
    let nsid = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    });
    let peer_link = match get_link(peer, nsid) {
        Ok(l) => l,
        Err(e) => {
            return PeerDelivery::MayDrop(format!(
                "a veth whose peer (ifindex {peer}) cannot be read: {e}"
            ))
        }
    };
    let name = peer_link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("ifindex {peer}"));
    if has_xdp(&peer_link) {
        return PeerDelivery::Delivers(format!("its veth peer {name} runs a native XDP program"));
    }
    let place = if nsid.is_some() {
        " (in another network namespace)"
    } else {
        ""
    };
    PeerDelivery::MayDrop(format!(
        "its veth peer {name}{place} runs no native XDP program, so it may drop XDP_TX and redirected frames"
    ))
}

fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

/// Whether the link runs a native (driver mode) XDP program: only that
/// gives a veth NAPI; a generic-mode program does not.
fn has_xdp(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().any(|x| match x {
            LinkXdp::Attached(state) => *state == XdpAttached::Driver,
            LinkXdp::DrvProgId(id) => *id != 0,
            _ => false,
        }),
        _ => false,
    })
}

/// RTM_GETLINK of `ifindex`, in namespace `nsid` (relative to ours) if given.
fn get_link(ifindex: u32, nsid: Option<i32>) -> io::Result<LinkMessage> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    if let Some(id) = nsid {
        msg.attributes.push(LinkAttribute::Other(DefaultNla::new(
            IFLA_TARGET_NETNSID,
            id.to_ne_bytes().to_vec(),
        )));
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut reply = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(link),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected netlink answer",
        )),
    }
}
