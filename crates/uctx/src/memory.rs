//! A pool and its encoder, together: text in, slices out; queries in, hits out.
//!
//! Every writer of text (sessions, `ingest`) and every reader (`recall`, the
//! pager) goes through [`Memory`], so chunking and encoding happen in one place.

use std::path::Path;
use std::sync::Arc;

use crate::chunk;
use crate::encoder::Encoder;
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

/// A pool with the encoder whose vectors it holds.
pub struct Memory {
    pool: Arc<Pool>,
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
        self.pool.append(&batch)
    }

    /// The ids and scores of the `k` slices nearest to `query`.
    pub fn search(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        if query.trim().is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let v = self.encoder.encode(query);
        self.pool.search(&v, k, scope)
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
