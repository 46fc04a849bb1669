//! The maps shared with the agent. BTF maps, so bpftool prints field names;
//! the agent pins them under its bpffs directory by these names.
use aya_ebpf::{
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityKey6, AffinityValue, Backend, Backend6, CtKey, CtKey6, CtValue, CtValue6,
    MonitorEvent, RevNat, RevNat6, ServiceKey, ServiceKey6, ServiceStats, ServiceValue, SlotKey,
    SourceRange, SourceRange6, DROP_REASONS, MAX_AFFINITY, MAX_BACKENDS, MAX_CT, MAX_NODE_ADDRS,
    MAX_SERVICES, MAX_SLOTS, MAX_SOURCE_RANGES, PASS_REASONS,
};

#[btf_map(name = "SERVICES_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map(name = "SLOTS_V1")]
pub static SLOTS: HashMap<SlotKey, u32, { MAX_SLOTS as usize }> = HashMap::new();

#[btf_map(name = "BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend, { MAX_BACKENDS as usize }> = HashMap::new();

#[btf_map(name = "REVNAT_V1")]
pub static REVNAT: HashMap<u32, RevNat, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map(name = "CT_V2")]
pub static CT: LruHashMap<CtKey, CtValue, { MAX_CT as usize }> = LruHashMap::new();

#[btf_map(name = "AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

/// Maglev lookup tables, back to back: table t occupies [t*M, (t+1)*M).
/// The agent sizes the map at load time (tables x M entries).
#[btf_map(name = "MAGLEV_V1")]
pub static MAGLEV: Array<u32, 1> = Array::new();

/// The Maglev table size M; set by the agent at load time.
#[unsafe(no_mangle)]
static MAGLEV_M: u32 = lb_common::DEFAULT_MAGLEV_M;

#[inline(always)]
pub fn maglev_m() -> u32 {
    // SAFETY: a read of a global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&MAGLEV_M) }
}

/// Per-service counters, by service id. Sized at load time to the service id
/// space (1..=max(MAX_SERVICES, --max-services), plus the unused index 0),
/// up to lb_common::PERCPU_STATS_MAX; beyond it, 1 (STATS_SHARED_V1 counts).
#[btf_map(name = "STATS_V1")]
pub static STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize + 1 }> = PerCpuArray::new();

/// Drops and rejects by reason (lb_common::DROP_*).
#[btf_map(name = "DROPS_V1")]
pub static DROPS: PerCpuArray<u64, { DROP_REASONS as usize }> = PerCpuArray::new();

/// STATS_V1 shared by all CPUs, sized at load time (1 entry when unused).
#[btf_map(name = "STATS_SHARED_V1")]
pub static STATS_SHARED_MAP: Array<ServiceStats, 1> = Array::new();

/// A locked add (BPF_XADD): core's AtomicU64 has no fetch_add on the BPF
/// target, the intrinsic does.
///
/// # Safety
/// `dst` must point at a u64 that stays valid for the call.
#[inline(always)]
unsafe fn add(dst: *mut u64, n: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, n,
        )
    };
}

/// Whether services are counted in STATS_SHARED_V1; set at load time.
#[unsafe(no_mangle)]
static STATS_SHARED: u32 = 0;

/// Counts a packet of `len` bytes towards service `id`; `new_flow` also
/// counts a flow. Per CPU, or with locked adds in the shared array when the
/// service id space is too large for a copy per CPU (lb_common::PERCPU_STATS_MAX).
#[inline(always)]
pub fn count(id: u32, len: u32, new_flow: bool) {
    // SAFETY: a read of a load-time global; volatile so the loaded value is used.
    if unsafe { core::ptr::read_volatile(&STATS_SHARED) } != 0 {
        if let Some(s) = STATS_SHARED_MAP.get_ptr_mut(id) {
            // SAFETY: a map value, valid while the program runs; other CPUs
            // add to it too, hence the atomic adds.
            unsafe {
                add(&raw mut (*s).packets, 1);
                add(&raw mut (*s).bytes, len as u64);
                if new_flow {
                    add(&raw mut (*s).flows, 1);
                }
            }
        }
        return;
    }
    if let Some(s) = STATS.get_ptr_mut(id) {
        // SAFETY: a per-CPU slot; only this CPU writes it while the program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len as u64;
            if new_flow {
                (*s).flows += 1;
            }
        }
    }
}

/// Packets passed untranslated, by reason (lb_common::PASS_*).
#[btf_map(name = "PASSED_V1")]
pub static PASSED: PerCpuArray<u64, { PASS_REASONS as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count_passed(reason: u32) {
    if let Some(d) = PASSED.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot.
        unsafe { *d += 1 };
    }
}

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(d) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot.
        unsafe { *d += 1 };
    }
}

/// Events for `weir monitor`.
#[btf_map(name = "MONITOR_V1")]
pub static MONITOR: RingBuf<MonitorEvent, { lb_common::MONITOR_BYTES as usize }> = RingBuf::new();

/// Runtime flags set by userspace (lb_common::CONFIG_FLAGS).
#[btf_map(name = "CONFIG_V1")]
pub static CONFIG: Array<u32, 4> = Array::new();

#[inline(always)]
pub fn trace_flows() -> bool {
    CONFIG
        .get(lb_common::CONFIG_FLAGS)
        .is_some_and(|f| f & lb_common::FLAG_TRACE_FLOWS != 0)
}

/// loadBalancerSourceRanges: (service id, client prefix) -> 1.
#[btf_map(name = "SRC_RANGES_V1")]
pub static SRC_RANGES: LpmTrie<SourceRange, u8, { MAX_SOURCE_RANGES as usize }> = LpmTrie::new();

/// Whether `client` may reach service `service_id` (which has source ranges).
#[inline(always)]
pub fn source_allowed(service_id: u32, client: [u8; 4]) -> bool {
    let key = Key::new(
        SourceRange::prefix_len(32),
        SourceRange {
            service_id: service_id.to_be_bytes(),
            addr: client,
        },
    );
    SRC_RANGES.get(&key).is_some()
}

/// The node's address on each uplink, by ifindex: the source of SNATed flows.
#[btf_map(name = "NODE_ADDRS_V1")]
pub static NODE_ADDRS: HashMap<u32, [u8; 4], { MAX_NODE_ADDRS as usize }> = HashMap::new();

#[inline(always)]
pub fn node_addr(ifindex: u32) -> Option<[u8; 4]> {
    // SAFETY: the value is copied out at once.
    unsafe { NODE_ADDRS.get(ifindex).copied() }
}

/// The no-service filter (lb_common::filter): one bit per frontend and per
/// reply source. Mmapable, so that the agent reads and writes it in place.
#[btf_map(name = "FILTER_V1")]
pub static FILTER: Array<
    u64,
    { lb_common::filter::FILTER_WORDS as usize },
    { aya_ebpf::bindings::BPF_F_MMAPABLE as usize },
> = Array::new();

/// Whether the filter has bit `bit` set.
#[inline(always)]
pub fn filter_has(bit: lb_common::filter::FilterBit) -> bool {
    FILTER.get(bit.word).is_some_and(|w| *w & bit.mask != 0)
}

// ---- IPv6: the twins of the address-keyed maps (lb_common::v6). Slots,
// Maglev tables, counters and the filter are shared with IPv4. ----

#[btf_map(name = "SERVICES6_V1")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue, { MAX_SERVICES as usize }> =
    HashMap::new();

#[btf_map(name = "BACKENDS6_V1")]
pub static BACKENDS6: HashMap<u32, Backend6, { MAX_BACKENDS as usize }> = HashMap::new();

#[btf_map(name = "REVNAT6_V1")]
pub static REVNAT6: HashMap<u32, RevNat6, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map(name = "CT6_V1")]
pub static CT6: LruHashMap<CtKey6, CtValue6, { MAX_CT as usize }> = LruHashMap::new();

#[btf_map(name = "AFFINITY6_V1")]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

#[btf_map(name = "SRC_RANGES6_V1")]
pub static SRC_RANGES6: LpmTrie<SourceRange6, u8, { MAX_SOURCE_RANGES as usize }> = LpmTrie::new();

/// Whether `client` may reach service `service_id` (which has source ranges).
#[inline(always)]
pub fn source_allowed6(service_id: u32, client: [u8; 16]) -> bool {
    let key = Key::new(
        SourceRange::prefix_len(128),
        SourceRange6 {
            service_id: service_id.to_be_bytes(),
            addr: client,
        },
    );
    SRC_RANGES6.get(&key).is_some()
}

/// The node's IPv6 address on each uplink, by ifindex: the source of
/// SNATed IPv6 flows.
#[btf_map(name = "NODE_ADDRS6_V1")]
pub static NODE_ADDRS6: HashMap<u32, [u8; 16], { MAX_NODE_ADDRS as usize }> = HashMap::new();

#[inline(always)]
pub fn node_addr6(ifindex: u32) -> Option<[u8; 16]> {
    // SAFETY: the value is copied out at once.
    unsafe { NODE_ADDRS6.get(ifindex).copied() }
}

/// Per-CPU room for a packet's path state (lb::State of either family),
/// which the path's phases share: in the entry point's stack frame it would
/// leave the phases too little of the 512 bytes a call chain may use. Not
/// pinned: nothing outlives a packet in it. A program runs to its end on
/// its CPU before another packet's program does there.
#[btf_map]
pub static SCRATCH: PerCpuArray<[u64; SCRATCH_WORDS], 1> = PerCpuArray::new();

pub const SCRATCH_WORDS: usize = 24;

/// The scratch space, as a `T` (at most SCRATCH_WORDS words, 8-aligned).
#[inline(always)]
pub fn scratch<T>() -> Option<&'static mut T> {
    const { assert!(core::mem::size_of::<T>() <= SCRATCH_WORDS * 8) };
    const { assert!(core::mem::align_of::<T>() <= 8) };
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value of the right size and alignment (asserted
    // above), used by one program at a time on this CPU; T is plain data
    // for which any bytes the previous packet left are a valid value.
    Some(unsafe { &mut *(p as *mut T) })
}
