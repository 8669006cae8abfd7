//! The control side: configuration, turning it into the data plane's state, live updates
//! (make before break, see [`node`]), the control socket and its protocol, route sources.
//! Reaches the workers only by publishing snapshots and FIB updates and waiting for grace
//! periods, and by the observation requests of [`vrouter_core::dataplane::observe`].

pub use vrouter_api as api;
pub mod build;
pub mod config;
pub mod daemon;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod metrics;
pub mod netlink;
pub mod node;
pub mod server;
pub mod stats;
pub mod status;

/// Returns memory freed on the heap to the system (glibc keeps freed memory in its arenas:
/// without this, a withdrawn full table would stay resident). Called after large removals.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // libc: nix has no malloc_trim (a glibc extension).
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
