//! `uctx bench churn`: a pool held at its budget while appends go on.
//!
//! The pool is filled to its budget, then takes `factor` times its budget
//! again in appends, so that the governor evicts and compacts all along. The
//! bench measures, over that steady state, the bytes the process wrote
//! (`wchar` and `write_bytes` of `/proc/self/io`: what it handed to the
//! kernel, and what reached the block layer) against the bytes of slice
//! records appended (write amplification), the latency of each append while
//! the pool filled (maintenance idle but for index seals and checkpoints)
//! and at the budget (eviction and compaction running beside it), and the
//! writer's peak private memory.
//!
//! Text is drawn from a fixed vocabulary by a seeded generator (so it
//! compresses about as prose does) and vectors are random unit vectors: the
//! figures are the pool's, not an encoder's.

use std::path::PathBuf;
use std::time::Instant;

use crate::scale::mb;
use anyhow::Context;
use uctx::pool::bench::{resident_memory, Latency};
use uctx::pool::{Pool, PoolOptions, WitnessEvent};
use uctx::slice::{NewSlice, Source};

pub struct Args {
    /// Where the pool is built (emptied first).
    pub pool_dir: PathBuf,
    /// The pool's budget, bytes.
    pub budget: u64,
    /// Appends at the budget, as a multiple of the budget.
    pub factor: f64,
    /// Slices per append.
    pub batch: usize,
}

/// Bytes this process has written, from `/proc/self/io`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// Bytes passed to write calls (`wchar`).
    pub handed: u64,
    /// Bytes that reached the block layer (`write_bytes`; 0 on a file
    /// system in memory).
    pub to_disk: u64,
}

fn written() -> Written {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Written {
        handed: field("wchar:"),
        to_disk: field("write_bytes:"),
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ChurnReport {
    pub budget_bytes: u64,
    pub slice_text_bytes: usize,
    pub batch: usize,
    /// Slice record bytes appended while filling, and at the budget.
    pub fill_appended: u64,
    pub steady_appended: u64,
    /// Appends at the budget, as a multiple of the budget.
    pub steady_factor: f64,
    /// What the process wrote at the budget (appends and maintenance).
    pub steady_written: Written,
    /// `steady_written.handed / steady_appended`.
    pub write_amplification: f64,
    /// `steady_written.to_disk / steady_appended` (0 when the block layer
    /// saw nothing: a file system in memory).
    pub write_amplification_disk: f64,
    /// Append latency, ms, while filling and at the budget.
    pub append_filling: Latency,
    pub append_at_budget: Latency,
    /// The pool at the end.
    pub slices: u64,
    pub bytes_on_disk: u64,
    pub maintenance_error: Option<String>,
    /// Peak private memory of the writer, bytes.
    pub peak_private_bytes: u64,
}

/// A seeded generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const WORDS: &[&str] = &[
    "the",
    "pool",
    "holds",
    "every",
    "slice",
    "of",
    "a",
    "session",
    "and",
    "its",
    "vector",
    "is",
    "searched",
    "when",
    "model",
    "asks",
    "for",
    "what",
    "it",
    "said",
    "before",
    "window",
    "drops",
    "oldest",
    "turns",
    "page",
    "memory",
    "disk",
    "log",
    "record",
    "checksum",
    "segment",
    "index",
    "budget",
    "eviction",
    "compaction",
    "writer",
    "reader",
    "kernel",
    "flush",
    "dirty",
    "pages",
    "thread",
    "lock",
    "file",
    "bytes",
    "time",
    "user",
    "answer",
    "question",
    "context",
    "token",
    "cache",
    "server",
    "request",
    "reply",
    "error",
    "fix",
    "open",
    "close",
    "write",
    "read",
];

fn text(rng: &mut Rng, bytes: usize) -> String {
    let mut t = String::with_capacity(bytes + 16);
    while t.len() < bytes {
        t.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        t.push(if rng.next().is_multiple_of(12) {
            '.'
        } else {
            ' '
        });
        // Numbers and names: what makes real text less repetitive.
        if rng.next().is_multiple_of(9) {
            t.push_str(&format!("{} ", rng.next() % 100_000));
        }
    }
    t
}

fn vector(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim)
        .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn latency(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    Latency {
        queries: ms.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

const DIM: usize = 256;
const TEXT_BYTES: usize = 1500;

pub fn run(a: &Args) -> anyhow::Result<ChurnReport> {
    if a.pool_dir.exists() {
        std::fs::remove_dir_all(&a.pool_dir)
            .with_context(|| format!("emptying {}", a.pool_dir.display()))?;
    }
    let pool = Pool::open(
        &a.pool_dir,
        PoolOptions {
            create: true,
            read_only: false,
            budget_bytes: Some(a.budget),
            encoder_fingerprint: "bench-churn".into(),
            dim: DIM,
        },
    )?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut peak = 0u64;
    let mut n = 0u64;
    let mut append = |pool: &Pool, rng: &mut Rng, peak: &mut u64| -> anyhow::Result<(f64, u64)> {
        let batch: Vec<(NewSlice, Vec<f32>)> = (0..a.batch)
            .map(|_| {
                n += 1;
                (
                    NewSlice {
                        namespace: format!("ns{}", n % 4),
                        source: Source::Document,
                        text: text(rng, TEXT_BYTES),
                        tokens: 300,
                        turn: 0,
                        ext_id: None,
                        salience: 0.5,
                    },
                    vector(rng, DIM),
                )
            })
            .collect();
        let t = Instant::now();
        let ids = pool.append(&batch)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let bytes = ids
            .iter()
            .filter_map(|&id| pool.meta(id))
            .map(|m| m.bytes)
            .sum::<u64>();
        if n.is_multiple_of(64) {
            *peak = (*peak).max(resident_memory().private_bytes);
        }
        // Now and then a slice is used again: eviction is not plain FIFO.
        if rng.next().is_multiple_of(8) {
            let ids = pool.sample(16);
            if let Some(&id) = ids.get((rng.next() % 16) as usize) {
                pool.record(&[WitnessEvent::Used(id)])?;
            }
        }
        Ok((ms, bytes))
    };
    // Fill to the budget.
    let mut filling = Vec::new();
    let mut fill_appended = 0u64;
    while pool.stats().bytes_on_disk < a.budget {
        let (ms, b) = append(&pool, &mut rng, &mut peak)?;
        filling.push(ms);
        fill_appended += b;
    }
    pool.settle();
    // At the budget: `factor` budgets of appends.
    let before = written();
    let target = (a.budget as f64 * a.factor) as u64;
    let mut steady = Vec::new();
    let mut steady_appended = 0u64;
    while steady_appended < target {
        let (ms, b) = append(&pool, &mut rng, &mut peak)?;
        steady.push(ms);
        steady_appended += b;
    }
    pool.settle();
    let after = written();
    peak = peak.max(resident_memory().private_bytes);
    let steady_written = Written {
        handed: after.handed - before.handed,
        to_disk: after.to_disk - before.to_disk,
    };
    let stats = pool.stats();
    Ok(ChurnReport {
        budget_bytes: a.budget,
        slice_text_bytes: TEXT_BYTES,
        batch: a.batch,
        fill_appended,
        steady_appended,
        steady_factor: steady_appended as f64 / a.budget as f64,
        steady_written,
        write_amplification: steady_written.handed as f64 / steady_appended.max(1) as f64,
        write_amplification_disk: steady_written.to_disk as f64 / steady_appended.max(1) as f64,
        append_filling: latency(filling),
        append_at_budget: latency(steady),
        slices: stats.slices,
        bytes_on_disk: stats.bytes_on_disk,
        maintenance_error: pool.maintenance_error(),
        peak_private_bytes: peak,
    })
}

pub fn table(r: &ChurnReport) -> String {
    let rows = [
        ("budget", mb(r.budget_bytes)),
        (
            "appends",
            format!(
                "{} slices of {} bytes of text a batch",
                r.batch, r.slice_text_bytes
            ),
        ),
        ("appended while filling", mb(r.fill_appended)),
        (
            "appended at the budget",
            format!(
                "{} ({:.1}× the budget)",
                mb(r.steady_appended),
                r.steady_factor
            ),
        ),
        (
            "written at the budget (handed / to disk)",
            format!(
                "{} / {}",
                mb(r.steady_written.handed),
                mb(r.steady_written.to_disk)
            ),
        ),
        (
            "write amplification (handed / to disk)",
            format!(
                "{:.2}× / {:.2}×",
                r.write_amplification, r.write_amplification_disk
            ),
        ),
        (
            "append while filling (p50 / p99)",
            format!(
                "{:.2} / {:.2} ms",
                r.append_filling.p50_ms, r.append_filling.p99_ms
            ),
        ),
        (
            "append at the budget (p50 / p99 / max)",
            format!(
                "{:.2} / {:.2} / {:.1} ms",
                r.append_at_budget.p50_ms, r.append_at_budget.p99_ms, r.append_at_budget.max_ms
            ),
        ),
        ("slices at the end", r.slices.to_string()),
        ("bytes on disk at the end", mb(r.bytes_on_disk)),
        ("writer peak private memory", mb(r.peak_private_bytes)),
        (
            "maintenance error",
            r.maintenance_error.clone().unwrap_or_else(|| "none".into()),
        ),
    ];
    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let v = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = format!(
        "| {:w$} | {:v$} |\n|{}|{}|\n",
        "measure",
        "value",
        "-".repeat(w + 2),
        "-".repeat(v + 2)
    );
    for (k, val) in rows {
        out.push_str(&format!("| {k:w$} | {val:v$} |\n"));
    }
    out
}
