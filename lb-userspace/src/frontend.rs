//! A frontend key and a backend of either address family: what `translate`
//! produces and the sync planner works on. Only the dataplane's map writer
//! turns them into the kernel's types (lb_common's IPv4 or IPv6 structs), so
//! everything above it handles both families with one code path.
use std::{fmt, net::IpAddr};

use crate::model::{Family, Protocol};

/// A frontend: the address, port and protocol a client connects to, and the
/// scope of the entry (lb_common::SCOPE_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

impl FrontendKey {
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}

/// `198.18.0.1:80/TCP`, `[2001:db8::1]:80/TCP` (the scope is not shown).
impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.addr, self.port),
            Protocol::name_of(self.proto)
        )
    }
}

/// A backend: an endpoint address and target port, and its state bits
/// (lb_common::BACKEND_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub state: u8,
}

impl Backend {
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}
