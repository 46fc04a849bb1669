//! The datapath's event stream (MONITOR_V1) and the flag that asks the
//! kernel to report every new flow as well as drops (CONFIG_V1).
use std::{net::IpAddr, path::Path};

use aya::maps::{Array, Map, MapData, MapError, RingBuf};
use lb_common::{
    MonitorEvent, MonitorEvent6, CONFIG_FLAGS, FLAG_TRACE_FLOWS, MAP_CONFIG, MAP_MONITOR,
};

use super::maps::MapsError;

pub struct Monitor {
    ring: RingBuf<MapData>,
    config: Array<MapData, u32>,
}

fn open(dir: &Path, name: &'static str) -> Result<Map, MapsError> {
    let data =
        MapData::from_pin(dir.join(name)).map_err(|source| MapsError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| MapsError::Map { name, source })
}

impl Monitor {
    /// Opens the pinned event ring and flags under `bpffs`.
    pub fn open(bpffs: &Path) -> Result<Self, MapsError> {
        let err = |name: &'static str| move |source: MapError| MapsError::Map { name, source };
        Ok(Self {
            ring: RingBuf::try_from(open(bpffs, MAP_MONITOR)?).map_err(err(MAP_MONITOR))?,
            config: Array::try_from(open(bpffs, MAP_CONFIG)?).map_err(err(MAP_CONFIG))?,
        })
    }

    /// Turns the report of every new flow on or off.
    pub fn trace_flows(&mut self, on: bool) -> Result<(), MapsError> {
        let flags = self.config.get(&CONFIG_FLAGS, 0).unwrap_or(0);
        let flags = if on {
            flags | FLAG_TRACE_FLOWS
        } else {
            flags & !FLAG_TRACE_FLOWS
        };
        self.config
            .set(CONFIG_FLAGS, flags, 0)
            .map_err(|source| MapsError::Map {
                name: MAP_CONFIG,
                source,
            })
    }

    /// The next event, if one is waiting. The record's size tells the
    /// family: MonitorEvent6 for IPv6 flows, MonitorEvent (with or without
    /// the netns cookie an older agent's programs lack) for IPv4.
    pub fn next_event(&mut self) -> Option<Event> {
        let item = self.ring.next()?;
        decode(&item)
    }
}

/// A `weir monitor` event of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub nat_addr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub nat_port: u16,
    pub proto: u8,
    pub kind: u8,
    pub reason: u8,
    pub service_id: u32,
    pub netns_cookie: u64,
}

/// Reads `T` from the first bytes of `item`, zero-extended.
fn read<T: Copy + Default>(item: &[u8]) -> T {
    let mut value = T::default();
    let n = item.len().min(size_of::<T>());
    // SAFETY: T is a repr(C) map type of plain integers (any bytes are
    // valid); at most size_of::<T>() bytes are copied into it.
    unsafe {
        std::ptr::copy_nonoverlapping(item.as_ptr(), (&mut value as *mut T).cast::<u8>(), n);
    }
    value
}

/// The event of a MonitorEvent or MonitorEvent6 (the same field names).
macro_rules! event_of {
    ($e:expr) => {{
        let e = $e;
        Event {
            saddr: e.saddr.into(),
            daddr: e.daddr.into(),
            nat_addr: e.nat_addr.into(),
            sport: e.sport,
            dport: e.dport,
            nat_port: e.nat_port,
            proto: e.proto,
            kind: e.kind,
            reason: e.reason,
            service_id: e.service_id,
            netns_cookie: e.netns_cookie,
        }
    }};
}

/// One ring buffer record as an event; None for a record of no known size.
pub fn decode(item: &[u8]) -> Option<Event> {
    match item.len() {
        n if n == size_of::<MonitorEvent6>() => Some(event_of!(read::<MonitorEvent6>(item))),
        n if n == size_of::<MonitorEvent>() || n == lb_common::MONITOR_EVENT_V1_SIZE => {
            Some(event_of!(read::<MonitorEvent>(item)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: a repr(C) value read as its bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn records_of_each_size_decode_to_their_family() {
        let v6 = MonitorEvent6 {
            saddr: "2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            daddr: "2001:db8:1::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            nat_addr: "2001:db8:2::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            sport: 40000,
            dport: 80,
            nat_port: 8080,
            proto: 6,
            kind: lb_common::EVENT_FLOW,
            service_id: 9,
            ..Default::default()
        };
        let e = decode(&bytes(&v6)).unwrap();
        assert_eq!(e.saddr.to_string(), "2001:db8::7");
        assert_eq!(e.nat_addr.to_string(), "2001:db8:2::5");
        assert_eq!((e.sport, e.nat_port, e.service_id), (40000, 8080, 9));

        let v4 = MonitorEvent {
            saddr: [198, 18, 0, 7],
            daddr: [198, 18, 1, 1],
            nat_addr: [198, 18, 2, 5],
            sport: 1,
            dport: 2,
            nat_port: 3,
            netns_cookie: 77,
            ..Default::default()
        };
        let all = bytes(&v4);
        let e = decode(&all).unwrap();
        assert_eq!(e.daddr.to_string(), "198.18.1.1");
        assert_eq!(e.netns_cookie, 77);
        // An older agent's record, without the cookie.
        let old = decode(&all[..lb_common::MONITOR_EVENT_V1_SIZE]).unwrap();
        assert_eq!(
            (old.nat_addr.to_string().as_str(), old.netns_cookie),
            ("198.18.2.5", 0)
        );
        assert_eq!(decode(&all[..20]), None);
    }
}
