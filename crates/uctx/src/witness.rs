//! Retention per slice and eviction: pure functions of slice metadata.
