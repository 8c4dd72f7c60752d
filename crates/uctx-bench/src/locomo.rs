//! Turn-level retrieval on LoCoMo-10: can the memory find the turn that answers a question?
//!
//! Every conversation is written to one pool in a temporary directory through
//! [`Memory::write`], a namespace per conversation, each turn a unit of its own (`speaker:
//! text`); the queries are the questions of categories 1-4 (single-hop, multi-hop, temporal,
//! open-domain) whose `evidence` names at least one turn, searched in their conversation's
//! namespace through [`Memory::search_with`], top [`DEPTH`]: the path sessions take, over
//! the pool's i8 index and BM25. A question is a hit at k when one of its evidence turns is
//! in the top k; MRR counts the first [`DEPTH`]. Arms, all on the same pool:
//!
//! - **bm25**: BM25 alone;
//! - **dense**: the encoder under test alone (the bundled static model unless another is given);
//! - **hybrid**: the fusion [`Memory::search`] uses, what a session gets;
//! - the transformer reference (all-MiniLM-L6-v2 over f32 vectors, full rankings, from the file
//!   `tools/distill/locomo_reference.py` writes), all ten conversations only, as a note.
//!
//! Conversations 0-4 are the tuning split (`--sweep` scores each fusion tried on them only)
//! and 5-9 are held out; every arm reports both and the whole.
//! LoCoMo (CC BY-NC 4.0) is for evaluation only and is never shipped: pass its path.
//! [`load`] reads the file for this bench and for [`crate::locomo_qa`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use uctx::encoder::Encoder;
use uctx::memory::{Memory, Ranking, Unit};
use uctx::pool::Scope;
use uctx::Source;

/// The cut-offs reported.
pub const KS: [usize; 4] = [1, 5, 10, 20];
/// Results asked of each search (the largest cut-off).
pub const DEPTH: usize = 20;
/// Conversations with an index below this are the tuning split; the rest are held out.
pub const TUNE_CONVERSATIONS: usize = 5;

/// What the bench needs to run.
pub struct Args {
    /// `locomo10.json`.
    pub data: PathBuf,
    /// The encoder under test.
    pub encoder: Arc<dyn Encoder>,
    /// The transformer's scores; [`default_reference`] when `None`. A missing file leaves
    /// that arm out with a note.
    pub reference: Option<PathBuf>,
    /// Also score every fusion of [`crate::beir::sweep_grid`] on the tuning conversations.
    pub sweep: bool,
}

/// The reference file committed with the bench.
pub fn default_reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/locomo_reference.json")
}

/// Recall at each cut-off and mean reciprocal rank over `n` questions.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    #[serde(rename = "recall@1")]
    pub recall_1: f64,
    #[serde(rename = "recall@5")]
    pub recall_5: f64,
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
    #[serde(rename = "recall@20")]
    pub recall_20: f64,
    pub mrr: f64,
}

/// One arm's results.
#[derive(Clone, Debug, Serialize)]
pub struct Arm {
    pub name: String,
    pub overall: Metrics,
    /// Conversations 0-4.
    pub tune: Metrics,
    /// Conversations 5-9.
    pub held_out: Metrics,
    /// Held out, keyed by category number ("1".."4").
    pub per_category: BTreeMap<String, Metrics>,
    /// Seconds spent searching.
    pub seconds: f64,
}

/// The transformer reference, over all conversations (its file has no split).
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    pub name: String,
    pub overall: Metrics,
    pub per_category: BTreeMap<String, Metrics>,
}

/// One fusion's figures on the tuning conversations.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub norm: String,
    pub dense_weight: f32,
    pub tune: Metrics,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub encoder: String,
    pub conversations: usize,
    pub turns: usize,
    pub questions: usize,
    /// What `hybrid` is.
    pub fusion: String,
    pub arms: Vec<Arm>,
    pub reference: Option<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepRow>,
    /// Seconds to write every conversation to the pool.
    pub ingest_seconds: f64,
    /// Why an arm is missing, if one is.
    pub notes: Vec<String>,
}

/// One LoCoMo conversation as the file holds it: its lines in order, the date of each
/// session, and its questions.
pub struct Conversation {
    /// `sample_id` (`conv-26`).
    pub id: String,
    pub speaker_a: String,
    pub speaker_b: String,
    pub lines: Vec<Line>,
    /// `session_N_date_time`, by session number (`dates[0]` is session 1's).
    pub dates: Vec<String>,
    pub questions: Vec<Question>,
}

/// One line of a conversation.
pub struct Line {
    /// `dia_id` (`D1:3`).
    pub id: String,
    /// The session it belongs to (1-based).
    pub session: u32,
    pub speaker: String,
    pub text: String,
    /// `blip_caption` of an image shared with the line, if any.
    pub caption: Option<String>,
}

impl Line {
    /// `speaker: text`.
    pub fn said(&self) -> String {
        format!("{}: {}", self.speaker, self.text)
    }
}

/// One question with its gold answer.
pub struct Question {
    /// LoCoMo's category: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop,
    /// 5 adversarial.
    pub category: u8,
    pub text: String,
    /// The gold answer (empty for adversarial questions, which have none).
    pub answer: String,
    /// Indices into [`Conversation::lines`] of the evidence lines that exist.
    pub evidence: Vec<usize>,
}

/// Read `locomo10.json`.
pub fn load(path: &Path) -> anyhow::Result<Vec<Conversation>> {
    let raw = std::fs::read(path).with_context(|| {
        format!(
            "reading LoCoMo at {} — pass --data PATH/locomo10.json (the data set is not shipped with uctx)",
            path.display()
        )
    })?;
    let data: serde_json::Value =
        serde_json::from_slice(&raw).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(samples) = data.as_array() else {
        bail!(
            "{} is not a LoCoMo file: expected a list of conversations",
            path.display()
        );
    };
    let str_of = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string()
    };
    let mut out = Vec::new();
    for (n, sample) in samples.iter().enumerate() {
        let conv = &sample["conversation"];
        let mut c = Conversation {
            id: sample
                .get("sample_id")
                .and_then(|v| v.as_str())
                .map_or_else(|| format!("conv-{}", n + 1), str::to_string),
            speaker_a: str_of(conv, "speaker_a"),
            speaker_b: str_of(conv, "speaker_b"),
            lines: Vec::new(),
            dates: Vec::new(),
            questions: Vec::new(),
        };
        let mut s = 1;
        while let Some(turns) = conv.get(format!("session_{s}")).and_then(|v| v.as_array()) {
            c.dates
                .push(str_of(conv, &format!("session_{s}_date_time")));
            for turn in turns {
                c.lines.push(Line {
                    id: str_of(turn, "dia_id"),
                    session: s,
                    speaker: str_of(turn, "speaker"),
                    text: str_of(turn, "text"),
                    caption: turn
                        .get("blip_caption")
                        .and_then(|v| v.as_str())
                        .filter(|t| !t.trim().is_empty())
                        .map(str::to_string),
                });
            }
            s += 1;
        }
        let index: BTreeMap<&str, usize> = c
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l.id.as_str(), i))
            .collect();
        for qa in sample["qa"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let mut evidence = Vec::new();
            for e in qa["evidence"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                for part in e
                    .as_str()
                    .unwrap_or("")
                    .split(|ch: char| ch == ';' || ch == ',' || ch.is_whitespace())
                {
                    if let Some(&i) = index.get(part) {
                        if !evidence.contains(&i) {
                            evidence.push(i);
                        }
                    }
                }
            }
            // Answers are strings, or numbers for a year.
            let answer = match &qa["answer"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            c.questions.push(Question {
                category: u8::try_from(qa["category"].as_u64().unwrap_or(0)).unwrap_or(0),
                text: str_of(qa, "question"),
                answer,
                evidence,
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// One conversation as this bench searches it: its namespace and questions.
struct Retrieval {
    namespace: String,
    tune: bool,
    turns: usize,
    questions: Vec<Question>,
}

/// Sums per category of 1/rank and hits at each cut-off.
#[derive(Default)]
struct Tally {
    per: BTreeMap<u8, (usize, [usize; 4], f64)>,
}

impl Tally {
    fn add(&mut self, category: u8, rank: Option<usize>) {
        let e = self.per.entry(category).or_default();
        e.0 += 1;
        if let Some(r) = rank {
            e.2 += 1.0 / r as f64;
            for (i, k) in KS.iter().enumerate() {
                if r <= *k {
                    e.1[i] += 1;
                }
            }
        }
    }

    fn metrics(n: usize, hits: [usize; 4], rr: f64) -> Metrics {
        let f = |x: usize| round4(x as f64 / n.max(1) as f64);
        Metrics {
            n,
            recall_1: f(hits[0]),
            recall_5: f(hits[1]),
            recall_10: f(hits[2]),
            recall_20: f(hits[3]),
            mrr: round4(rr / n.max(1) as f64),
        }
    }

    /// Over every category, and per category.
    fn summary(&self) -> (Metrics, BTreeMap<String, Metrics>) {
        let mut total = (0, [0; 4], 0.0);
        let mut per_category = BTreeMap::new();
        for (cat, &(n, hits, rr)) in &self.per {
            total.0 += n;
            for (t, h) in total.1.iter_mut().zip(hits) {
                *t += h;
            }
            total.2 += rr;
            per_category.insert(cat.to_string(), Self::metrics(n, hits, rr));
        }
        (Self::metrics(total.0, total.1, total.2), per_category)
    }
}

/// One arm's tallies: all, tune, held out.
#[derive(Default)]
struct Split {
    all: Tally,
    tune: Tally,
    held_out: Tally,
}

impl Split {
    fn add(&mut self, tune: bool, category: u8, rank: Option<usize>) {
        self.all.add(category, rank);
        if tune {
            self.tune.add(category, rank)
        } else {
            self.held_out.add(category, rank)
        }
    }

    fn into_arm(self, name: &str, seconds: f64) -> Arm {
        let (held_out, per_category) = self.held_out.summary();
        Arm {
            name: name.to_string(),
            overall: self.all.summary().0,
            tune: self.tune.summary().0,
            held_out,
            per_category,
            seconds: (seconds * 1000.0).round() / 1000.0,
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// 1-based rank of the first evidence turn in `ranking` (turn indices, best first).
fn first_hit(ranking: &[u64], evidence: &[usize]) -> Option<usize> {
    ranking
        .iter()
        .position(|&t| evidence.contains(&(t as usize)))
        .map(|p| p + 1)
}

/// The turns `ranking` finds for `question`, best first.
fn turns(
    memory: &Memory,
    c: &Retrieval,
    question: &str,
    ranking: Ranking,
) -> anyhow::Result<Vec<u64>> {
    Ok(memory
        .search_with(question, DEPTH, Scope::Namespace(&c.namespace), ranking)?
        .into_iter()
        .map(|h| h.meta.turn)
        .collect())
}

/// Score `ranking` on the conversations `which` selects.
fn tally(
    memory: &Memory,
    convs: &[Retrieval],
    ranking: Ranking,
    which: impl Fn(&Retrieval) -> bool,
) -> anyhow::Result<Split> {
    let mut split = Split::default();
    for c in convs.iter().filter(|c| which(c)) {
        for q in &c.questions {
            let found = turns(memory, c, &q.text, ranking)?;
            split.add(c.tune, q.category, first_hit(&found, &q.evidence));
        }
    }
    Ok(split)
}

/// Write every conversation to a pool, run every arm.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let loaded = load(&args.data)?;
    if loaded.len() <= TUNE_CONVERSATIONS {
        bail!(
            "{} holds {} conversations; the bench tunes on conversations 0-{} and needs more to hold out",
            args.data.display(),
            loaded.len(),
            TUNE_CONVERSATIONS - 1
        );
    }
    let dir = tempfile::tempdir()?;
    let memory = Memory::open(
        &dir.path().join("pool"),
        args.encoder.clone(),
        true,
        false,
        None,
    )?;
    let t = Instant::now();
    let mut convs = Vec::new();
    for (i, c) in loaded.into_iter().enumerate() {
        let namespace = format!("locomo-{i}");
        let said: Vec<String> = c.lines.iter().map(Line::said).collect();
        let units: Vec<Unit<'_>> = said
            .iter()
            .zip(&c.lines)
            .enumerate()
            .map(|(n, (text, line))| Unit {
                namespace: &namespace,
                source: Source::User,
                text,
                turn: n as u64,
                ext_id: Some(&line.id),
            })
            .collect();
        memory.write(&units)?;
        convs.push(Retrieval {
            namespace,
            tune: i < TUNE_CONVERSATIONS,
            turns: c.lines.len(),
            questions: c
                .questions
                .into_iter()
                .filter(|q| (1..=4).contains(&q.category) && !q.evidence.is_empty())
                .collect(),
        });
    }
    let ingest_seconds = round4(t.elapsed().as_secs_f64());
    if convs.iter().all(|c| c.questions.is_empty()) {
        bail!(
            "{} holds no LoCoMo questions of categories 1-4",
            args.data.display()
        );
    }

    let mut arms = Vec::new();
    for (name, ranking) in [
        ("bm25", Ranking::Lexical),
        ("dense", Ranking::Dense),
        ("hybrid", Ranking::DEFAULT),
    ] {
        let t = Instant::now();
        let split = tally(&memory, &convs, ranking, |_| true)?;
        arms.push(split.into_arm(name, t.elapsed().as_secs_f64()));
    }
    let mut sweep = Vec::new();
    if args.sweep {
        for f in crate::beir::sweep_grid() {
            let split = tally(&memory, &convs, Ranking::Fused(f), |c| c.tune)?;
            sweep.push(SweepRow {
                norm: format!("{:?}", f.norm),
                dense_weight: f.dense_weight,
                tune: split.tune.summary().0,
            });
        }
    }

    let mut notes = Vec::new();
    let reference_path = args.reference.clone().unwrap_or_else(default_reference);
    let reference = match read_reference(&reference_path) {
        Ok(r) => Some(r),
        Err(e) => {
            notes.push(format!(
                "transformer reference left out: {e:#} — regenerate it with `python3 tools/distill/locomo_reference.py --data {}`",
                args.data.display()
            ));
            None
        }
    };
    Ok(Report {
        encoder: args.encoder.fingerprint(),
        conversations: convs.len(),
        turns: convs.iter().map(|c| c.turns).sum(),
        questions: convs.iter().map(|c| c.questions.len()).sum(),
        fusion: crate::beir::describe(uctx::lexical::Fusion::DEFAULT),
        arms,
        reference,
        sweep,
        ingest_seconds,
        notes,
    })
}

fn read_reference(path: &Path) -> anyhow::Result<Reference> {
    #[derive(serde::Deserialize)]
    struct File {
        overall: Metrics,
        per_category: BTreeMap<String, Metrics>,
    }
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a LoCoMo reference file", path.display()))?;
    Ok(Reference {
        name: "transformer (ref)".to_string(),
        overall: f.overall,
        per_category: f.per_category,
    })
}

impl Report {
    /// Per arm: held out, tuning and all conversations; then held-out recall@10 per category.
    pub fn table(&self) -> String {
        let mut t = format!(
            "LoCoMo turn retrieval through Memory::search: {} conversations, {} turns, {} questions (categories 1-4)\nencoder {}; hybrid = {}\nconversations 0-{} tune, {}-{} held out; MRR over the top {}\n\n",
            self.conversations,
            self.turns,
            self.questions,
            self.encoder,
            self.fusion,
            TUNE_CONVERSATIONS - 1,
            TUNE_CONVERSATIONS,
            self.conversations - 1,
            DEPTH,
        );
        t.push_str(
            "| arm               | split    | n    | R@1   | R@5   | R@10  | R@20  | MRR   |\n",
        );
        t.push_str(
            "|-------------------|----------|------|-------|-------|-------|-------|-------|\n",
        );
        let row = |t: &mut String, name: &str, split: &str, m: &Metrics| {
            t.push_str(&format!(
                "| {:<17} | {:<8} | {:>4} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                name, split, m.n, m.recall_1, m.recall_5, m.recall_10, m.recall_20, m.mrr
            ));
        };
        for a in &self.arms {
            row(&mut t, &a.name, "held out", &a.held_out);
        }
        for a in &self.arms {
            row(&mut t, &a.name, "tune", &a.tune);
        }
        for a in &self.arms {
            row(&mut t, &a.name, "all", &a.overall);
        }
        if let Some(r) = &self.reference {
            row(&mut t, &r.name, "all", &r.overall);
        }
        t.push_str("\nheld-out R@10 per category:\n| arm    | cat1  | cat2  | cat3  | cat4  |\n|--------|-------|-------|-------|-------|\n");
        for a in &self.arms {
            let cat = |c: &str| {
                a.per_category
                    .get(c)
                    .map_or("—".to_string(), |m| format!("{:.3}", m.recall_10))
            };
            t.push_str(&format!(
                "| {:<6} | {:>5} | {:>5} | {:>5} | {:>5} |\n",
                a.name,
                cat("1"),
                cat("2"),
                cat("3"),
                cat("4")
            ));
        }
        if !self.sweep.is_empty() {
            t.push_str("\nsweep on the tuning conversations only:\n| norm   | dense w | R@10  | MRR   |\n|--------|---------|-------|-------|\n");
            for r in &self.sweep {
                t.push_str(&format!(
                    "| {:<6} | {:.1}     | {:.3} | {:.3} |\n",
                    r.norm, r.dense_weight, r.tune.recall_10, r.tune.mrr
                ));
            }
        }
        for n in &self.notes {
            t.push_str(&format!("\nnote: {n}\n"));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hit_is_one_based() {
        assert_eq!(first_hit(&[5, 3, 9], &[3]), Some(2));
        assert_eq!(first_hit(&[5, 3, 9], &[7]), None);
    }

    #[test]
    fn tally_counts_recall_and_mrr() {
        let mut t = Split::default();
        t.add(false, 1, Some(1));
        t.add(false, 1, Some(6));
        t.add(false, 2, None);
        t.add(true, 2, Some(1));
        let arm = t.into_arm("x", 0.0);
        assert_eq!(arm.overall.n, 4);
        assert_eq!(arm.tune.n, 1);
        assert_eq!(arm.tune.recall_1, 1.0);
        let arm = arm.held_out;
        assert_eq!(arm.n, 3);
        assert_eq!(arm.recall_1, round4(1.0 / 3.0));
        assert_eq!(arm.recall_10, round4(2.0 / 3.0));
    }
}
