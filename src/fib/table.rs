//! Loading route tables for tests and benchmarks.
