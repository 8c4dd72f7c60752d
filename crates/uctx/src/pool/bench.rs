//! `uctx bench scale`: fill a pool from a real corpus and measure density,
//! ingest speed, search latency, recall against exact search, memory and
//! time to open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use serde::Serialize;

use super::{IndexStats, LexicalStats, Pool, PoolOptions, Scope};
use crate::encoder::Encoder;
use crate::slice::{NewSlice, Source};
use crate::{chunk, Error, Result};

/// What to measure.
pub struct ScaleOptions<'a> {
    /// A directory of text files (source code, documentation).
    pub corpus: PathBuf,
    /// Where the pool is built; emptied first.
    pub pool_dir: PathBuf,
    /// Stop ingesting once the pool holds this many bytes; the corpus is
    /// ingested again into further namespaces until then.
    pub target_bytes: u64,
    /// Stop after this many slices (0: no limit).
    pub max_slices: u64,
    /// Search queries to time, per scope.
    pub queries: usize,
    /// Called now and then with (bytes on disk, target bytes).
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
    pub cancel: Option<&'a AtomicBool>,
}

/// Latency of top-10 searches, milliseconds.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Latency {
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Resident memory, split into private (anonymous) pages and file-backed pages.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Memory {
    pub private_bytes: u64,
    pub file_bytes: u64,
}

/// The bench's findings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleReport {
    pub corpus: String,
    pub encoder: String,
    /// Tokens are counted with the encoder's own tokenizer.
    pub tokenizer: String,
    pub files: u64,
    pub passes: u64,
    pub namespaces: u64,
    pub slices: u64,
    pub tokens: u64,
    pub ingest_seconds: f64,
    pub ingest_tokens_per_sec: f64,
    pub bytes_on_disk: u64,
    pub bytes_per_slice: f64,
    pub tokens_per_slice: f64,
    pub tokens_per_gb: f64,
    pub index: String,
    /// Seconds a writer took to build the whole lexical index again from
    /// the log (its files removed), as an older pool's first open does.
    pub lexical_rebuild_seconds: f64,
    /// Whether open, search and memory were measured in a process of their
    /// own (as a separate reader would see them) or in the one that built.
    pub probed_in: String,
    #[serde(flatten)]
    pub probe: Probe,
    /// Whole commands, each in a process of its own (filled by the CLI,
    /// which spawns them).
    pub processes: Processes,
}

/// Wall time of whole processes on the built pool, process start
/// included: warm (the page cache holds the pool) and cold (the page cache
/// dropped first; `None` where that is not permitted).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Processes {
    /// Seconds `Pool::open` took in a process of its own.
    pub open_warm_s: f64,
    pub open_cold_s: Option<f64>,
    /// Milliseconds of `uctx status` and `uctx recall QUERY`, the median of
    /// the warm runs.
    pub status_warm_ms: f64,
    pub status_cold_ms: Option<f64>,
    pub recall_warm_ms: f64,
    pub recall_cold_ms: Option<f64>,
    pub recall_query: String,
    pub warm_runs: usize,
    /// Why cold was not measured, when it was not.
    pub cold_note: Option<String>,
}

/// What a process that opens the pool and searches it sees.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Probe {
    pub open_seconds: f64,
    /// How the open used the checkpoint.
    #[serde(default)]
    pub checkpoint: Option<super::CheckpointUse>,
    pub index_stats: IndexStats,
    /// Rows whose codes a search over every namespace scored, on average.
    pub rows_scanned_per_search: f64,
    pub search_all: Latency,
    pub search_namespace: Latency,
    /// Search against [`Pool::search_exact`] on the first queries.
    pub recall_at_10: f64,
    pub recall_queries: usize,
    /// The lexical index, and top-10 BM25 and hybrid (what `Memory::search`
    /// does: dense and BM25, fused) over every namespace and over one.
    pub lexical: LexicalStats,
    pub lexical_search_all: Latency,
    pub lexical_search_namespace: Latency,
    pub hybrid_search_all: Latency,
    pub hybrid_search_namespace: Latency,
    pub memory_after_open: Memory,
    pub memory_searching: Memory,
}

/// Resident memory of this process, from `/proc/self/smaps_rollup`.
pub fn resident_memory() -> Memory {
    let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") else {
        return Memory::default();
    };
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let rss = field("Rss:");
    let anon = field("Anonymous:");
    Memory {
        private_bytes: anon,
        file_bytes: rss.saturating_sub(anon),
    }
}

fn is_text(bytes: &[u8]) -> bool {
    !bytes[..bytes.len().min(8192)].contains(&0)
}

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => files.push(e.path()),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    Latency {
        queries: ms.len(),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

type Batch = Vec<(NewSlice, Vec<f32>)>;

/// Queries also answered by exact search, for recall.
const RECALL_QUERIES: usize = 50;

/// Fill a pool from `opts.corpus` with `encoder` and measure it, all in
/// this process.
pub fn run_scale(encoder: Arc<dyn Encoder>, opts: &ScaleOptions<'_>) -> Result<ScaleReport> {
    let mut report = build_scale(encoder.clone(), opts)?;
    report.probe = probe_pool(encoder, &opts.pool_dir, opts.queries, None)?;
    report.probed_in = "the building process".into();
    Ok(report)
}

/// Fill a pool from `opts.corpus` with `encoder`; measures ingest and size.
pub fn build_scale(encoder: Arc<dyn Encoder>, opts: &ScaleOptions<'_>) -> Result<ScaleReport> {
    let files = corpus_files(&opts.corpus);
    if files.is_empty() {
        return Err(Error::invalid(format!(
            "no files under {}; pass --corpus with a directory of text",
            opts.corpus.display()
        )));
    }
    if opts.pool_dir.exists() {
        std::fs::remove_dir_all(&opts.pool_dir)
            .map_err(|e| Error::io(format!("cannot empty {}", opts.pool_dir.display()), e))?;
    }
    let pool_opts = PoolOptions {
        create: true,
        read_only: false,
        budget_bytes: Some(opts.target_bytes.saturating_mul(2).max(1 << 30)),
        encoder_fingerprint: encoder.fingerprint(),
        dim: encoder.dim(),
    };
    let pool = Pool::open(&opts.pool_dir, pool_opts.clone())?;
    let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let t0 = Instant::now();
    let mut passes = 0u64;
    let mut report = ScaleReport {
        corpus: opts.corpus.display().to_string(),
        encoder: encoder.fingerprint(),
        tokenizer: format!("the tokenizer of encoder {}", encoder.fingerprint()),
        files: files.len() as u64,
        index: format!(
            "IVF segments (~{} rows a list, {:.0}% of lists probed) + exact tail",
            super::ann::Tuning::default().list_rows,
            super::ann::PROBE_FRACTION * 100.0
        ),
        ..ScaleReport::default()
    };
    let limit_reached = |pool: &Pool| {
        let st = pool.stats();
        st.bytes_on_disk >= opts.target_bytes
            || (opts.max_slices > 0 && st.slices >= opts.max_slices)
    };
    'outer: while !limit_reached(&pool) && !cancelled() {
        let ns = format!("pass-{passes}");
        passes += 1;
        let (tx, rx) = mpsc::sync_channel::<Batch>(threads * 2);
        let stop = AtomicBool::new(false);
        let files = &files;
        let stop_ref = &stop;
        let mut result = Ok(());
        std::thread::scope(|scope| {
            for t in 0..threads {
                let tx = tx.clone();
                let encoder = encoder.clone();
                let ns = ns.clone();
                scope.spawn(move || {
                    let count = |s: &str| encoder.count_tokens(s);
                    let mut batch: Batch = Vec::new();
                    for (i, f) in files.iter().enumerate() {
                        if i % threads != t || stop_ref.load(Ordering::Relaxed) {
                            continue;
                        }
                        let Ok(bytes) = std::fs::read(f) else {
                            continue;
                        };
                        if !is_text(&bytes) {
                            continue;
                        }
                        let text = String::from_utf8_lossy(&bytes);
                        let pieces = chunk::split(&text, chunk::SLICE_TOKENS, &count);
                        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                        let vecs = encoder.encode_batch(&refs);
                        for (p, v) in pieces.iter().zip(vecs) {
                            batch.push((
                                NewSlice {
                                    namespace: ns.clone(),
                                    source: Source::Document,
                                    tokens: count(p) as u32,
                                    text: p.clone(),
                                    turn: 0,
                                    ext_id: None,
                                    salience: 0.6,
                                },
                                v,
                            ));
                        }
                        if batch.len() >= 256 && tx.send(std::mem::take(&mut batch)).is_err() {
                            return;
                        }
                    }
                    if !batch.is_empty() {
                        let _ = tx.send(batch);
                    }
                });
            }
            drop(tx);
            for batch in rx {
                if result.is_err() || stop.load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(e) = pool.append(&batch) {
                    result = Err(e);
                    stop.store(true, Ordering::Relaxed);
                    continue;
                }
                if let Some(p) = opts.progress {
                    p(pool.stats().bytes_on_disk, opts.target_bytes);
                }
                if limit_reached(&pool) || cancelled() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
        result?;
        if cancelled() {
            return Err(Error::Cancelled);
        }
        if pool.stats().slices == 0 {
            break 'outer;
        }
    }
    report.ingest_seconds = t0.elapsed().as_secs_f64();
    let st = pool.stats();
    report.passes = passes;
    report.namespaces = st.namespaces;
    report.slices = st.slices;
    report.tokens = st.tokens;
    report.ingest_tokens_per_sec = st.tokens as f64 / report.ingest_seconds.max(1e-9);
    drop(pool);

    // The lexical index again from the log alone, as an older pool's first
    // open builds it.
    for e in std::fs::read_dir(&opts.pool_dir)
        .map_err(|e| Error::io("cannot list the pool", e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if super::lex::is_segment_file(&name) {
            std::fs::remove_file(e.path())
                .map_err(|e| Error::io(format!("cannot remove {name}"), e))?;
        }
    }
    let t = Instant::now();
    drop(Pool::open(&opts.pool_dir, pool_opts)?);
    report.lexical_rebuild_seconds = t.elapsed().as_secs_f64();

    // Everything in the directory counts, the lock file included.
    report.bytes_on_disk = std::fs::read_dir(&opts.pool_dir)
        .map_err(|e| Error::io("cannot list the pool", e))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    report.bytes_per_slice = report.bytes_on_disk as f64 / report.slices.max(1) as f64;
    report.tokens_per_slice = report.tokens as f64 / report.slices.max(1) as f64;
    report.tokens_per_gb = report.tokens as f64 / (report.bytes_on_disk as f64 / 1e9);

    Ok(report)
}

/// Open the pool at `dir` read-only and measure what a searching process
/// sees: time to open, memory, latency of top-10 searches over every
/// namespace and over one, and recall@10 against exact search.
pub fn probe_pool(
    encoder: Arc<dyn Encoder>,
    dir: &Path,
    queries: usize,
    probe: Option<f32>,
) -> Result<Probe> {
    let pool_opts = PoolOptions {
        create: false,
        read_only: true,
        budget_bytes: None,
        encoder_fingerprint: encoder.fingerprint(),
        dim: encoder.dim(),
    };
    let mut report = Probe::default();
    let t1 = Instant::now();
    let pool = Pool::open(dir, pool_opts)?;
    report.open_seconds = t1.elapsed().as_secs_f64();
    report.checkpoint = Some(pool.checkpoint_use());
    report.memory_after_open = resident_memory();
    if let Some(p) = probe {
        pool.set_index_tuning(super::ann::Tuning {
            probe: p,
            ..Default::default()
        });
    }
    report.index_stats = pool.index_stats();

    // Queries: the opening words of slices spread over the pool.
    let mut qs = Vec::with_capacity(queries);
    let mut texts = Vec::with_capacity(queries);
    for id in pool.sample(queries) {
        if let Some(s) = pool.get(id)? {
            let words: Vec<&str> = s.text.split_whitespace().take(12).collect();
            let text = words.join(" ");
            qs.push((encoder.encode(&text), s.meta.namespace.clone()));
            texts.push((text, s.meta.namespace));
        }
    }
    let mut all_ms = Vec::with_capacity(qs.len());
    let mut scanned = 0u64;
    let mut ns_ms = Vec::with_capacity(qs.len());
    let mut recall_sum = 0.0;
    let mut recall_n = 0usize;
    for (q, ns) in &qs {
        let t = Instant::now();
        let before = super::ann::rows_scanned();
        let hits = pool.search(q, 10, Scope::All)?;
        scanned += super::ann::rows_scanned() - before;

        all_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        pool.search(q, 10, Scope::Namespace(ns))?;
        ns_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if recall_n < RECALL_QUERIES {
            recall_n += 1;
            let exact = pool.search_exact(q, 10, Scope::All)?;
            let found = hits
                .iter()
                .filter(|h| exact.iter().any(|e| e.meta.id == h.meta.id))
                .count();
            recall_sum += found as f64 / exact.len().max(1) as f64;
        }
    }
    report.memory_searching = resident_memory();
    report.recall_at_10 = recall_sum / recall_n.max(1) as f64;
    report.recall_queries = recall_n;
    report.rows_scanned_per_search = scanned as f64 / all_ms.len().max(1) as f64;
    report.search_all = latency(all_ms);
    report.search_namespace = latency(ns_ms);

    // BM25 alone, then the hybrid search sessions use (encoding included).
    let pool = Arc::new(pool);
    let memory = crate::memory::Memory::new(pool.clone(), encoder);
    let mut times: [Vec<f64>; 4] = Default::default();
    for (text, ns) in &texts {
        for (i, scope) in [Scope::All, Scope::Namespace(ns)].into_iter().enumerate() {
            let t = Instant::now();
            pool.lexical_search(text, 10, scope)?;
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            memory.search(text, 10, scope)?;
            times[2 + i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let [la, ln, ha, hn] = times;
    report.lexical = pool.lexical_stats();
    report.lexical_search_all = latency(la);
    report.lexical_search_namespace = latency(ln);
    report.hybrid_search_all = latency(ha);
    report.hybrid_search_namespace = latency(hn);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bag of bytes, enough to exercise the harness.
    struct Bytes;

    impl Encoder for Bytes {
        fn dim(&self) -> usize {
            16
        }
        fn fingerprint(&self) -> String {
            "bytes:16".into()
        }
        fn encode(&self, text: &str) -> Vec<f32> {
            let mut v = vec![0f32; 16];
            for b in text.bytes() {
                v[(b % 16) as usize] += 1.0;
            }
            crate::encoder::normalize(&mut v);
            v
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }

    #[test]
    fn scale_bench_runs_on_a_small_corpus() {
        let tmp = tempfile::tempdir().unwrap();
        let corpus = tmp.path().join("corpus");
        std::fs::create_dir_all(&corpus).unwrap();
        for i in 0..20 {
            let text: String = (0..400)
                .map(|w| format!("word{} ", (w * 7 + i) % 97))
                .collect();
            std::fs::write(corpus.join(format!("f{i}.txt")), text).unwrap();
        }
        std::fs::write(corpus.join("bin.dat"), [0u8, 1, 2, 3]).unwrap();
        let r = run_scale(
            Arc::new(Bytes),
            &ScaleOptions {
                corpus,
                pool_dir: tmp.path().join("pool"),
                target_bytes: 200_000,
                max_slices: 0,
                queries: 20,
                progress: None,
                cancel: None,
            },
        )
        .unwrap();
        assert!(r.bytes_on_disk >= 200_000, "{r:?}");
        assert!(r.passes >= 2);
        assert_eq!(r.files, 21);
        assert!(r.tokens > 0 && r.slices > 0);
        assert_eq!(r.probe.search_all.queries, 20);
        assert_eq!(r.probe.recall_queries, 20);
        // A pool this small is all in the index's exactly-searched tail, so
        // search and exact search must agree.
        assert_eq!(r.probe.index_stats.segments, 0);
        assert!((r.probe.recall_at_10 - 1.0).abs() < 1e-9, "{r:?}");
        assert!(r.tokens_per_gb > 0.0);
    }

    /// The real measurement, run by hand:
    /// `UCTX_SCALE_CORPUS=DIR UCTX_SCALE_MB=1000 cargo test --release -p uctx --lib real_scale -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn real_scale() {
        let Ok(corpus) = std::env::var("UCTX_SCALE_CORPUS") else {
            return;
        };
        let mb: u64 = std::env::var("UCTX_SCALE_MB")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100);
        let pool_dir = std::env::var("UCTX_SCALE_POOL")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join("uctx-scale-pool"));
        let enc = crate::encoder::StaticEncoder::bundled().unwrap();
        let r = run_scale(
            Arc::new(enc),
            &ScaleOptions {
                corpus: PathBuf::from(corpus),
                pool_dir,
                target_bytes: mb << 20,
                max_slices: 0,
                queries: 300,
                progress: None,
                cancel: None,
            },
        )
        .unwrap();
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    }
}
