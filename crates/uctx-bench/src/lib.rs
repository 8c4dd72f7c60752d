//! The benchmarks behind `uctx bench`. Each module has an `Args` struct, a
//! `run` function and a serializable report with a `table()` for humans; the
//! CLI only parses flags and prints.

pub mod beir;
pub mod churn;
pub mod drift;
pub mod encoder;
pub mod locomo;
pub mod locomo_qa;
pub mod scale;
