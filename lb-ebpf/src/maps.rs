//! The maps shared with the agent. BTF maps, so bpftool prints field names;
//! the agent pins them under its bpffs directory by these names.
use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap},
    macros::btf_map,
};
use lb_common::{
    Backend, CtKey, CtValue, RevNat, ServiceKey, ServiceValue, SlotKey, MAX_BACKENDS, MAX_CT,
    MAX_SERVICES, MAX_SLOTS,
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
