//! The maps shared with the agent. BTF maps, so bpftool prints field names;
//! the agent pins them under its bpffs directory by these names.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, RevNat, ServiceKey, ServiceValue, SlotKey,
    MAX_AFFINITY, MAX_BACKENDS, MAX_CT, MAX_SERVICES, MAX_SLOTS,
};

#[btf_map(name = "SERVICES_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map(name = "SLOTS_V1")]
pub static SLOTS: HashMap<SlotKey, u32, { MAX_SLOTS as usize }> = HashMap::new();

#[btf_map(name = "BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend, { MAX_BACKENDS as usize }> = HashMap::new();

#[btf_map(name = "REVNAT_V1")]
pub static REVNAT: HashMap<u32, RevNat, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map(name = "CT_V1")]
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
