//! uctx: virtual memory for a local LLM's context window.
//!
//! The overflow of a model's window is encoded into an on-disk [`pool::Pool`];
//! a [`session::Session`] pages the relevant slices back into each turn's
//! window, and a background [`pager::Pager`] keeps likely slices warm.
//! See `ARCHITECTURE.md` at the repository root for the map and invariants.
#![deny(unsafe_code)]

pub mod backend;
pub mod chunk;
pub mod encoder;
pub mod error;
pub mod lexical;
pub mod memory;
pub mod pager;
pub mod pool;
pub mod session;
pub mod slice;
pub mod witness;

pub use error::{Error, Result};
pub use slice::{NewSlice, Slice, SliceMeta, Source};
