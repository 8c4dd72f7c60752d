//! A pool and its encoder, together: text in, slices out; queries in, hits out.
//!
//! Every writer of text (sessions, `ingest`) and every reader (`recall`, the
//! pager) goes through [`Memory`], so chunking and encoding happen in one place.
//!
//! Search is hybrid: the dense ranking from the pool's vectors and a BM25
//! ranking over the same slices, merged by reciprocal rank fusion. A dense
//! static model alone loses to BM25 on conversation (exact names, numbers,
//! identifiers); together they beat both. The BM25 indexes are in memory,
//! one per namespace, built from the pool on the first search that needs them
//! and kept current by [`Memory::write`]; like every index they are derived
//! from the pool. Above [`LEXICAL_MAX_SLICES`] slices in scope, search is dense only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::chunk;
use crate::encoder::Encoder;
use crate::lexical::{self, Bm25};
use crate::pool::{Hit, Pool, PoolOptions, Scope};
use crate::slice::{NewSlice, Slice, Source};
use crate::Result;

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

/// Slices in scope above which search skips the in-memory BM25 index.
pub const LEXICAL_MAX_SLICES: u64 = 50_000;

/// Candidates each ranking contributes before fusion, per result wanted.
const FUSION_DEPTH: usize = 3;

/// A pool with the encoder whose vectors it holds.
pub struct Memory {
    pool: Arc<Pool>,
    encoder: Arc<dyn Encoder>,
    slice_tokens: usize,
    /// BM25 per namespace, for the namespaces searched so far.
    lexical: Mutex<HashMap<String, Bm25>>,
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
            PoolOptions {
                create,
                read_only,
                budget_bytes,
                encoder_fingerprint: encoder.fingerprint(),
                dim: encoder.dim(),
            },
        )?;
        Ok(Memory::new(Arc::new(pool), encoder))
    }

    pub fn new(pool: Arc<Pool>, encoder: Arc<dyn Encoder>) -> Memory {
        Memory {
            pool,
            encoder,
            slice_tokens: chunk::SLICE_TOKENS,
            lexical: Mutex::new(HashMap::new()),
        }
    }

    /// Use a different slice size (tests and benchmarks with small windows).
    pub fn with_slice_tokens(mut self, tokens: usize) -> Memory {
        self.slice_tokens = tokens.max(16);
        self
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
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
        let count = |s: &str| self.encoder.count_tokens(s);
        let mut slices = Vec::new();
        for unit in units {
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
        }
        if slices.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<&str> = slices.iter().map(|s| s.text.as_str()).collect();
        let vectors = self.encoder.encode_batch(&texts);
        let batch: Vec<(NewSlice, Vec<f32>)> = slices.into_iter().zip(vectors).collect();
        let ids = self.pool.append(&batch)?;
        let mut lex = self.lexical();
        for ((slice, _), id) in batch.iter().zip(&ids) {
            if let Some(index) = lex.get_mut(&slice.namespace) {
                index.add(*id, &slice.text);
            }
        }
        Ok(ids)
    }

    fn lexical(&self) -> MutexGuard<'_, HashMap<String, Bm25>> {
        self.lexical.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids and scores of the `k` slices nearest to `query`: dense and BM25
    /// rankings fused by reciprocal rank. Scores are fused rank scores.
    pub fn search(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        if query.trim().is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let depth = k * FUSION_DEPTH;
        let v = self.encoder.encode(query);
        let dense = self.pool.search(&v, depth, scope)?;
        let Some(lex) = self.lexical_search(query, depth, scope)? else {
            let mut dense = dense;
            dense.truncate(k);
            return Ok(dense);
        };
        let dense_ranked: Vec<(u64, f32)> = dense.iter().map(|h| (h.meta.id, h.score)).collect();
        let mut metas: HashMap<u64, crate::slice::SliceMeta> =
            dense.into_iter().map(|h| (h.meta.id, h.meta)).collect();
        let mut out = Vec::with_capacity(k);
        for (id, score) in lexical::rrf(&[dense_ranked, lex], depth) {
            // A BM25 hit may have been deleted or evicted since it was indexed.
            let Some(meta) = metas.remove(&id).or_else(|| self.pool.meta(id)) else {
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

    /// BM25 over the namespaces in scope, loading their indexes on first use;
    /// `None` when the scope is too large for in-memory indexes.
    fn lexical_search(
        &self,
        query: &str,
        k: usize,
        scope: Scope<'_>,
    ) -> Result<Option<Vec<(u64, f32)>>> {
        let namespaces: Vec<(String, u64)> = match scope {
            Scope::Namespace(ns) => self
                .pool
                .namespaces()
                .into_iter()
                .filter(|(n, _)| n == ns)
                .collect(),
            Scope::All => self.pool.namespaces(),
        };
        if namespaces.iter().map(|(_, n)| n).sum::<u64>() > LEXICAL_MAX_SLICES {
            return Ok(None);
        }
        let mut lex = self.lexical();
        for (ns, _) in &namespaces {
            if !lex.contains_key(ns) {
                let mut index = Bm25::new();
                for m in self.pool.metas(Scope::Namespace(ns)) {
                    if let Some(slice) = self.pool.get(m.id)? {
                        index.add(m.id, &slice.text);
                    }
                }
                lex.insert(ns.clone(), index);
            }
        }
        let lists: Vec<Vec<(u64, f32)>> = namespaces
            .iter()
            .filter_map(|(ns, _)| lex.get(ns))
            .map(|index| index.search(query, k))
            .collect();
        Ok(Some(match lists.len() {
            0 => Vec::new(),
            1 => lists.into_iter().next().unwrap_or_default(),
            // BM25 scores of different namespaces share a scale closely enough to merge.
            _ => {
                let mut all: Vec<(u64, f32)> = lists.into_iter().flatten().collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                all
            }
        }))
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
