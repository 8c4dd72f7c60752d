//! A static embedding model in the Model2Vec format: a tokenizer and one embedding table.
//!
//! Encoding a text is: tokenize it (no special tokens, no truncation), take the table row of
//! every token (times its per-token weight when the model has one), average, normalize. The
//! unknown token is dropped, as the Python `model2vec` package does; a text made only of
//! unknown tokens (say, a lone emoji) is encoded from rows picked by a hash of its words, so
//! it still gets a vector of its own.
//!
//! Speed comes from a per-thread cache of word → token ids. For tokenizers whose normalizer
//! and pre-tokenizer are BERT's (the bundled model's, and most Model2Vec models'), a text is
//! cut at ASCII whitespace and ASCII punctuation — cuts the tokenizer itself always makes —
//! and each piece is tokenized once per thread; later occurrences are a hash lookup. Other
//! tokenizers tokenize each text whole.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use safetensors::{Dtype, SafeTensors};
use tokenizers::Tokenizer;

use super::{normalize, Encoder};
use crate::{Error, Result};

/// The bundled model's files, compiled into the binary (see `assets/model/SOURCE.md`).
const BUNDLED_TOKENIZER: &[u8] = include_bytes!("../../assets/model/tokenizer.json");
const BUNDLED_TABLE: &[u8] = include_bytes!("../../assets/model/model.safetensors");
const BUNDLED_CONFIG: &[u8] = include_bytes!("../../assets/model/config.json");
/// The name the bundled model's fingerprint carries.
pub const BUNDLED_NAME: &str = "uctx-minilm-l6-static-256";
/// The bundled model's fingerprint: what loading it computes (a test checks the two agree),
/// known without loading it, so that a pool can be opened while the model loads, and an open
/// does not hash the whole table.
pub const BUNDLED_FINGERPRINT: &str = "uctx-minilm-l6-static-256:73f5ab0777254a52:256";
/// The bundled model's dimension.
pub const BUNDLED_DIM: usize = 256;

/// Pieces longer than this (in bytes) are tokenized every time instead of cached.
const MAX_CACHED_PIECE: usize = 48;
/// A thread's cache for one model is emptied when it reaches this many pieces.
const MAX_CACHE_ENTRIES: usize = 1 << 18;
/// Below this many texts (or bytes), `encode_batch` stays on the calling thread.
const PARALLEL_MIN_TEXTS: usize = 32;
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

/// A Model2Vec-format static embedding model.
///
/// Cheap to share: clones share the table and tokenizer.
#[derive(Clone)]
pub struct StaticEncoder {
    inner: Arc<Inner>,
}

struct Inner {
    /// Identifies this loaded model in the per-thread piece caches.
    id: u64,
    tokenizer: Tokenizer,
    /// The embedding table.
    table: Table,
    dim: usize,
    vocab: usize,
    unk: Option<u32>,
    /// Whether pieces cut at ASCII whitespace and punctuation tokenize exactly as whole texts.
    piecewise: bool,
    /// First bytes of the tokenizer's added tokens (`[CLS]`…): a word holding one is
    /// tokenized whole, so that an added token written in the text is still found.
    added_starts: [bool; 256],
    /// The added tokens' texts.
    added: Vec<String>,
    /// Pieces tokenized by any thread, shared so that new threads start warm.
    shared: Shared,
    name: String,
    fingerprint: String,
}

impl std::fmt::Debug for StaticEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEncoder")
            .field("fingerprint", &self.inner.fingerprint)
            .field("vocab", &self.inner.vocab)
            .field("dim", &self.inner.dim)
            .finish()
    }
}

impl StaticEncoder {
    /// The model compiled into the binary: 256-d static embeddings distilled from
    /// all-MiniLM-L6-v2 (see `tools/distill/`). Needs no file and no network.
    pub fn bundled() -> Result<StaticEncoder> {
        Self::from_parts(
            BUNDLED_NAME,
            Path::new("<bundled>"),
            BUNDLED_TOKENIZER,
            BUNDLED_TABLE,
            BUNDLED_CONFIG,
            Some(BUNDLED_FINGERPRINT),
        )
    }

    /// Load a Model2Vec-format directory: `tokenizer.json`, `model.safetensors` (tensor
    /// `embeddings`, optional `weights`, `mapping`, and `scales` for int8 tables) and
    /// `config.json`. Never downloads anything: a missing file is an error.
    pub fn load(dir: impl AsRef<Path>) -> Result<StaticEncoder> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(model_error(
                dir,
                "no such directory (models are never downloaded; fetch one yourself)",
            ));
        }
        let read = |name: &str| -> Result<Vec<u8>> {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| model_error(dir, format!("cannot read {name}: {e}")))
        };
        let tokenizer = read("tokenizer.json")?;
        let table = read("model.safetensors")?;
        // config.json only carries flags; a directory without one is still usable.
        let config = match std::fs::read(dir.join("config.json")) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"{}".to_vec(),
            Err(e) => return Err(model_error(dir, format!("cannot read config.json: {e}"))),
        };
        let name = model_name(&config);
        Self::from_parts(&name, dir, &tokenizer, &table, &config, None)
    }

    /// Build the model from its files' bytes. The tokenizer is parsed on a thread of its own
    /// while the table is read; `known_fingerprint` (the bundled model's) skips hashing.
    fn from_parts(
        name: &str,
        origin: &Path,
        tokenizer_json: &[u8],
        table_bytes: &[u8],
        config_json: &[u8],
        known_fingerprint: Option<&str>,
    ) -> Result<StaticEncoder> {
        let config: serde_json::Value = serde_json::from_slice(config_json)
            .map_err(|e| model_error(origin, format!("config.json is not valid JSON: {e}")))?;
        let (tokenizer, loaded) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| {
                let mut tokenizer = Tokenizer::from_bytes(tokenizer_json)
                    .map_err(|e| model_error(origin, format!("tokenizer.json: {e}")))?;
                tokenizer
                    .with_truncation(None)
                    .map_err(|e| model_error(origin, format!("tokenizer.json: {e}")))?;
                tokenizer.with_padding(None);
                Ok::<_, Error>(tokenizer)
            });
            let loaded = tokenizer_meta(origin, tokenizer_json)
                .and_then(|meta| Ok((meta, load_table(origin, table_bytes)?)));
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|_| Err(model_error(origin, "parsing tokenizer.json failed")));
            (tokenizer, loaded)
        });
        let tokenizer = tokenizer?;
        let (tok_value, (table, vocab, dim)) = loaded?;
        let tok_vocab = tokenizer.get_vocab_size(true);
        if vocab < tok_vocab {
            return Err(model_error(
                origin,
                format!("the table has {vocab} rows but the tokenizer knows {tok_vocab} tokens"),
            ));
        }
        // Model2Vec's own flag; the trait promises unit vectors either way.
        let _ = config.get("normalize");

        let unk = tok_value
            .pointer("/model/unk_token")
            .and_then(|v| v.as_str())
            .and_then(|t| tokenizer.token_to_id(t));
        let (piecewise, added_starts) = piecewise_ok(&tok_value);
        let added: Vec<String> = tok_value
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.get("content").and_then(|c| c.as_str()))
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();

        let fingerprint = match known_fingerprint {
            Some(f) => f.to_string(),
            None => fingerprint(name, &tokenizer, &table, vocab, dim),
        };

        Ok(StaticEncoder {
            inner: Arc::new(Inner {
                id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
                tokenizer,
                table,
                dim,
                vocab,
                unk,
                piecewise,
                added_starts,
                added,
                shared: Shared::default(),
                name: name.to_string(),
                fingerprint,
            }),
        })
    }

    /// A copy of this model with caches of its own, as if just loaded (for cold timings).
    pub fn fresh(&self) -> StaticEncoder {
        let i = &self.inner;
        StaticEncoder {
            inner: Arc::new(Inner {
                id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
                tokenizer: i.tokenizer.clone(),
                table: i.table.clone(),
                dim: i.dim,
                vocab: i.vocab,
                unk: i.unk,
                piecewise: i.piecewise,
                added_starts: i.added_starts,
                added: i.added.clone(),
                shared: Shared::default(),
                name: i.name.clone(),
                fingerprint: i.fingerprint.clone(),
            }),
        }
    }

    /// Number of rows in the embedding table.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab
    }

    /// Token ids of `text` as the model sees them (no special tokens, unknown token kept).
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.inner.for_each_token(text, |id| ids.push(id));
        ids
    }

    /// Write this model as a Model2Vec directory (float32 table, weights folded in), which
    /// the Python `model2vec` package and [`StaticEncoder::load`] both read.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tokenizer = self
            .inner
            .tokenizer
            .to_string(false)
            .map_err(|e| Error::Encoder(format!("serializing the tokenizer: {e}")))?;
        let mut bytes = Vec::with_capacity(self.inner.vocab * self.inner.dim * 4);
        self.inner
            .table
            .for_each_value(self.inner.vocab, self.inner.dim, |x| {
                bytes.extend_from_slice(&x.to_le_bytes())
            });
        let shape = vec![self.inner.vocab, self.inner.dim];
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, &bytes)
            .map_err(|e| Error::Encoder(format!("building the table: {e}")))?;
        let table = safetensors::serialize([("embeddings", view)], &None)
            .map_err(|e| Error::Encoder(format!("serializing the table: {e}")))?;
        let config = serde_json::json!({
            "model_type": "model2vec",
            "architectures": ["StaticModel"],
            "hidden_dim": self.inner.dim,
            "normalize": true,
            "seq_length": 1_000_000,
            "model_name": self.inner.name,
        });
        let write = |name: &str, data: &[u8]| {
            std::fs::write(dir.join(name), data)
                .map_err(|e| Error::io(format!("writing {}", dir.join(name).display()), e))
        };
        write("tokenizer.json", tokenizer.as_bytes())?;
        write("model.safetensors", &table)?;
        write("config.json", config.to_string().as_bytes())?;
        Ok(())
    }
}

impl Encoder for StaticEncoder {
    fn dim(&self) -> usize {
        self.inner.dim
    }

    fn fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }

    fn encode(&self, text: &str) -> Vec<f32> {
        self.inner.encode(text)
    }

    fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(texts.len());
        if threads <= 1 || (texts.len() < PARALLEL_MIN_TEXTS && bytes < PARALLEL_MIN_BYTES) {
            return texts.iter().map(|t| self.inner.encode(t)).collect();
        }
        // Contiguous shares of about equal bytes; each text is encoded independently, so
        // the result does not depend on how the texts are shared out.
        let per = bytes / threads + 1;
        let mut bounds = vec![0];
        let mut acc = 0;
        for (i, t) in texts.iter().enumerate() {
            acc += t.len() + 16;
            if acc >= per && bounds.len() < threads {
                bounds.push(i + 1);
                acc = 0;
            }
        }
        if bounds.last() != Some(&texts.len()) {
            bounds.push(texts.len());
        }
        let inner = &self.inner;
        std::thread::scope(|s| {
            let handles: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let share = &texts[w[0]..w[1]];
                    s.spawn(move || share.iter().map(|t| inner.encode(t)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(v) => v,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    fn count_tokens(&self, text: &str) -> usize {
        let mut n = 0;
        self.inner.for_each_token(text, |_| n += 1);
        n
    }
}

impl Inner {
    fn encode(&self, text: &str) -> Vec<f32> {
        let dim = self.dim;
        let mut acc = vec![0.0f32; dim];
        let mut known = 0usize;
        let mut unknown = 0usize;
        self.for_each_token(text, |id| {
            if Some(id) == self.unk || id as usize >= self.vocab {
                unknown += 1;
                return;
            }
            known += 1;
            self.table.add_row(&mut acc, id as usize, dim);
        });
        if known == 0 && unknown > 0 {
            // Nothing the model knows: rows chosen by a hash of each word, so that two
            // different emoji do not share one vector.
            for word in text.split_whitespace() {
                let mut h = Fx::default();
                h.write(word.as_bytes());
                let tok = (h.finish() % self.vocab as u64) as usize;
                self.table.add_row(&mut acc, tok, dim);
            }
        }
        normalize(&mut acc);
        acc
    }

    /// Call `f` with each token id of `text`, in order.
    fn for_each_token(&self, text: &str, mut f: impl FnMut(u32)) {
        if !self.piecewise {
            if let Ok(enc) = self.tokenizer.encode_fast(text, false) {
                enc.get_ids().iter().for_each(|&id| f(id));
            }
            return;
        }
        CACHES.with(|caches| {
            let mut caches = caches.borrow_mut();
            let cache = caches.for_model(self.id);
            for word in text.split([' ', '\t', '\n', '\r']) {
                if word.is_empty() {
                    continue;
                }
                if word.bytes().any(|b| self.added_starts[b as usize])
                    && self.added.iter().any(|a| word.contains(a.as_str()))
                {
                    self.piece(cache, word, &mut f);
                    continue;
                }
                let mut start = 0;
                for (i, b) in word.bytes().enumerate() {
                    if b.is_ascii_punctuation() {
                        if start < i {
                            self.piece(cache, &word[start..i], &mut f);
                        }
                        self.piece(cache, &word[i..i + 1], &mut f);
                        start = i + 1;
                    }
                }
                if start < word.len() {
                    self.piece(cache, &word[start..], &mut f);
                }
            }
        });
    }

    fn piece(&self, cache: &mut PieceCache, piece: &str, f: &mut impl FnMut(u32)) {
        if let Some(ids) = cache.get(piece) {
            ids.iter().for_each(|&id| f(id));
            return;
        }
        if piece.len() > MAX_CACHED_PIECE {
            if let Ok(enc) = self.tokenizer.encode_fast(piece, false) {
                enc.get_ids().iter().for_each(|&id| f(id));
            }
            return;
        }
        let shard = self.shared.shard(piece);
        let known = lock(shard).get(piece).cloned();
        let ids = match known {
            Some(ids) => ids,
            None => {
                let ids: Box<[u32]> = match self.tokenizer.encode_fast(piece, false) {
                    Ok(enc) => enc.get_ids().into(),
                    Err(_) => Box::new([]),
                };
                let mut shard = lock(shard);
                if shard.len() >= MAX_CACHE_ENTRIES / SHARDS {
                    shard.clear();
                }
                shard.insert(piece.into(), ids.clone());
                ids
            }
        };
        ids.iter().for_each(|&id| f(id));
        if cache.len() >= MAX_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(piece.into(), ids);
    }
}

/// The embedding table: float rows, or the int8 rows of the file kept as they are (a quarter
/// of the memory, and nothing to convert when the model loads).
#[derive(Clone)]
enum Table {
    /// `vocab × dim` rows, already multiplied by their per-row scale and per-token weight.
    F32(Vec<f32>),
    /// `rows × dim` codes as stored; a token's values are `code × row_scale[row] × weight`.
    I8 {
        codes: Vec<i8>,
        /// Each token's row (the model's `mapping`); the token itself without one.
        mapping: Option<Vec<usize>>,
        /// Each row's scale (the model's `scales`; 1 without them).
        row_scale: Vec<f32>,
        /// Each token's weight (the model's `weights`), if it has them.
        weights: Option<Vec<f32>>,
    },
}

impl Table {
    /// Add token `tok`'s row to `acc`.
    #[inline]
    fn add_row(&self, acc: &mut [f32], tok: usize, dim: usize) {
        match self {
            Table::F32(t) => {
                for (a, r) in acc.iter_mut().zip(&t[tok * dim..(tok + 1) * dim]) {
                    *a += r;
                }
            }
            Table::I8 {
                codes,
                mapping,
                row_scale,
                weights,
            } => {
                let row = mapping.as_ref().map_or(tok, |m| m[tok]);
                let k = row_scale[row] * weights.as_ref().map_or(1.0, |w| w[tok]);
                crate::pool::vector::add_scaled_i8(acc, &codes[row * dim..(row + 1) * dim], k);
            }
        }
    }

    /// Every value of the `vocab × dim` float table, token by token, as a float table would
    /// hold it (the fingerprint and `save` read it so).
    fn for_each_value(&self, vocab: usize, dim: usize, mut f: impl FnMut(f32)) {
        match self {
            Table::F32(t) => t.iter().for_each(|&x| f(x)),
            Table::I8 {
                codes,
                mapping,
                row_scale,
                weights,
            } => {
                for tok in 0..vocab {
                    let row = mapping.as_ref().map_or(tok, |m| m[tok]);
                    let s = row_scale[row];
                    for &c in &codes[row * dim..(row + 1) * dim] {
                        let x = c as f32 * s;
                        f(weights.as_ref().map_or(x, |w| x * w[tok]));
                    }
                }
            }
        }
    }
}

type PieceCache = HashMap<Box<str>, Box<[u32]>, BuildHasherDefault<Fx>>;

/// Shards of the cache shared by all threads; a thread's own cache is consulted first.
const SHARDS: usize = 16;

struct Shared {
    shards: Vec<Mutex<PieceCache>>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(PieceCache::default()))
                .collect(),
        }
    }
}

impl Shared {
    fn shard(&self, piece: &str) -> &Mutex<PieceCache> {
        let mut h = Fx::default();
        h.write(piece.as_bytes());
        &self.shards[(h.finish() >> 32) as usize % SHARDS]
    }
}

/// A cache stays usable after a panic elsewhere: it only ever holds complete entries.
fn lock(m: &Mutex<PieceCache>) -> std::sync::MutexGuard<'_, PieceCache> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Caches {
    /// Most recently used first; a thread rarely sees more than one model.
    models: Vec<(u64, PieceCache)>,
}

impl Caches {
    fn for_model(&mut self, id: u64) -> &mut PieceCache {
        let pos = match self.models.iter().position(|(m, _)| *m == id) {
            Some(p) => p,
            None => {
                // Keep caches for a few models per thread; drop the oldest.
                if self.models.len() >= 4 {
                    self.models.pop();
                }
                self.models.push((id, PieceCache::default()));
                self.models.len() - 1
            }
        };
        if pos != 0 {
            self.models.swap(0, pos);
        }
        &mut self.models[0].1
    }
}

thread_local! {
    static CACHES: RefCell<Caches> = RefCell::new(Caches::default());
}

/// A small fast non-cryptographic hash (the Fx hash of rustc), for the piece cache and the
/// fingerprint.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // A final avalanche so that the low bits (used by the hash table) are mixed.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

fn model_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::EncoderModel {
        path: PathBuf::from(path),
        detail: detail.into(),
    }
}

/// A short name for a model directory's fingerprint, from its config.json: its
/// `model_name` (written by [`StaticEncoder::save`]), else `m2v-` and the name of the model it
/// came from.
fn model_name(config: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let raw = field("model_name").unwrap_or_else(|| {
        let base = field("base_model_name")
            .or_else(|| field("tokenizer_name"))
            .unwrap_or_else(|| "model2vec".to_string());
        format!("m2v-{base}")
    });
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Whether cutting texts at ASCII whitespace and punctuation gives exactly the tokenizer's
/// own result, and the first characters of its added tokens.
///
/// True when the normalizer is BERT's (or absent) and the pre-tokenizer is BERT's: the
/// normalizer maps `\t\n\r` to spaces and never merges characters across a space or an
/// ASCII punctuation mark, and the pre-tokenizer splits at every space and isolates every
/// punctuation mark, so the model never sees a token that spans such a cut.
fn piecewise_ok(tok: &serde_json::Value) -> (bool, [bool; 256]) {
    let normalizer_ok = match tok.get("normalizer") {
        None | Some(serde_json::Value::Null) => true,
        Some(n) => n.get("type").and_then(|t| t.as_str()) == Some("BertNormalizer"),
    };
    let pre_ok =
        tok.pointer("/pre_tokenizer/type").and_then(|t| t.as_str()) == Some("BertPreTokenizer");
    let mut starts = [false; 256];
    let mut added_ok = true;
    if let Some(added) = tok.get("added_tokens").and_then(|a| a.as_array()) {
        for t in added {
            let content = t.get("content").and_then(|c| c.as_str()).unwrap_or("");
            let strips = ["lstrip", "rstrip", "single_word"]
                .iter()
                .any(|k| t.get(*k).and_then(|b| b.as_bool()).unwrap_or(false));
            if strips || content.is_empty() || content.chars().any(char::is_whitespace) {
                added_ok = false;
            }
            if let Some(&b) = content.as_bytes().first() {
                starts[b as usize] = true;
            }
        }
    }
    (normalizer_ok && pre_ok && added_ok, starts)
}

/// The identity of what a model computes: its vocabulary (by id) and its table, so that the
/// same model saved elsewhere keeps its fingerprint.
fn fingerprint(
    name: &str,
    tokenizer: &Tokenizer,
    table: &Table,
    vocab: usize,
    dim: usize,
) -> String {
    let mut h = Fx::default();
    let mut by_id: Vec<(u32, String)> = tokenizer
        .get_vocab(true)
        .into_iter()
        .map(|(t, id)| (id, t))
        .collect();
    by_id.sort_unstable();
    for (id, t) in &by_id {
        h.write_u32(*id);
        h.write(t.as_bytes());
    }
    table.for_each_value(vocab, dim, |x| h.write_u32(x.to_bits()));
    format!("{name}:{:016x}:{dim}", h.finish())
}

/// What the encoder reads of `tokenizer.json` beside the tokenizer itself: the normalizer,
/// the pre-tokenizer, the added tokens and the unknown token, as one JSON object (the
/// vocabulary is skipped, not copied).
fn tokenizer_meta(origin: &Path, json: &[u8]) -> Result<serde_json::Value> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        normalizer: serde_json::Value,
        #[serde(default)]
        pre_tokenizer: serde_json::Value,
        #[serde(default)]
        added_tokens: serde_json::Value,
        #[serde(default)]
        model: Model,
    }
    #[derive(serde::Deserialize, Default)]
    struct Model {
        #[serde(default)]
        unk_token: serde_json::Value,
    }
    let m: Meta = serde_json::from_slice(json)
        .map_err(|e| model_error(origin, format!("tokenizer.json is not valid JSON: {e}")))?;
    Ok(serde_json::json!({
        "normalizer": m.normalizer,
        "pre_tokenizer": m.pre_tokenizer,
        "added_tokens": m.added_tokens,
        "model": { "unk_token": m.model.unk_token },
    }))
}

/// Read the embedding table with its scales, per-token weights and token mapping: an int8
/// table as it is stored, any other as `vocab × dim` float32 rows with all of them applied.
fn load_table(origin: &Path, bytes: &[u8]) -> Result<(Table, usize, usize)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| model_error(origin, format!("model.safetensors: {e}")))?;
    let emb = st
        .tensor("embeddings")
        .or_else(|_| st.tensor("embedding.weight"))
        .map_err(|_| model_error(origin, "model.safetensors has no `embeddings` tensor"))?;
    let shape = emb.shape();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(model_error(
            origin,
            format!("the embedding table has shape {shape:?}; expected [rows, dim]"),
        ));
    }
    let (rows, dim) = (shape[0], shape[1]);
    let scales = match st.tensor("scales") {
        Ok(scales) => {
            let scales = to_f32(origin, "scales", scales.dtype(), scales.data())?;
            if scales.len() != rows {
                return Err(model_error(
                    origin,
                    "`scales` needs one value per table row",
                ));
            }
            Some(scales)
        }
        Err(_) => None,
    };
    let mapping = match st.tensor("mapping") {
        Ok(m) => Some(to_index(origin, m.dtype(), m.data())?),
        Err(_) => None,
    };
    let weights = match st.tensor("weights") {
        Ok(w) => Some(to_f32(origin, "weights", w.dtype(), w.data())?),
        Err(_) => None,
    };
    let vocab = match (&mapping, &weights) {
        (Some(m), _) => m.len(),
        (None, Some(w)) => w.len(),
        (None, None) => rows,
    };
    if let Some(w) = &weights {
        if w.len() != vocab {
            return Err(model_error(origin, "`weights` needs one value per token"));
        }
    }
    if let Some(&row) = mapping.iter().flatten().find(|&&r| r >= rows) {
        return Err(model_error(
            origin,
            format!("`mapping` points at row {row} of {rows}"),
        ));
    }
    let not_finite = |v: &Option<Vec<f32>>| v.iter().flatten().any(|x| !x.is_finite());
    if not_finite(&scales) || not_finite(&weights) {
        return Err(model_error(
            origin,
            "the embedding table holds NaN or infinite values",
        ));
    }
    if emb.dtype() == Dtype::I8 {
        let codes: Vec<i8> = emb.data().iter().map(|&b| b as i8).collect();
        if codes.len() != rows * dim {
            return Err(model_error(origin, "the embedding table is cut short"));
        }
        let table = Table::I8 {
            codes,
            mapping,
            row_scale: scales.unwrap_or_else(|| vec![1.0; rows]),
            weights,
        };
        return Ok((table, vocab, dim));
    }
    let mut values = to_f32(origin, "embeddings", emb.dtype(), emb.data())?;
    if values.len() != rows * dim {
        return Err(model_error(origin, "the embedding table is cut short"));
    }
    if let Some(scales) = &scales {
        for (row, s) in values.chunks_exact_mut(dim).zip(scales) {
            row.iter_mut().for_each(|x| *x *= s);
        }
    }
    let table = if mapping.is_none() && weights.is_none() {
        values
    } else {
        let mut out = Vec::with_capacity(vocab * dim);
        for tok in 0..vocab {
            let row = mapping.as_ref().map_or(tok, |m| m[tok]);
            let w = weights.as_ref().map_or(1.0, |w| w[tok]);
            out.extend(values[row * dim..(row + 1) * dim].iter().map(|x| x * w));
        }
        out
    };
    if table.iter().any(|x| !x.is_finite()) {
        return Err(model_error(
            origin,
            "the embedding table holds NaN or infinite values",
        ));
    }
    Ok((Table::F32(table), vocab, dim))
}

fn to_f32(origin: &Path, name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        Dtype::I8 => data.iter().map(|&b| b as i8 as f32).collect(),
        other => {
            return Err(model_error(
                origin,
                format!("tensor `{name}` has type {other:?}; supported: F32, F16, BF16, F64, I8"),
            ))
        }
    })
}

fn to_index(origin: &Path, dtype: Dtype, data: &[u8]) -> Result<Vec<usize>> {
    let v: Vec<i64> = match dtype {
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b)
            })
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        other => {
            return Err(model_error(
                origin,
                format!("tensor `mapping` has type {other:?}; supported: I64, I32"),
            ))
        }
    };
    v.into_iter()
        .map(|x| {
            usize::try_from(x).map_err(|_| model_error(origin, "`mapping` holds a negative row"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fx_hash_mixes_low_bits() {
        let mut a = Fx::default();
        a.write(b"hello");
        let mut b = Fx::default();
        b.write(b"hellp");
        assert_ne!(a.finish() & 0xff, b.finish() & 0xff);
    }

    #[test]
    fn piecewise_only_for_bert_pipelines() {
        let bert = serde_json::json!({
            "normalizer": {"type": "BertNormalizer"},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "added_tokens": [{"content": "[CLS]", "lstrip": false, "rstrip": false}]
        });
        let (ok, starts) = piecewise_ok(&bert);
        assert!(ok);
        assert!(starts[b'[' as usize] && !starts[b'a' as usize]);
        let meta = serde_json::json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace"},
        });
        assert!(!piecewise_ok(&meta).0);
    }

    #[test]
    fn the_bundled_fingerprint_is_what_its_files_hash_to() {
        let computed = StaticEncoder::from_parts(
            BUNDLED_NAME,
            Path::new("<bundled>"),
            BUNDLED_TOKENIZER,
            BUNDLED_TABLE,
            BUNDLED_CONFIG,
            None,
        )
        .unwrap();
        // A changed bundled model needs a new BUNDLED_FINGERPRINT: the value printed here.
        assert_eq!(computed.fingerprint(), BUNDLED_FINGERPRINT);
        let bundled = StaticEncoder::bundled().unwrap();
        assert_eq!(bundled.fingerprint(), BUNDLED_FINGERPRINT);
        assert_eq!(bundled.dim(), BUNDLED_DIM);
    }

    #[test]
    fn tokenizer_meta_reads_what_the_whole_file_says() {
        let whole: serde_json::Value = serde_json::from_slice(BUNDLED_TOKENIZER).unwrap();
        let meta = tokenizer_meta(Path::new("<bundled>"), BUNDLED_TOKENIZER).unwrap();
        for key in [
            "/normalizer",
            "/pre_tokenizer",
            "/added_tokens",
            "/model/unk_token",
        ] {
            assert_eq!(meta.pointer(key), whole.pointer(key), "{key}");
        }
        assert_eq!(piecewise_ok(&meta), piecewise_ok(&whole));
        let bad = tokenizer_meta(Path::new("x"), b"{not json").unwrap_err();
        assert!(
            bad.to_string().contains("tokenizer.json is not valid JSON"),
            "{bad}"
        );
    }
}
