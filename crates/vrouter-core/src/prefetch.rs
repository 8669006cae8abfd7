//! Software prefetch: a hint that the line holding an address will be read soon, so its cache
//! miss overlaps other work instead of stalling the load that needs it (DPDK's
//! `rte_prefetch0`, l3fwd's prefetch of the frames a few places ahead).
//!
//! Safe to call with any pointer: a prefetch never faults, not even for an unmapped or
//! dangling address, and changes nothing but cache contents. std has no stable wrapper
//! (`core::intrinsics::prefetch_read_data` is unstable), hence this one. A no-op off x86-64.

/// Asks for the cache line holding `p` to be brought into all levels of the cache (T0).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address (dangling,
    // unmapped, null), and writes nothing; SSE, which it needs, is part of x86-64.
    // (Whether the call itself needs `unsafe` depends on the compiler version, hence the
    // allow.)
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
