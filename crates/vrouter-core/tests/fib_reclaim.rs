//! Arena space replaced by updates is reused once a grace period has passed. In its own test
//! binary because any long-pinned thread in the process (another test) delays grace periods.

use crossbeam_epoch as epoch;
use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId};

#[test]
fn replaced_block_space_is_reused_after_grace_period() {
    let (mut w, fib) = FibWriter::new();
    let p: Ipv4Prefix = "10.0.0.0/25".parse().unwrap();
    w.insert(p, 1);
    let before = w.memory_bytes();
    for i in 0..5000u32 {
        w.insert(p, (i % 2 + 1) as NhId);
        epoch::pin().flush();
    }
    // Each replacement frees a block of 2 nodes + 3 leaves (54 bytes); without reuse the
    // arenas would grow by ~270 kB.
    let grown = w.memory_bytes() - before;
    assert!(grown < 100 * 54, "arenas grew by {grown} bytes over 5000 replacements");
    assert!(w.free_bytes() <= grown + 54 * 100);
    assert_eq!(fib.pin().lookup(0x0a00_0001), 2);
}
