//! Backend selection for a new flow: session affinity first, then the
//! service's algorithm (random, flow hash, or Maglev). Returns a backend id.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{AffinityValue, ServiceValue, SlotKey, ALG_HASH, ALG_MAGLEV};

use crate::{
    maps::{maglev_m, MAGLEV, SLOTS},
    time::now,
};

use super::fam::{flow_hash, AffinityKey, Flow, AFFINITY, BACKENDS};

/// Picks the backend id for a new flow of `svc` (count > 0).
#[inline(always)]
pub fn backend_id(svc: &ServiceValue, flow: &Flow) -> Option<u32> {
    let affine_id = if svc.affinity_timeout != 0 {
        affine(svc, flow)
    } else {
        None
    };
    let id = if let Some(id) = affine_id {
        id
    } else if svc.algorithm == ALG_MAGLEV {
        maglev(svc, flow)?
    } else {
        let r = if svc.algorithm == ALG_HASH {
            flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto)
        } else {
            // SAFETY: helper without preconditions.
            unsafe { bpf_get_prandom_u32() }
        };
        // checked: no panic path (a BPF program cannot end in one), even
        // where the compiler loses that count > 0.
        let slot = SlotKey {
            service_id: svc.id,
            slot: r.checked_rem(svc.count)? + 1,
        };
        // SAFETY: the value is copied out at once.
        unsafe { SLOTS.get(slot).copied() }?
    };
    if svc.affinity_timeout != 0 {
        // Every new connection refreshes the timestamp, as kube-proxy's `recent` match does.
        remember(svc, flow, id);
    }
    Some(id)
}

#[inline(always)]
fn maglev(svc: &ServiceValue, flow: &Flow) -> Option<u32> {
    let m = maglev_m();
    if m == 0 {
        return None;
    }
    let h = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    let index = svc
        .maglev_table
        .checked_mul(m)?
        .checked_add(h.checked_rem(m)?)?;
    MAGLEV.get(index).copied()
}

/// The backend this client used within the timeout, if it still exists.
#[inline(always)]
fn affine(svc: &ServiceValue, flow: &Flow) -> Option<u32> {
    let key = affinity_key(svc, flow);
    // SAFETY: the value is copied out at once.
    let entry = unsafe { AFFINITY.get(key).copied() }?;
    let timeout_ns = svc.affinity_timeout as u64 * 1_000_000_000;
    if now().saturating_sub(entry.last_used_ns) > timeout_ns {
        return None;
    }
    // SAFETY: only checks presence.
    unsafe { BACKENDS.get(entry.backend_id) }?;
    Some(entry.backend_id)
}

#[inline(always)]
fn remember(svc: &ServiceValue, flow: &Flow, backend_id: u32) {
    let key = affinity_key(svc, flow);
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: now(),
    };
    let _ = AFFINITY.insert(key, value, 0);
}

/// The affinity key of `flow`'s client (zeroed first: the IPv6 key has
/// padding).
#[inline(always)]
fn affinity_key(svc: &ServiceValue, flow: &Flow) -> AffinityKey {
    // SAFETY: the key is plain integers; all zero is a valid value.
    let mut key: AffinityKey = unsafe { core::mem::zeroed() };
    key.service_id = svc.id;
    key.client = flow.saddr;
    key
}
