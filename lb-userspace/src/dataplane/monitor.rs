//! The datapath's event stream (MONITOR_V1) and the flag that asks the
//! kernel to report every new flow as well as drops (CONFIG_V1).
use std::path::Path;

use aya::maps::{Array, Map, MapData, MapError, RingBuf};
use lb_common::{MonitorEvent, CONFIG_FLAGS, FLAG_TRACE_FLOWS, MAP_CONFIG, MAP_MONITOR};

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

    /// The next event, if one is waiting.
    pub fn next_event(&mut self) -> Option<MonitorEvent> {
        let item = self.ring.next()?;
        if item.len() < lb_common::MONITOR_EVENT_V1_SIZE {
            return None;
        }
        // An older program's event lacks the netns cookie: read it zero-extended.
        let mut bytes = [0u8; size_of::<MonitorEvent>()];
        let n = item.len().min(bytes.len());
        bytes[..n].copy_from_slice(&item[..n]);
        // SAFETY: MonitorEvent is repr(C) of plain integers (any bytes are valid).
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<MonitorEvent>()) })
    }
}
