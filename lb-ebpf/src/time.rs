//! The clock, and the conntrack refresh interval the agent sets at load.
use aya_ebpf::helpers::bpf_ktime_get_ns;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// How stale an entry's timestamp may get before a packet writes it again
/// (ns); set by the agent at load time from its conntrack timeouts.
#[unsafe(no_mangle)]
static CT_REFRESH_NS: u64 = lb_common::DEFAULT_CT_REFRESH_NS;

#[inline(always)]
pub fn refresh_ns() -> u64 {
    // SAFETY: a read of a global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&CT_REFRESH_NS) }
}
