//! Arbitrary frames on arbitrary ports through a whole simulated node; must never panic.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run pipeline -- -max_total_time=300`
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vrouter_core::dataplane::sim::fuzz_pipeline(data);
});
