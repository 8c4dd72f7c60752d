//! A pool and its encoder, together: text in, slices out; queries in, hits out.
//!
//! Every writer of text (sessions, `ingest`) and every reader (`recall`, the
//! pager) goes through [`Memory`], so chunking and encoding happen in one place.
//!
//! Search is hybrid: the dense ranking from the pool's vectors and a BM25
//! ranking over the same slices, merged by [`lexical::fuse`] (each list's scores
//! normalised, then weighted). A dense static model alone loses to BM25 on
//! conversation and documents (exact names, numbers, identifiers); fused they
//! do better than either. The BM25 postings are the pool's lexical index
//! ([`crate::pool::lex`]): on disk, derived from the log like the vector index,
//! searched in every scope at every pool size.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::chunk;
use crate::encoder::Encoder;
use crate::lexical::{self, Fusion};
use crate::pool::{Hit, Pool, PoolOptions, Scope, Store};
use crate::slice::{NewSlice, Slice, Source};
use crate::{Error, Result};

/// Salience given to each source at write time; the witness starts retention there.
pub fn default_salience(source: Source) -> f32 {
    match source {
        Source::Pinned => 1.0,
        Source::User => 0.7,
        Source::Document => 0.6,
        Source::Assistant => 0.5,
        Source::Tool => 0.4,
    }
}

/// What to write: one unit of text (a turn, a file, a JSONL record).
#[derive(Clone, Debug)]
pub struct Unit<'a> {
    pub namespace: &'a str,
    pub source: Source,
    pub text: &'a str,
    pub turn: u64,
    pub ext_id: Option<&'a str>,
}

/// A search result with its text.
#[derive(Clone, Debug, PartialEq)]
pub struct Recalled {
    pub score: f32,
    pub slice: Slice,
}

/// Candidates each ranking contributes before fusion, per result wanted.
const FUSION_DEPTH: usize = 3;

/// Which rankings [`Memory::search_with`] uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ranking {
    /// The pool's vectors only.
    Dense,
    /// BM25 only.
    Lexical,
    /// Both, fused.
    Fused(Fusion),
}

impl Ranking {
    /// What [`Memory::search`] uses.
    pub const DEFAULT: Ranking = Ranking::Fused(Fusion::DEFAULT);
}

/// A pool with the encoder whose vectors it holds.
pub struct Memory {
    pool: Arc<dyn Store>,
    encoder: Arc<dyn Encoder>,
    slice_tokens: usize,
}

impl Memory {
    /// Open (or create) the pool at `dir` for `encoder`.
    pub fn open(
        dir: &Path,
        encoder: Arc<dyn Encoder>,
        create: bool,
        read_only: bool,
        budget_bytes: Option<u64>,
    ) -> Result<Memory> {
        let pool = Pool::open(
            dir,
            Memory::pool_options(&*encoder, create, read_only, budget_bytes),
        )?;
        Ok(Memory::new(Arc::new(pool), encoder))
    }

    /// [`Memory::open`] with the encoder loaded by `load` on another thread while the pool
    /// opens (the two take about as long). `fingerprint` and `dim` are the encoder's, known
    /// before it loads (the bundled model's are constants,
    /// [`crate::encoder::BUNDLED_FINGERPRINT`]); the loaded encoder must agree.
    pub fn open_loading(
        dir: &Path,
        fingerprint: &str,
        dim: usize,
        load: impl FnOnce() -> Result<Arc<dyn Encoder>> + Send,
        create: bool,
        read_only: bool,
        budget_bytes: Option<u64>,
    ) -> Result<Memory> {
        let (pool, encoder) = std::thread::scope(|s| {
            let encoder = s.spawn(load);
            let pool = Pool::open(
                dir,
                PoolOptions {
                    create,
                    read_only,
                    budget_bytes,
                    encoder_fingerprint: fingerprint.to_string(),
                    dim,
                },
            );
            let encoder = encoder
                .join()
                .unwrap_or_else(|_| Err(Error::Encoder("loading the encoder failed".into())));
            (pool, encoder)
        });
        let (pool, encoder) = (pool?, encoder?);
        if encoder.fingerprint() != fingerprint || encoder.dim() != dim {
            return Err(Error::Encoder(format!(
                "the encoder loaded as {} ({} dimensions), not {fingerprint} ({dim}) as expected",
                encoder.fingerprint(),
                encoder.dim()
            )));
        }
        Ok(Memory::new(Arc::new(pool), encoder))
    }

    /// A memory on any pool: a directory [`Pool`], or a team pool on a server.
    /// The pool must hold vectors of `encoder` (its opener checks the fingerprint).
    pub fn new(pool: Arc<dyn Store>, encoder: Arc<dyn Encoder>) -> Memory {
        Memory {
            pool,
            encoder,
            slice_tokens: chunk::SLICE_TOKENS,
        }
    }

    /// The options that open a pool (a directory or a team pool) for `encoder`.
    pub fn pool_options(
        encoder: &dyn Encoder,
        create: bool,
        read_only: bool,
        budget_bytes: Option<u64>,
    ) -> PoolOptions {
        PoolOptions {
            create,
            read_only,
            budget_bytes,
            encoder_fingerprint: encoder.fingerprint(),
            dim: encoder.dim(),
        }
    }

    /// Use a different slice size (tests and benchmarks with small windows).
    pub fn with_slice_tokens(mut self, tokens: usize) -> Memory {
        self.slice_tokens = tokens.max(16);
        self
    }

    pub fn pool(&self) -> &dyn Store {
        &*self.pool
    }

    pub fn encoder(&self) -> &Arc<dyn Encoder> {
        &self.encoder
    }

    pub fn slice_tokens(&self) -> usize {
        self.slice_tokens
    }

    pub fn count_tokens(&self, text: &str) -> usize {
        self.encoder.count_tokens(text)
    }

    /// Cut units into slices, encode them, and append them durably. Returns the
    /// new ids, in order; a unit with no text yields no slice.
    pub fn write(&self, units: &[Unit<'_>]) -> Result<Vec<u64>> {
        Ok(self.write_each(units)?.into_iter().flatten().collect())
    }

    /// [`Memory::write`], with the ids of each unit's slices apart (one synced batch).
    pub fn write_each(&self, units: &[Unit<'_>]) -> Result<Vec<Vec<u64>>> {
        let count = |s: &str| self.encoder.count_tokens(s);
        let mut slices = Vec::new();
        let mut per_unit = Vec::with_capacity(units.len());
        for unit in units {
            let before = slices.len();
            for text in chunk::split(unit.text, self.slice_tokens, &count) {
                slices.push(NewSlice {
                    namespace: unit.namespace.to_string(),
                    source: unit.source,
                    tokens: count(&text) as u32,
                    text,
                    turn: unit.turn,
                    ext_id: unit.ext_id.map(str::to_string),
                    salience: default_salience(unit.source),
                });
            }
            per_unit.push(slices.len() - before);
        }
        if slices.is_empty() {
            return Ok(vec![Vec::new(); units.len()]);
        }
        let texts: Vec<&str> = slices.iter().map(|s| s.text.as_str()).collect();
        let vectors = self.encoder.encode_batch(&texts);
        let batch: Vec<(NewSlice, Vec<f32>)> = slices.into_iter().zip(vectors).collect();
        let mut ids = self.pool.append(&batch)?.into_iter();
        Ok(per_unit
            .into_iter()
            .map(|n| ids.by_ref().take(n).collect())
            .collect())
    }

    /// The ids and scores of the `k` slices nearest to `query`: dense and BM25
    /// rankings fused as [`Ranking::DEFAULT`] says. Scores only order the hits.
    pub fn search(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        self.search_with(query, k, scope, Ranking::DEFAULT)
    }

    /// [`Memory::search`] with the ranking chosen: dense only, BM25 only, or fused with
    /// other weights (benchmarks compare the parts with the whole, and tune the weights).
    pub fn search_with(
        &self,
        query: &str,
        k: usize,
        scope: Scope<'_>,
        ranking: Ranking,
    ) -> Result<Vec<Hit>> {
        if query.trim().is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let depth = k * FUSION_DEPTH;
        let (dense, lex) = match ranking {
            Ranking::Dense => (
                self.pool.search(&self.encoder.encode(query), k, scope)?,
                None,
            ),
            Ranking::Lexical => (Vec::new(), Some(self.pool.lexical_search(query, k, scope)?)),
            Ranking::Fused(_) => (
                self.pool
                    .search(&self.encoder.encode(query), depth, scope)?,
                Some(self.pool.lexical_search(query, depth, scope)?),
            ),
        };
        let Some(lex) = lex else {
            let mut dense = dense;
            dense.truncate(k);
            return Ok(dense);
        };
        let dense_ranked: Vec<(u64, f32)> = dense.iter().map(|h| (h.meta.id, h.score)).collect();
        let mut metas: HashMap<u64, crate::slice::SliceMeta> =
            dense.into_iter().map(|h| (h.meta.id, h.meta)).collect();
        let ranked = match ranking {
            Ranking::Fused(f) => lexical::fuse(&dense_ranked, &lex, f, depth),
            _ => lex,
        };
        let mut out = Vec::with_capacity(k);
        for (id, score) in ranked {
            // A slice deleted between the two searches.
            let Some(meta) = metas
                .remove(&id)
                .map_or_else(|| self.pool.meta(id), |m| Ok(Some(m)))?
            else {
                continue;
            };
            if let Scope::Namespace(ns) = scope {
                if meta.namespace != ns {
                    continue;
                }
            }
            out.push(Hit { score, meta });
            if out.len() == k {
                break;
            }
        }
        Ok(out)
    }

    /// Like [`Memory::search`], with each slice's text.
    pub fn recall(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<Recalled>> {
        let hits = self.search(query, k, scope)?;
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            if let Some(slice) = self.pool.get(hit.meta.id)? {
                out.push(Recalled {
                    score: hit.score,
                    slice,
                });
            }
        }
        Ok(out)
    }
}

/// What [`reembed`] did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Reembedded {
    pub slices: u64,
    pub from: String,
    pub to: String,
}

/// Slices re-encoded per append (one sync each).
const REEMBED_BATCH: usize = 512;

/// Re-encode every slice of the pool at `dir` with `encoder`, for a pool
/// written by another encoder. The slices are copied, text and provenance
/// intact, into a new pool beside it, with pins and uses carried over; then
/// the new pool takes the old one's place. Ids are renumbered in the same
/// order. Until the final swap the old pool is untouched and still locked, so
/// an interruption loses nothing; `progress` gets (done, total).
pub fn reembed(
    dir: &Path,
    encoder: Arc<dyn Encoder>,
    progress: &dyn Fn(u64, u64),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Reembedded> {
    let (from, dim) = Pool::inspect(dir)?;
    let to = encoder.fingerprint();
    let open = |path: &Path, fingerprint: String, dim: usize, budget: Option<u64>| {
        Pool::open(
            path,
            PoolOptions {
                create: budget.is_some(),
                read_only: false,
                budget_bytes: budget,
                encoder_fingerprint: fingerprint,
                dim,
            },
        )
    };
    let old = open(dir, from.clone(), dim, None)?;
    let name = dir
        .file_name()
        .map_or("pool".into(), |n| n.to_string_lossy().into_owned());
    let new_dir = dir.with_file_name(format!("{name}.reembed"));
    if new_dir.exists() {
        std::fs::remove_dir_all(&new_dir).map_err(|e| {
            Error::io(
                format!("cannot remove the unfinished {}", new_dir.display()),
                e,
            )
        })?;
    }
    let new = open(
        &new_dir,
        to.clone(),
        encoder.dim(),
        Some(old.stats().budget_bytes),
    )?;
    let metas = old.metas(Scope::All);
    let total = metas.len() as u64;
    let mut done = 0u64;
    for batch in metas.chunks(REEMBED_BATCH) {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            drop(new);
            let _ = std::fs::remove_dir_all(&new_dir);
            return Err(Error::Cancelled);
        }
        let mut slices = Vec::with_capacity(batch.len());
        for m in batch {
            if let Some(s) = old.get(m.id)? {
                slices.push(s);
            }
        }
        let texts: Vec<&str> = slices.iter().map(|s| s.text.as_str()).collect();
        let vectors = encoder.encode_batch(&texts);
        let items: Vec<(NewSlice, Vec<f32>)> = slices
            .iter()
            .zip(vectors)
            .map(|(s, v)| {
                let m = &s.meta;
                let copy = NewSlice {
                    namespace: m.namespace.clone(),
                    source: m.source,
                    text: s.text.clone(),
                    tokens: encoder.count_tokens(&s.text) as u32,
                    turn: m.turn,
                    ext_id: m.ext_id.clone(),
                    salience: m.salience,
                };
                (copy, v)
            })
            .collect();
        let ids = new.append(&items)?;
        let mut events = Vec::new();
        for (s, id) in slices.iter().zip(&ids) {
            if s.meta.pinned {
                events.push(crate::pool::WitnessEvent::Pin(*id));
            }
            events.extend((0..s.meta.uses).map(|_| crate::pool::WitnessEvent::Used(*id)));
        }
        if !events.is_empty() {
            new.record(&events)?;
        }
        done += slices.len() as u64;
        progress(done, total);
    }
    drop(new);
    drop(old);
    let retired = dir.with_file_name(format!("{name}.reembed-old"));
    let rename = |a: &Path, b: &Path| {
        std::fs::rename(a, b).map_err(|e| {
            Error::io(
                format!(
                    "cannot move {} to {} (the re-encoded pool is complete in {})",
                    a.display(),
                    b.display(),
                    new_dir.display()
                ),
                e,
            )
        })
    };
    rename(dir, &retired)?;
    rename(&new_dir, dir)?;
    std::fs::remove_dir_all(&retired).map_err(|e| {
        Error::io(
            format!("cannot remove the old pool at {}", retired.display()),
            e,
        )
    })?;
    Ok(Reembedded {
        slices: done,
        from,
        to,
    })
}
