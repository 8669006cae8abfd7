//! Per-worker counters and the drop reasons they are keyed by.

pub mod counters;
pub mod drop;

pub use counters::Counters;
pub use drop::DropReason;
