//! Per-worker counters and the drop reasons they are keyed by.

pub mod drop;
pub mod counters;

pub use counters::Counters;
pub use drop::DropReason;
