//! [`Store`]: a pool as the engine uses it, whatever holds it.
//!
//! [`Memory`](crate::memory::Memory), sessions, the pager and the commands
//! reach a pool only through this trait. Two implementations: the directory
//! pool ([`Pool`], one writer per directory, the log of record on local disk)
//! and the team pool on PostgreSQL (the `uctx-pg` crate, many writers on many
//! machines). The contract, which the shared suite checks on both
//! (`crates/uctx-pg/tests/contract.rs`):
//!
//! - `append` returns only once the batch is durable; ids are unique pool-wide,
//!   never reused, and increase with each writer's batches.
//! - A search scoped to a namespace never returns another namespace's slice;
//!   no search returns a deleted slice.
//! - Witness events are merged (each `Used` counts once), never lost to a
//!   concurrent writer; pins survive a reopen.

use super::{Hit, Pool, PoolStats, Scope, WitnessEvent};
use crate::slice::{NewSlice, Slice, SliceMeta};
use crate::Result;

/// A pool: append, read, search, witness, delete. See the module docs.
pub trait Store: Send + Sync {
    /// Append slices (each with its encoder vector) durably; their ids, in order.
    fn append(&self, batch: &[(NewSlice, Vec<f32>)]) -> Result<Vec<u64>>;

    /// A live slice with its text; `None` when absent, deleted or evicted.
    fn get(&self, id: u64) -> Result<Option<Slice>>;

    /// A live slice's metadata.
    fn meta(&self, id: u64) -> Result<Option<SliceMeta>>;

    /// Metadata of every live slice in scope, in id order.
    fn metas(&self, scope: Scope<'_>) -> Result<Vec<SliceMeta>>;

    /// The `k` slices nearest to `query` (a unit vector) in scope, best first.
    fn search(&self, query: &[f32], k: usize, scope: Scope<'_>) -> Result<Vec<Hit>>;

    /// The `k` best slices for `query` by the pool's lexical ranking in
    /// scope, best first, as (id, score); [`crate::lexical::fuse`] merges
    /// them with [`Store::search`]'s.
    fn lexical_search(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<(u64, f32)>>;

    /// Append slices another pool held, keeping their ids, write times, pins,
    /// uses and last use (`uctx pool copy`); ids must increase and lie above
    /// every id this pool has given. A pool that gives only ids of its own
    /// writes nothing and returns `false` (an empty batch asks which it is).
    fn import(&self, _batch: &[(Slice, Vec<f32>)]) -> Result<bool> {
        Ok(false)
    }

    /// Record what the witness learned; unknown ids are ignored.
    fn record(&self, events: &[WitnessEvent]) -> Result<()>;

    /// Delete the slices `ids` (an agent's `forget`); how many of them were live.
    fn forget(&self, ids: &[u64]) -> Result<u64>;

    /// Delete every slice of namespace `ns`; how many.
    fn delete_namespace(&self, ns: &str) -> Result<u64>;

    /// Delete every slice; how many.
    fn clear(&self) -> Result<u64>;

    /// Live namespaces with their slice counts, by name.
    fn namespaces(&self) -> Result<Vec<(String, u64)>>;

    /// Totals for `uctx status`.
    fn stats(&self) -> Result<PoolStats>;

    /// Change the byte budget.
    fn set_budget(&self, bytes: u64) -> Result<()>;

    /// The highest turn among the live slices of `ns`.
    fn last_turn(&self, ns: &str) -> Result<Option<u64>>;

    /// Ids of the live slices in scope, in id order.
    fn ids(&self, scope: Scope<'_>) -> Result<Vec<u64>>;

    /// Ids of the pinned live slices in scope, in id order.
    fn pinned(&self, scope: Scope<'_>) -> Result<Vec<u64>>;

    /// The fingerprint of the encoder whose vectors the pool holds.
    fn encoder_fingerprint(&self) -> String;

    /// Vector dimension.
    fn dim(&self) -> usize;

    /// Whether this handle refuses writes.
    fn is_read_only(&self) -> bool;

    /// Pick up what other writers did since the last look (a directory
    /// pool's reader); whether anything changed. A pool every read of which
    /// asks its server sees every write at once and returns `false`.
    fn refresh(&self) -> Result<bool>;

    /// Where the pool is, for messages: a directory, or a URL without its password.
    fn location(&self) -> String;

    /// The directory pool behind this handle, for what only it has (repair,
    /// checkpoints, index segments, files beside the log).
    fn as_dir(&self) -> Option<&Pool> {
        None
    }
}

impl Store for Pool {
    fn append(&self, batch: &[(NewSlice, Vec<f32>)]) -> Result<Vec<u64>> {
        Pool::append(self, batch)
    }
    fn get(&self, id: u64) -> Result<Option<Slice>> {
        Pool::get(self, id)
    }
    fn meta(&self, id: u64) -> Result<Option<SliceMeta>> {
        Ok(Pool::meta(self, id))
    }
    fn metas(&self, scope: Scope<'_>) -> Result<Vec<SliceMeta>> {
        Ok(Pool::metas(self, scope))
    }
    fn search(&self, query: &[f32], k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        Pool::search(self, query, k, scope)
    }
    fn lexical_search(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<(u64, f32)>> {
        Pool::lexical_search(self, query, k, scope)
    }
    fn record(&self, events: &[WitnessEvent]) -> Result<()> {
        Pool::record(self, events)
    }
    fn forget(&self, ids: &[u64]) -> Result<u64> {
        Pool::forget(self, ids)
    }
    fn delete_namespace(&self, ns: &str) -> Result<u64> {
        Pool::delete_namespace(self, ns)
    }
    fn clear(&self) -> Result<u64> {
        Pool::clear(self)
    }
    fn namespaces(&self) -> Result<Vec<(String, u64)>> {
        Ok(Pool::namespaces(self))
    }
    fn stats(&self) -> Result<PoolStats> {
        Ok(Pool::stats(self))
    }
    fn set_budget(&self, bytes: u64) -> Result<()> {
        Pool::set_budget(self, bytes)
    }
    fn last_turn(&self, ns: &str) -> Result<Option<u64>> {
        Pool::last_turn(self, ns)
    }
    fn ids(&self, scope: Scope<'_>) -> Result<Vec<u64>> {
        Ok(Pool::ids(self, scope))
    }
    fn pinned(&self, scope: Scope<'_>) -> Result<Vec<u64>> {
        Ok(Pool::pinned(self, scope))
    }
    fn encoder_fingerprint(&self) -> String {
        Pool::encoder_fingerprint(self)
    }
    fn dim(&self) -> usize {
        Pool::dim(self)
    }
    fn is_read_only(&self) -> bool {
        Pool::is_read_only(self)
    }
    fn refresh(&self) -> Result<bool> {
        Pool::refresh(self)
    }
    fn location(&self) -> String {
        Pool::dir(self).display().to_string()
    }
    fn as_dir(&self) -> Option<&Pool> {
        Some(self)
    }
}
