//! `weir bpf lb list`, `weir bpf ct list` and `weir status`: what the pinned
//! maps and links hold, as rows for tables, JSON or YAML. Reading is split
//! from rendering so that tests compare rows with the maps directly.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use aya::maps::{IterableMap, MapData};
use lb_common::{
    CT_FORWARD, CT_REPLY, MAX_AFFINITY, MAX_BACKENDS, MAX_CT, MAX_SERVICES, MAX_SLOTS,
};
use serde::Serialize;

use crate::{
    dataplane::{ct_gc::CtEntry, maps::Maps},
    model::Protocol,
};

fn proto(n: u8) -> String {
    Protocol::name_of(n)
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrontendRow {
    pub frontend: String,
    pub scope: String,
    pub service_id: u32,
    pub count: u32,
    pub algorithm: String,
    pub affinity_timeout: u32,
    pub maglev_table: Option<u32>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendRow {
    pub id: u32,
    pub backend: String,
    pub state: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RevNatRow {
    pub service_id: u32,
    pub frontend: String,
}

/// The raw load-balancing maps, like `cilium bpf lb list`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LbTables {
    pub frontends: Vec<FrontendRow>,
    pub backends: Vec<BackendRow>,
    pub revnat: Vec<RevNatRow>,
}

pub fn lb_tables(maps: &Maps) -> LbTables {
    let mut t = LbTables::default();
    for (k, v) in maps.frontends() {
        t.frontends.push(FrontendRow {
            frontend: k.to_string(),
            scope: if k.scope == lb_common::SCOPE_INTERNAL {
                "internal"
            } else {
                "external"
            }
            .into(),
            service_id: v.id,
            count: v.count,
            algorithm: crate::translate::algorithm_name(v.algorithm).into(),
            affinity_timeout: v.affinity_timeout,
            maglev_table: (v.maglev_table != lb_common::NO_MAGLEV_TABLE).then_some(v.maglev_table),
        });
    }
    for (id, b) in maps.backend_entries() {
        t.backends.push(BackendRow {
            id,
            backend: format!("{}/{}", SocketAddr::new(b.addr, b.port), proto(b.proto)),
            state: backend_state(b.state).into(),
        });
    }
    for (id, r) in maps.revnat_entries() {
        t.revnat.push(RevNatRow {
            service_id: id,
            frontend: r.to_string(),
        });
    }
    t.frontends.sort_by_key(|r| r.service_id);
    t.backends.sort_by_key(|r| r.id);
    t.revnat.sort_by_key(|r| r.service_id);
    t
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CtRow {
    pub kind: String,
    pub tuple: String,
    pub nat: String,
    pub service_id: u32,
    pub backend_id: u32,
    /// Seconds since the entry last saw a packet.
    pub age_seconds: u64,
}

/// CLOCK_MONOTONIC in nanoseconds, the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the provided timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A conntrack entry of either family as a row.
pub fn ct_row<K: CtEntry>(k: &K, v: &K::Value, now_ns: u64) -> CtRow {
    let (s, sp) = k.source();
    let (d, dp) = k.destination();
    let (n, np) = K::nat(v);
    let (service_id, backend_id) = K::ids(v);
    CtRow {
        kind: match K::kind(v) {
            CT_FORWARD => "forward".into(),
            CT_REPLY => "reply".into(),
            other => format!("kind {other}"),
        },
        tuple: format!(
            "{} -> {}/{}",
            SocketAddr::new(s, sp),
            SocketAddr::new(d, dp),
            proto(k.proto())
        ),
        nat: SocketAddr::new(n, np).to_string(),
        service_id,
        backend_id,
        age_seconds: now_ns.saturating_sub(K::last_seen_ns(v)) / 1_000_000_000,
    }
}

pub fn ct_rows(maps: &Maps) -> Vec<CtRow> {
    let now = monotonic_ns();
    let v6 = maps.ct6.iter().filter_map(Result::ok);
    let mut rows: Vec<CtRow> = maps
        .ct
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| ct_row(&k, &v, now))
        .chain(v6.map(|(k, v)| ct_row(&k, &v, now)))
        .collect();
    rows.sort_by(|a, b| a.tuple.cmp(&b.tuple));
    rows
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    pub bpffs: String,
    /// Devices with a pinned tc link (program attached at tc ingress, TCX).
    pub devices: Vec<String>,
    /// Uplinks with a pinned XDP link, and its mode (native or generic).
    pub xdp: Vec<XdpDevice>,
    pub maps: Vec<MapFill>,
    /// What the running agent says (last sync, source); None when no agent answered.
    pub agent: Option<crate::control::AgentStatus>,
    /// Why no agent answered.
    pub agent_error: Option<String>,
}

/// A backend's state as the CLI shows it (the BACKEND_LOCAL bit aside).
pub fn backend_state(state: u8) -> &'static str {
    if state & lb_common::BACKEND_TERMINATING != 0 {
        "terminating"
    } else {
        "active"
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct XdpDevice {
    pub device: String,
    pub mode: String,
}

/// The capacity the agent fills. The services, reverse NAT, backends and
/// slots maps are created at twice that size, so that a sync can write the
/// new state before it removes the old (dataplane::loader).
fn capacity(name: &str, map: &MapData, fallback: u32) -> u32 {
    let physical = map.info().map(|i| i.max_entries()).unwrap_or(fallback);
    let doubled = [
        lb_common::MAP_SERVICES,
        lb_common::MAP_REVNAT,
        lb_common::MAP_BACKENDS,
        lb_common::MAP_SLOTS,
    ];
    if doubled.contains(&name) {
        physical / 2
    } else {
        physical
    }
}

fn fill<K: aya::Pod, V: aya::Pod, M: IterableMap<K, V>>(
    name: &str,
    map: &M,
    entries: usize,
    max: u32,
) -> MapFill {
    MapFill {
        map: name.into(),
        entries,
        capacity: capacity(name, map.map(), max),
    }
}

pub fn status(bpffs: &Path, maps: &Maps) -> Status {
    let mut devices: Vec<String> = std::fs::read_dir(bpffs.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("tc_")?;
            Some(
                rest.rsplit_once('_')
                    .map_or(rest, |(dev, _)| dev)
                    .to_string(),
            )
        })
        .collect();
    devices.sort();
    let mut xdp: Vec<XdpDevice> = std::fs::read_dir(bpffs.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (mode, device) = crate::dataplane::xdp::parse_pin_name(&name)?;
            Some(XdpDevice {
                device: device.into(),
                mode: mode.into(),
            })
        })
        .collect();
    xdp.sort_by(|a, b| a.device.cmp(&b.device));
    let m = &maps;
    Status {
        agent: None,
        agent_error: None,
        bpffs: bpffs.display().to_string(),
        devices,
        xdp,
        maps: vec![
            fill(
                lb_common::MAP_SERVICES,
                &m.services,
                m.services.keys().count(),
                MAX_SERVICES,
            ),
            fill(
                lb_common::MAP_SLOTS,
                &m.slots,
                m.slots.keys().count(),
                MAX_SLOTS,
            ),
            fill(
                lb_common::MAP_BACKENDS,
                &m.backends,
                m.backends.keys().count(),
                MAX_BACKENDS,
            ),
            fill(
                lb_common::MAP_REVNAT,
                &m.revnat,
                m.revnat.keys().count(),
                MAX_SERVICES,
            ),
            fill(lb_common::MAP_CT, &m.ct, m.ct.keys().count(), MAX_CT),
            fill(
                lb_common::MAP_AFFINITY,
                &m.affinity,
                m.affinity.keys().count(),
                MAX_AFFINITY,
            ),
            fill(
                lb_common::MAP_SOURCE_RANGES,
                &m.src_ranges,
                m.src_ranges.keys().count(),
                lb_common::MAX_SOURCE_RANGES,
            ),
            fill(
                lb_common::MAP_SERVICES6,
                &m.services6,
                m.services6.keys().count(),
                MAX_SERVICES,
            ),
            fill(
                lb_common::MAP_BACKENDS6,
                &m.backends6,
                m.backends6.keys().count(),
                MAX_BACKENDS,
            ),
            fill(lb_common::MAP_CT6, &m.ct6, m.ct6.keys().count(), MAX_CT),
        ],
    }
}

/// Tables for an 80-column terminal.
pub fn lb_table(t: &LbTables, frontends: bool, backends: bool, revnat: bool) -> String {
    let mut out = String::new();
    if frontends {
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:>5} {:>5} {:<7} {:>8}",
            "FRONTEND", "SCOPE", "ID", "COUNT", "ALG", "AFFINITY"
        );
        for r in &t.frontends {
            let alg = match r.maglev_table {
                Some(table) => format!("{}#{table}", r.algorithm),
                None => r.algorithm.clone(),
            };
            let _ = writeln!(
                out,
                "{:<24} {:<8} {:>5} {:>5} {:<7} {:>8}",
                r.frontend, r.scope, r.service_id, r.count, alg, r.affinity_timeout
            );
        }
    }
    if backends {
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "{:>6} {:<28} STATE", "ID", "BACKEND");
        for r in &t.backends {
            let _ = writeln!(out, "{:>6} {:<28} {}", r.id, r.backend, r.state);
        }
    }
    if revnat {
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "{:>6} FRONTEND", "ID");
        for r in &t.revnat {
            let _ = writeln!(out, "{:>6} {}", r.service_id, r.frontend);
        }
    }
    out
}

pub fn ct_table(rows: &[CtRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<7} {:<40} {:<21} {:>5}",
        "KIND", "TUPLE", "NAT", "AGE"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<7} {:<40} {:<21} {:>4}s",
            r.kind, r.tuple, r.nat, r.age_seconds
        );
    }
    out
}

pub fn status_table(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Pins:     {}", s.bpffs);
    let _ = writeln!(
        out,
        "Devices:  {} (tc ingress, TCX)",
        if s.devices.is_empty() {
            "none".into()
        } else {
            s.devices.join(", ")
        }
    );
    let xdp: Vec<String> = s
        .xdp
        .iter()
        .map(|x| format!("{} ({})", x.device, x.mode))
        .collect();
    let _ = writeln!(
        out,
        "XDP:      {}",
        if xdp.is_empty() {
            "none".into()
        } else {
            xdp.join(", ")
        }
    );
    let _ = writeln!(out, "Maps:");
    for m in &s.maps {
        let pct = if m.capacity == 0 {
            0.0
        } else {
            m.entries as f64 * 100.0 / m.capacity as f64
        };
        let _ = writeln!(
            out,
            "  {:<13} {:>8} / {:<8} {:>5.1}%",
            m.map, m.entries, m.capacity, pct
        );
    }
    let lines = match (&s.agent, &s.agent_error) {
        (Some(a), _) => agent_lines(a, SystemTime::now()),
        (None, e) => vec![format!(
            "Agent:    not reachable ({}); the maps above are all there is",
            e.as_deref().unwrap_or("no answer")
        )],
    };
    for l in lines {
        let _ = writeln!(out, "{}", crate::cli::truncate(&l, 80));
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines.retain(|l| !l.is_empty());
    lines
}

/// "12s ago" for an RFC 3339 time, or the time itself if it cannot be read.
fn ago(time: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339_weak(time) {
        Ok(t) => match now.duration_since(t) {
            Ok(d) => format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            ),
            Err(_) => "just now".into(),
        },
        Err(_) => time.to_string(),
    }
}

/// The agent's part of `weir status`, one item per line (cut to 80 columns by the caller).
pub fn agent_lines(a: &crate::control::AgentStatus, now: SystemTime) -> Vec<String> {
    let mut l = vec![format!(
        "Agent:    pid {}, version {}, up since {} ({})",
        a.pid,
        a.version,
        a.started,
        ago(&a.started, now)
    )];
    if !a.socket_lb.mode.is_empty() {
        let lb = &a.socket_lb;
        l.push(match lb.state.as_str() {
            "attached" => format!("Sock LB:  {} on {}", lb.mode, lb.cgroup),
            state => format!("Sock LB:  {} ({state})", lb.mode),
        });
    }
    for (i, u) in a.uplinks.iter().enumerate() {
        let label = if i == 0 { "Uplinks:" } else { "" };
        l.push(format!("{label:<9} {} {}", u.device, u.mode));
        l.extend(
            wrap(&u.reason, 68)
                .into_iter()
                .map(|r| format!("            {r}")),
        );
    }
    let src = &a.source;
    l.push(format!("Source:   {} {}", src.kind, src.location));
    l.push(format!(
        "          {}, last update {}{}",
        src.state,
        src.last_update
            .as_deref()
            .map_or_else(|| "never".to_string(), |t| ago(t, now)),
        if src.skipped_objects > 0 {
            format!(", {} invalid objects skipped", src.skipped_objects)
        } else {
            String::new()
        }
    ));
    if let Some(e) = &src.last_error {
        l.push(format!(
            "          last error {}: {}",
            ago(&e.time, now),
            e.error
        ));
    }
    match &a.last_sync {
        Some(sync) => {
            l.push(format!(
                "Sync:     {} {}, took {:.1} ms ({} syncs, {} failed)",
                sync.result,
                ago(&sync.time, now),
                sync.duration_seconds * 1e3,
                a.syncs,
                a.sync_failures
            ));
            l.push(format!(
                "          {} services, {} slices -> {} frontends, {} backends",
                sync.services, sync.endpoint_slices, sync.frontends, sync.backends
            ));
            l.push(format!(
                "          {} map writes, {} frontends skipped (maps full)",
                sync.map_ops, sync.skipped_frontends
            ));
        }
        None => l.push("Sync:     none yet".into()),
    }
    if let Some(e) = &a.last_sync_error {
        l.push(format!(
            "          last failure {}: {}",
            ago(&e.time, now),
            e.error
        ));
    }
    if a.ingress {
        l.push("Ingress:  proxy running (weir ingress routes)".into());
    }
    l
}

/// One `weir monitor` line.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EventRow {
    /// "flow", "drop", "sock-flow" (socket LB sent a connect/sendmsg to a
    /// backend) or "sock-refused" (socket LB refused it: no endpoint).
    pub event: String,
    /// The drop reason; empty for flows.
    pub reason: String,
    pub tuple: String,
    /// The backend a new flow went to; empty for drops.
    pub backend: String,
    pub service_id: u32,
    /// Socket events: the calling socket's network namespace cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
}

pub fn event_row(e: &crate::dataplane::monitor::Event) -> EventRow {
    let flow = matches!(e.kind, lb_common::EVENT_FLOW | lb_common::EVENT_SOCK_FLOW);
    let socket = matches!(
        e.kind,
        lb_common::EVENT_SOCK_FLOW | lb_common::EVENT_SOCK_REFUSED
    );
    let event = match e.kind {
        lb_common::EVENT_FLOW => "flow",
        lb_common::EVENT_SOCK_FLOW => "sock-flow",
        lb_common::EVENT_SOCK_REFUSED => "sock-refused",
        _ => "drop",
    };
    EventRow {
        netns_cookie: socket.then_some(e.netns_cookie),
        event: event.into(),
        reason: if flow {
            String::new()
        } else {
            lb_common::DROP_REASON_NAMES
                .get(e.reason as usize)
                .map_or_else(|| format!("reason {}", e.reason), |r| r.to_string())
        },
        tuple: format!(
            "{} -> {}/{}",
            SocketAddr::new(e.saddr, e.sport),
            SocketAddr::new(e.daddr, e.dport),
            proto(e.proto)
        ),
        backend: if flow {
            SocketAddr::new(e.nat_addr, e.nat_port).to_string()
        } else {
            String::new()
        },
        service_id: e.service_id,
    }
}

pub fn event_line(r: &EventRow) -> String {
    let netns = r
        .netns_cookie
        .map_or_else(String::new, |c| format!(", netns {c}"));
    match r.event.as_str() {
        "flow" => format!(
            "flow  {} => {} (service {})",
            r.tuple, r.backend, r.service_id
        ),
        "sock-flow" => format!(
            "sock  {} => {} (connect/sendmsg, service {}{netns})",
            r.tuple, r.backend, r.service_id
        ),
        "sock-refused" => format!(
            "sock  {} refused: {} (service {}{netns})",
            r.tuple, r.reason, r.service_id
        ),
        _ => format!("drop  {} {} (service {})", r.tuple, r.reason, r.service_id),
    }
}
