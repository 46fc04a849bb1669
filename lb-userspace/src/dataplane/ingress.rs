//! The ingress hand-off: loads the sk_lookup program and attaches it to the
//! agent's network namespace (the node's), puts the proxy's listening
//! sockets into its socket map, and keeps its address map equal to the
//! ingress addresses. The link and maps belong to this agent process: when it
//! exits they go (its sockets are gone anyway) and the next agent attaches
//! anew, so a stale program never steers to nothing.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::{
    maps::{HashMap, MapData, SockMap},
    programs::SkLookup,
};
use lb_common::ingress::{
    IngressKey, MAP_INGRESS_ADDRS, MAP_INGRESS_SOCKETS, PROG_INGRESS_LOOKUP, SOCKETS_IPV6,
    SOCKET_HTTP, SOCKET_HTTPS, SOCKET_STREAM,
};

use super::Dataplane;
use crate::proxy::Listeners;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("program {PROG_INGRESS_LOOKUP}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("opening this network namespace: {0}")]
    Netns(std::io::Error),
}

/// The attached hand-off and the destinations it takes over.
pub struct IngressHandoff {
    addrs: HashMap<MapData, IngressKey, u32>,
    sockets: SockMap<MapData>,
    current: BTreeMap<IngressKey, u32>,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> IngressError {
    move |source| IngressError::Map { name, source }
}

impl IngressHandoff {
    /// Loads and attaches the program to the current network namespace.
    pub fn attach(dataplane: &mut Dataplane) -> Result<Self, IngressError> {
        let ebpf = &mut dataplane.ebpf;
        let prog: &mut SkLookup = ebpf
            .program_mut(PROG_INGRESS_LOOKUP)
            .ok_or(aya::programs::ProgramError::NotLoaded)?
            .try_into()?;
        super::loader::load_retrying(|| prog.load())?;
        let netns = std::fs::File::open("/proc/self/ns/net").map_err(IngressError::Netns)?;
        // The link stays with the program in `ebpf`, which lives as long as the agent.
        prog.attach(&netns)?;
        let addrs = ebpf
            .take_map(MAP_INGRESS_ADDRS)
            .ok_or(IngressError::MissingMap(MAP_INGRESS_ADDRS))?;
        let sockets = ebpf
            .take_map(MAP_INGRESS_SOCKETS)
            .ok_or(IngressError::MissingMap(MAP_INGRESS_SOCKETS))?;
        Ok(Self {
            addrs: HashMap::try_from(addrs).map_err(map_err(MAP_INGRESS_ADDRS))?,
            sockets: SockMap::try_from(sockets).map_err(map_err(MAP_INGRESS_SOCKETS))?,
            current: BTreeMap::new(),
        })
    }

    /// The listening sockets connections are handed to: IPv4 ones at
    /// SOCKET_*, IPv6 ones at SOCKET_* + SOCKETS_IPV6.
    pub fn set_sockets(&mut self, listeners: &Listeners) -> Result<(), IngressError> {
        let families = [
            (0, Some(&listeners.v4)),
            (SOCKETS_IPV6, listeners.v6.as_ref()),
        ];
        for (offset, set) in families {
            let Some(set) = set else { continue };
            for (index, socket) in [
                (SOCKET_STREAM, &set.stream),
                (SOCKET_HTTP, &set.http),
                (SOCKET_HTTPS, &set.https),
            ] {
                self.sockets
                    .set(index + offset, socket, 0)
                    .map_err(map_err(MAP_INGRESS_SOCKETS))?;
            }
        }
        Ok(())
    }

    /// Takes over exactly `wanted` (new ones first, then the ones no longer
    /// wanted are released).
    pub fn set_entries(&mut self, wanted: &[(IngressKey, u32)]) -> Result<(), IngressError> {
        for (key, index) in wanted {
            if self.current.get(key) != Some(index) {
                self.addrs
                    .insert(key, index, 0)
                    .map_err(map_err(MAP_INGRESS_ADDRS))?;
                self.current.insert(*key, *index);
            }
        }
        let stale: Vec<IngressKey> = self
            .current
            .keys()
            .filter(|k| !wanted.iter().any(|(w, _)| w == *k))
            .copied()
            .collect();
        for key in stale {
            self.addrs
                .remove(&key)
                .map_err(map_err(MAP_INGRESS_ADDRS))?;
            self.current.remove(&key);
        }
        Ok(())
    }
}

/// The map entries for `addresses` on both ports.
pub fn keys(
    addresses: &BTreeSet<IpAddr>,
    http_port: u16,
    https_port: u16,
) -> Vec<(IngressKey, u32)> {
    addresses
        .iter()
        .flat_map(|a| {
            [(http_port, SOCKET_HTTP), (https_port, SOCKET_HTTPS)]
                .map(|(port, index)| (IngressKey::new(*a, port), index))
        })
        .collect()
}
