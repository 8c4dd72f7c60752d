//! Document retrieval on a BEIR-format set: nDCG@10 and recall@10/100 for BM25, dense and
//! hybrid, all through [`Memory::search_with`] over a real pool.
//!
//! The folder holds BEIR's three files: `corpus.jsonl` (`{"_id", "title"?, "text"}`),
//! `queries.jsonl` (`{"_id", "text"}`) and `qrels/test.tsv` (`query-id corpus-id score`, a
//! header line, graded relevance, 0 = not relevant). Each document is written as one unit
//! (`title`, a newline, `text`) through [`Memory::write`], the path `uctx ingest` takes, into
//! a pool in a temporary directory: chunked, encoded, i8 vectors, the index, BM25. A
//! document's rank is that of its first slice in the ranking. Each cut-off is measured on a
//! search of its own size (`k` = 10 for nDCG@10 and recall@10, 100 for recall@100), as a
//! session asking for that many would get.
//!
//! Queries with at least one relevant document are split by a hash of their id into a tuning
//! half and a held-out half. `--sweep` prints tuning figures only, for each fusion tried;
//! the report gives both halves and all queries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use uctx::encoder::Encoder;
use uctx::lexical::{Fusion, Norm};
use uctx::memory::{Memory, Ranking, Unit};
use uctx::pool::Scope;
use uctx::Source;

/// The namespace the documents are written to.
const NAMESPACE: &str = "beir";
/// Documents per write (one sync each).
const WRITE_BATCH: usize = 512;

/// What the bench needs to run.
pub struct Args {
    /// The folder with `corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`.
    pub data: PathBuf,
    pub encoder: Arc<dyn Encoder>,
    /// Also score every fusion of [`sweep_grid`] on the tuning queries.
    pub sweep: bool,
}

/// One arm's figures over a set of queries.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Arm {
    pub name: String,
    #[serde(rename = "ndcg@10")]
    pub ndcg_10: f64,
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
    pub queries: usize,
}

/// One fusion's tuning figures.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub norm: String,
    pub dense_weight: f32,
    #[serde(rename = "ndcg@10")]
    pub ndcg_10: f64,
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub set: String,
    pub encoder: String,
    pub documents: usize,
    pub slices: usize,
    /// What `hybrid` is: the fusion [`Memory::search`] uses.
    pub fusion: String,
    /// All queries with a relevant document.
    pub arms: Vec<Arm>,
    pub tune: Vec<Arm>,
    pub held_out: Vec<Arm>,
    /// Tuning figures per fusion tried (with `--sweep`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepRow>,
    pub ingest_seconds: f64,
    /// Mean milliseconds per search of 10, per arm (BM25 already built).
    pub search_ms: BTreeMap<String, f64>,
}

/// The fusions `--sweep` scores.
pub fn sweep_grid() -> Vec<Fusion> {
    let mut out = Vec::new();
    for norm in [Norm::MinMax, Norm::Max, Norm::Rank] {
        for i in 0..=10 {
            out.push(Fusion {
                norm,
                dense_weight: i as f32 / 10.0,
            });
        }
    }
    out
}

/// Whether a query id falls in the tuning half (FNV-1a of the id, even).
pub fn is_tune(id: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.is_multiple_of(2)
}

struct Query {
    id: String,
    text: String,
    /// Graded relevance of each relevant document (score > 0).
    rel: HashMap<String, u32>,
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let raw = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} — pass --data DIR, a BEIR-format folder",
            path.display()
        )
    })?;
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))
        })
        .collect()
}

fn field(v: &serde_json::Value, k: &str) -> String {
    v.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string()
}

/// The queries with at least one relevant document, in file order.
fn load_queries(dir: &Path) -> anyhow::Result<Vec<Query>> {
    let qrels_path = dir.join("qrels").join("test.tsv");
    let qrels = std::fs::read_to_string(&qrels_path)
        .with_context(|| format!("reading {}", qrels_path.display()))?;
    let mut rel: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for line in qrels.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            continue;
        }
        let Ok(score) = cols[2].trim().parse::<i64>() else {
            continue; // the header
        };
        if score > 0 {
            rel.entry(cols[0].to_string())
                .or_default()
                .insert(cols[1].to_string(), score as u32);
        }
    }
    let mut out = Vec::new();
    for q in read_jsonl(&dir.join("queries.jsonl"))? {
        let id = field(&q, "_id");
        if let Some(r) = rel.remove(&id) {
            out.push(Query {
                id,
                text: field(&q, "text"),
                rel: r,
            });
        }
    }
    Ok(out)
}

/// nDCG@10 (linear gain, as trec_eval) of `ranked` document ids.
fn ndcg_10(ranked: &[String], rel: &HashMap<String, u32>) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, d)| f64::from(rel.get(d).copied().unwrap_or(0)) / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<u32> = rel.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, &g)| f64::from(g) / (i as f64 + 2.0).log2())
        .sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// Share of the relevant documents among the first `k` of `ranked`.
fn recall(ranked: &[String], rel: &HashMap<String, u32>, k: usize) -> f64 {
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| rel.contains_key(*d))
        .count();
    found as f64 / rel.len().max(1) as f64
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The pool with the corpus written to it, and what it took.
struct Built {
    memory: Memory,
    _dir: tempfile::TempDir,
    documents: usize,
    slices: usize,
    seconds: f64,
}

fn build(data: &Path, encoder: Arc<dyn Encoder>) -> anyhow::Result<Built> {
    let corpus = read_jsonl(&data.join("corpus.jsonl"))?;
    if corpus.is_empty() {
        bail!("{} has no documents", data.join("corpus.jsonl").display());
    }
    let dir = tempfile::tempdir()?;
    let memory = Memory::open(&dir.path().join("pool"), encoder, true, false, None)?;
    let t = Instant::now();
    let docs: Vec<(String, String)> = corpus
        .iter()
        .map(|d| {
            let (title, text) = (field(d, "title"), field(d, "text"));
            let body = if title.trim().is_empty() {
                text
            } else {
                format!("{title}\n{text}")
            };
            (field(d, "_id"), body)
        })
        .collect();
    let mut slices = 0;
    for batch in docs.chunks(WRITE_BATCH) {
        let units: Vec<Unit<'_>> = batch
            .iter()
            .map(|(id, text)| Unit {
                namespace: NAMESPACE,
                source: Source::Document,
                text,
                turn: 0,
                ext_id: Some(id),
            })
            .collect();
        slices += memory.write(&units)?.len();
    }
    Ok(Built {
        memory,
        _dir: dir,
        documents: docs.len(),
        slices,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The documents of a search, in order, each once.
fn documents(
    memory: &Memory,
    query: &str,
    k: usize,
    ranking: Ranking,
) -> anyhow::Result<Vec<String>> {
    let hits = memory.search_with(query, k, Scope::Namespace(NAMESPACE), ranking)?;
    let mut seen = HashSet::new();
    Ok(hits
        .into_iter()
        .filter_map(|h| h.meta.ext_id)
        .filter(|d| seen.insert(d.clone()))
        .collect())
}

/// Per query: (nDCG@10, recall@10, recall@100).
fn score(
    memory: &Memory,
    queries: &[&Query],
    ranking: Ranking,
    deep: bool,
) -> anyhow::Result<Vec<(f64, f64, f64)>> {
    queries
        .iter()
        .map(|q| {
            let top = documents(memory, &q.text, 10, ranking)?;
            let r100 = if deep {
                recall(&documents(memory, &q.text, 100, ranking)?, &q.rel, 100)
            } else {
                0.0
            };
            Ok((ndcg_10(&top, &q.rel), recall(&top, &q.rel, 10), r100))
        })
        .collect()
}

fn arm(name: &str, per: &[(f64, f64, f64)]) -> Arm {
    let n = per.len().max(1) as f64;
    Arm {
        name: name.to_string(),
        ndcg_10: round4(per.iter().map(|p| p.0).sum::<f64>() / n),
        recall_10: round4(per.iter().map(|p| p.1).sum::<f64>() / n),
        recall_100: round4(per.iter().map(|p| p.2).sum::<f64>() / n),
        queries: per.len(),
    }
}

/// A fusion as a short label.
pub fn describe(f: Fusion) -> String {
    let norm = match f.norm {
        Norm::MinMax => "min-max",
        Norm::Max => "max",
        Norm::Rank => "rank (RRF)",
    };
    format!("{norm}, dense weight {:.2}", f.dense_weight)
}

/// Build the pool, run every arm.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let queries = load_queries(&args.data)?;
    if queries.is_empty() {
        bail!(
            "{}: no query in queries.jsonl has a relevant document in qrels/test.tsv",
            args.data.display()
        );
    }
    let built = build(&args.data, args.encoder.clone())?;
    let memory = &built.memory;
    let all: Vec<&Query> = queries.iter().collect();
    let tune_idx: Vec<bool> = all.iter().map(|q| is_tune(&q.id)).collect();

    let arms = [
        ("bm25", Ranking::Lexical),
        ("dense", Ranking::Dense),
        ("hybrid", Ranking::DEFAULT),
    ];
    let mut report = Report {
        set: args.data.file_name().map_or_else(
            || args.data.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        encoder: args.encoder.fingerprint(),
        documents: built.documents,
        slices: built.slices,
        fusion: describe(Fusion::DEFAULT),
        arms: Vec::new(),
        tune: Vec::new(),
        held_out: Vec::new(),
        sweep: Vec::new(),
        ingest_seconds: round4(built.seconds),
        search_ms: BTreeMap::new(),
    };
    // BM25 is built on the first search that needs it; time searches, not that.
    memory.search_with(
        &all[0].text,
        1,
        Scope::Namespace(NAMESPACE),
        Ranking::Lexical,
    )?;
    for (name, ranking) in arms {
        let t = Instant::now();
        for q in &all {
            memory.search_with(&q.text, 10, Scope::Namespace(NAMESPACE), ranking)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / all.len() as f64;
        report.search_ms.insert(name.to_string(), round4(ms));
        let per = score(memory, &all, ranking, true)?;
        let part = |tune: bool| -> Vec<(f64, f64, f64)> {
            per.iter()
                .zip(&tune_idx)
                .filter(|(_, &t)| t == tune)
                .map(|(p, _)| *p)
                .collect()
        };
        report.arms.push(arm(name, &per));
        report.tune.push(arm(name, &part(true)));
        report.held_out.push(arm(name, &part(false)));
    }
    if args.sweep {
        let tune: Vec<&Query> = all.iter().copied().filter(|q| is_tune(&q.id)).collect();
        for f in sweep_grid() {
            let a = arm("", &score(memory, &tune, Ranking::Fused(f), false)?);
            report.sweep.push(SweepRow {
                norm: format!("{:?}", f.norm),
                dense_weight: f.dense_weight,
                ndcg_10: a.ndcg_10,
                recall_10: a.recall_10,
            });
        }
    }
    Ok(report)
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = format!(
            "BEIR {}: {} documents ({} slices), {} queries ({} tune, {} held out)\nencoder {}; hybrid = {}\n\n",
            self.set,
            self.documents,
            self.slices,
            self.arms.first().map_or(0, |a| a.queries),
            self.tune.first().map_or(0, |a| a.queries),
            self.held_out.first().map_or(0, |a| a.queries),
            self.encoder,
            self.fusion,
        );
        t.push_str("| arm    | split    | nDCG@10 | R@10  | R@100 | queries |\n");
        t.push_str("|--------|----------|---------|-------|-------|---------|\n");
        for (split, arms) in [
            ("held out", &self.held_out),
            ("tune", &self.tune),
            ("all", &self.arms),
        ] {
            for a in arms {
                t.push_str(&format!(
                    "| {:<6} | {:<8} | {:.3}   | {:.3} | {:.3} | {:>7} |\n",
                    a.name, split, a.ndcg_10, a.recall_10, a.recall_100, a.queries
                ));
            }
        }
        t.push_str(&format!(
            "\ningest {:.1} s; search of 10: {}\n",
            self.ingest_seconds,
            self.search_ms
                .iter()
                .map(|(k, v)| format!("{k} {v:.2} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if !self.sweep.is_empty() {
            t.push_str("\nsweep on the tuning queries only:\n| norm   | dense w | nDCG@10 | R@10  |\n|--------|---------|---------|-------|\n");
            for r in &self.sweep {
                t.push_str(&format!(
                    "| {:<6} | {:.1}     | {:.3}   | {:.3} |\n",
                    r.norm, r.dense_weight, r.ndcg_10, r.recall_10
                ));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ndcg_is_one_for_the_ideal_order_and_less_otherwise() {
        let r = rel(&[("a", 2), ("b", 1)]);
        assert!((ndcg_10(&ids(&["a", "b", "x"]), &r) - 1.0).abs() < 1e-12);
        let swapped = ndcg_10(&ids(&["b", "a"]), &r);
        assert!(swapped < 1.0 && swapped > 0.5);
        assert_eq!(ndcg_10(&ids(&["x", "y"]), &r), 0.0);
        // rank 2 only: 1/log2(3) over the ideal 2 + 1/log2(3)
        let second = ndcg_10(&ids(&["x", "b"]), &r);
        let want = (1.0 / 3f64.log2()) / (2.0 + 1.0 / 3f64.log2());
        assert!((second - want).abs() < 1e-12);
    }

    #[test]
    fn recall_counts_relevant_within_k() {
        let r = rel(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        assert_eq!(recall(&ids(&["a", "x", "b"]), &r, 10), 0.5);
        assert_eq!(recall(&ids(&["x", "a"]), &r, 1), 0.0);
    }

    #[test]
    fn the_split_is_fixed_and_roughly_even() {
        let tune = (0..1000).filter(|i| is_tune(&format!("q{i}"))).count();
        assert!((400..600).contains(&tune), "{tune}");
        assert_eq!(is_tune("SemSearch_ES-2"), is_tune("SemSearch_ES-2"));
    }

    #[test]
    fn runs_end_to_end_on_a_tiny_set() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("qrels")).unwrap();
        std::fs::write(
            d.join("corpus.jsonl"),
            concat!(
                r#"{"_id":"d1","title":"Zebra","text":"The zebra is a striped horse of Africa."}"#,
                "\n",
                r#"{"_id":"d2","title":"Volcano","text":"A volcano erupts molten rock and ash."}"#,
                "\n",
                r#"{"_id":"d3","text":"Bread is baked from flour, water and yeast."}"#,
                "\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("queries.jsonl"),
            concat!(
                r#"{"_id":"q1","text":"striped zebra"}"#,
                "\n",
                r#"{"_id":"q2","text":"how is bread baked"}"#,
                "\n",
                r#"{"_id":"q3","text":"no relevant document"}"#,
                "\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\nq3\td2\t0\n",
        )
        .unwrap();
        let report = run(&Args {
            data: d.to_path_buf(),
            encoder: Arc::new(uctx::encoder::StaticEncoder::bundled().unwrap()),
            sweep: true,
        })
        .unwrap();
        assert_eq!(report.documents, 3);
        let names: Vec<&str> = report.arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["bm25", "dense", "hybrid"]);
        for a in &report.arms {
            assert_eq!(a.queries, 2, "q3 has no relevant document");
            assert_eq!(a.recall_100, 1.0, "{}", a.name);
        }
        assert_eq!(
            report.arms[0].ndcg_10, 1.0,
            "both queries share words with their answer"
        );
        assert_eq!(report.tune[0].queries + report.held_out[0].queries, 2);
        assert_eq!(report.sweep.len(), sweep_grid().len());
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["arms"][2]["ndcg@10"].is_number());
    }
}
