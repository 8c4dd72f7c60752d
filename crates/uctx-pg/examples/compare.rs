//! The directory pool beside a team pool on one corpus: ingest, then search
//! latency (dense, lexical, fused; whole pool and one namespace) and how many
//! of the directory pool's exact dense top 10 the team pool's HNSW finds.
//!
//! ```sh
//! cargo run -p uctx-pg --example compare -- postgres://… DIR [NAMESPACES]
//! ```
//!
//! `DIR`'s text files are ingested once into each of `NAMESPACES` (default 4)
//! namespaces of both pools; the team pool is written into a schema of its own,
//! dropped at the end.

use std::sync::Arc;
use std::time::Instant;

use uctx::encoder::{Encoder, StaticEncoder};
use uctx::memory::{Memory, Ranking, Unit};
use uctx::pool::{Pool, PoolOptions, Scope, Store};
use uctx::Source;

fn files(dir: &std::path::Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if !p.ends_with("target") && !p.ends_with(".git") {
                files(&p, out);
            }
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            if !text.trim().is_empty() && text.len() < 1 << 20 {
                out.push(text);
            }
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(dir)) = (args.get(1), args.get(2)) else {
        return Err("usage: compare postgres://… DIR [NAMESPACES]".into());
    };
    let copies: usize = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let encoder: Arc<dyn Encoder> = Arc::new(StaticEncoder::bundled()?);
    let mut texts = Vec::new();
    files(std::path::Path::new(dir), &mut texts);
    let opts = PoolOptions {
        create: true,
        read_only: false,
        budget_bytes: None,
        encoder_fingerprint: encoder.fingerprint(),
        dim: encoder.dim(),
    };
    let tmp = tempfile::tempdir()?;
    let scratch = uctx_pg::Scratch::create(url, &format!("uctx_compare_{}", std::process::id()))?;
    let team_url = scratch.url().to_string();
    let dir_pool = Arc::new(Pool::open(&tmp.path().join("pool"), opts.clone())?);
    let pools: Vec<(&str, Arc<dyn Store>)> = vec![
        ("directory", dir_pool.clone()),
        (
            "postgres",
            Arc::new(uctx_pg::PgPool::open(&team_url, &opts)?),
        ),
    ];
    let queries: Vec<String> = texts
        .iter()
        .step_by((texts.len() / 100).max(1))
        .filter_map(|t| t.lines().find(|l| l.split_whitespace().count() >= 5))
        .map(|l| l.chars().take(120).collect())
        .take(100)
        .collect();
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let mut memories = Vec::new();
        for (name, pool) in &pools {
            let memory = Memory::new(Arc::clone(pool), Arc::clone(&encoder));
            let started = Instant::now();
            for c in 0..copies {
                let ns = format!("ns{c}");
                for chunk in texts.chunks(64) {
                    let units: Vec<Unit<'_>> = chunk
                        .iter()
                        .map(|t| Unit {
                            namespace: &ns,
                            source: Source::Document,
                            text: t,
                            turn: 0,
                            ext_id: None,
                        })
                        .collect();
                    memory.write(&units)?;
                }
            }
            let s = pool.stats()?;
            println!(
                "{name:>9}: ingested {} slices ({} tokens) in {:.1} s; {:.1} MB ({} bytes a slice)",
                s.slices,
                s.tokens,
                started.elapsed().as_secs_f64(),
                s.bytes_on_disk as f64 / 1e6,
                s.bytes_on_disk / s.slices.max(1)
            );
            memories.push((*name, memory));
        }
        println!("{} queries, k = 10; milliseconds p50 / p99", queries.len());
        for (label, ranking) in [
            ("dense", Ranking::Dense),
            ("lexical", Ranking::Lexical),
            ("fused", Ranking::DEFAULT),
        ] {
            for (scope_name, scope) in [("all", Scope::All), ("one ns", Scope::Namespace("ns1"))] {
                let mut row = format!("{label:>8} {scope_name:>6}:");
                for (name, memory) in &memories {
                    let mut ms = Vec::new();
                    for q in &queries {
                        let t = Instant::now();
                        let hits = memory.search_with(q, 10, scope, ranking)?;
                        ms.push(t.elapsed().as_secs_f64() * 1e3);
                        if let Scope::Namespace(ns) = scope {
                            assert!(hits.iter().all(|h| h.meta.namespace == ns));
                        }
                    }
                    row.push_str(&format!(
                        "  {name} {:.2} / {:.2}",
                        percentile(&mut ms, 0.5),
                        percentile(&mut ms, 0.99)
                    ));
                }
                println!("{row}");
            }
        }
        // The team pool's approximate dense top 10 against the directory pool's exact one.
        for (scope_name, scope) in [("all", Scope::All), ("one ns", Scope::Namespace("ns1"))] {
            let (mut found, mut total) = (0usize, 0usize);
            for q in &queries {
                let v = encoder.encode(q);
                let exact: std::collections::HashSet<u64> = dir_pool
                    .search_exact(&v, 10, scope)?
                    .iter()
                    .map(|h| h.meta.id)
                    .collect();
                let approx = pools[1].1.search(&v, 10, scope)?;
                let texts_exact: std::collections::HashSet<String> = exact
                    .iter()
                    .filter_map(|id| dir_pool.get(*id).ok().flatten())
                    .map(|s| format!("{}\u{0}{}", s.meta.namespace, s.text))
                    .collect();
                for h in &approx {
                    if let Some(s) = pools[1].1.get(h.meta.id)? {
                        if texts_exact.contains(&format!("{}\u{0}{}", s.meta.namespace, s.text)) {
                            found += 1;
                        }
                    }
                }
                total += exact.len();
            }
            println!(
                "postgres dense recall@10 against the directory pool's exact search ({scope_name}): {:.3}",
                found as f64 / total.max(1) as f64
            );
        }
        Ok(())
    })();
    drop(pools);
    drop(scratch);
    result
}
