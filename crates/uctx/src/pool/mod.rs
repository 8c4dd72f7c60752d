//! The context pool: a directory on disk, the single source of truth.
//!
//! CONTRACT (the rest of the engine relies on exactly this API):
//! - `Pool` is `Send + Sync`; many sessions in one process share one `Arc<Pool>`.
//! - `append` returns only after the batch is durable (survives kill -9).
//! - ids are assigned in write order, strictly increasing, never reused.

use std::path::Path;

use crate::slice::{NewSlice, Slice, SliceMeta};
use crate::Result;

/// How to open a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Create the pool if the directory holds none.
    pub create: bool,
    /// Open for reading only: takes no lock, refuses writes.
    pub read_only: bool,
    /// Byte budget for everything on disk; `None` keeps the stored budget (default 5 GB on create).
    pub budget_bytes: Option<u64>,
    /// Identity and dimension of the encoder whose vectors this pool holds.
    pub encoder_fingerprint: String,
    pub dim: usize,
}

/// Which namespaces a search covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every namespace (a shared pool).
    All,
    /// One session's slices only.
    Namespace(&'a str),
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub score: f32,
    pub meta: SliceMeta,
}

/// Something the witness learned about a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitnessEvent {
    /// A paged-in copy was used by the model (its content showed up in the answer).
    Used(u64),
    /// The slice was paged in again because it became relevant again.
    Recalled(u64),
    Pin(u64),
    Unpin(u64),
}

/// Totals for `uctx status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PoolStats {
    pub slices: u64,
    pub tokens: u64,
    pub bytes_on_disk: u64,
    pub budget_bytes: u64,
    pub namespaces: u64,
}

pub struct Pool {}

impl Pool {
    pub fn open(_dir: &Path, _opts: PoolOptions) -> Result<Pool> {
        todo!()
    }
    pub fn append(&self, _batch: &[(NewSlice, Vec<f32>)]) -> Result<Vec<u64>> {
        todo!()
    }
    pub fn search(&self, _query: &[f32], _k: usize, _scope: Scope<'_>) -> Result<Vec<Hit>> {
        todo!()
    }
    pub fn get(&self, _id: u64) -> Result<Option<Slice>> {
        todo!()
    }
    pub fn meta(&self, _id: u64) -> Option<SliceMeta> {
        todo!()
    }
    /// Metadata of every live slice in scope, in id order.
    pub fn metas(&self, _scope: Scope<'_>) -> Vec<SliceMeta> {
        todo!()
    }
    pub fn record(&self, _events: &[WitnessEvent]) -> Result<()> {
        todo!()
    }
    pub fn delete_namespace(&self, _ns: &str) -> Result<u64> {
        todo!()
    }
    pub fn clear(&self) -> Result<u64> {
        todo!()
    }
    pub fn namespaces(&self) -> Vec<(String, u64)> {
        todo!()
    }
    pub fn stats(&self) -> PoolStats {
        todo!()
    }
    pub fn set_budget(&self, _bytes: u64) -> Result<()> {
        todo!()
    }
    pub fn encoder_fingerprint(&self) -> String {
        todo!()
    }
    pub fn dir(&self) -> &Path {
        todo!()
    }
}
