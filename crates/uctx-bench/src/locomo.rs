//! Turn-level retrieval on LoCoMo-10: can the memory find the turn that answers a question?
//!
//! Per conversation the corpus is every turn, as `speaker: text`; the queries are the
//! questions of categories 1-4 (single-hop, multi-hop, temporal, open-domain) whose `evidence`
//! names at least one turn; a question is a hit at k when one of its evidence turns is in the
//! top k. Arms, all on the same task:
//!
//! - **bm25**: [`uctx::lexical::Bm25`] over the turns;
//! - **dense**: the encoder under test (the bundled static model unless another is given);
//! - **hybrid**: reciprocal rank fusion of dense and BM25;
//! - **hybrid+ctx**: hybrid, each turn's fused score raised by a quarter of its neighbours' in the
//!   same session, since an answer often spans two adjacent turns;
//! - **transformer**: all-MiniLM-L6-v2 itself, read from the reference file that
//!   `tools/distill/locomo_reference.py` writes (same task, same scoring).
//!
//! LoCoMo (CC BY-NC 4.0) is for evaluation only and is never shipped: pass its path.
//! [`load`] reads the file for this bench and for [`crate::locomo_qa`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use uctx::encoder::{dot, Encoder};
use uctx::lexical::{rrf, Bm25};

/// The cut-offs reported.
pub const KS: [usize; 4] = [1, 5, 10, 20];
/// How much of each neighbour's fused score a turn receives in the hybrid+ctx arm.
pub const NEIGHBOUR_WEIGHT: f32 = 0.25;

/// What the bench needs to run.
pub struct Args {
    /// `locomo10.json`.
    pub data: PathBuf,
    /// The encoder under test.
    pub encoder: Arc<dyn Encoder>,
    /// The transformer's scores; [`default_reference`] when `None`. A missing file leaves
    /// that arm out with a note.
    pub reference: Option<PathBuf>,
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
    /// Keyed by category number ("1".."4").
    pub per_category: BTreeMap<String, Metrics>,
    /// Seconds spent indexing and searching (absent for the reference).
    pub seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub encoder: String,
    pub conversations: usize,
    pub turns: usize,
    pub questions: usize,
    pub arms: Vec<Arm>,
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

/// One conversation as this bench searches it: each line as `speaker: text`, its session.
struct Retrieval {
    sessions: Vec<u32>,
    texts: Vec<String>,
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

    fn into_arm(self, name: &str, seconds: f64) -> Arm {
        let mut total = (0, [0; 4], 0.0);
        let mut per_category = BTreeMap::new();
        for (cat, (n, hits, rr)) in self.per {
            total.0 += n;
            for (t, h) in total.1.iter_mut().zip(hits) {
                *t += h;
            }
            total.2 += rr;
            per_category.insert(cat.to_string(), Self::metrics(n, hits, rr));
        }
        Arm {
            name: name.to_string(),
            overall: Self::metrics(total.0, total.1, total.2),
            per_category,
            seconds: Some((seconds * 1000.0).round() / 1000.0),
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

/// Run every arm.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let convs: Vec<Retrieval> = load(&args.data)?
        .into_iter()
        .map(|c| Retrieval {
            sessions: c.lines.iter().map(|l| l.session).collect(),
            texts: c.lines.iter().map(Line::said).collect(),
            questions: c
                .questions
                .into_iter()
                .filter(|q| (1..=4).contains(&q.category) && !q.evidence.is_empty())
                .collect(),
        })
        .collect();
    if convs.iter().all(|c| c.questions.is_empty()) {
        bail!(
            "{} holds no LoCoMo questions of categories 1-4",
            args.data.display()
        );
    }
    let mut names = ["bm25", "dense", "hybrid", "hybrid+ctx"].map(|n| (n, Tally::default(), 0.0));

    for c in &convs {
        if c.questions.is_empty() {
            continue;
        }
        let n = c.texts.len();

        let t = Instant::now();
        let mut bm25 = Bm25::new();
        for (i, text) in c.texts.iter().enumerate() {
            bm25.add(i as u64, text);
        }
        let sparse: Vec<Vec<(u64, f32)>> = c
            .questions
            .iter()
            .map(|q| bm25.search(&q.text, n))
            .collect();
        names[0].2 += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let refs: Vec<&str> = c.texts.iter().map(String::as_str).collect();
        let docs = args.encoder.encode_batch(&refs);
        let dense: Vec<Vec<(u64, f32)>> = c
            .questions
            .iter()
            .map(|q| {
                let qv = args.encoder.encode(&q.text);
                let mut hits: Vec<(u64, f32)> = docs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (i as u64, dot(&qv, d)))
                    .collect();
                hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                hits
            })
            .collect();
        names[1].2 += t.elapsed().as_secs_f64();

        for (qi, q) in c.questions.iter().enumerate() {
            let ids = |l: &[(u64, f32)]| l.iter().map(|h| h.0).collect::<Vec<_>>();
            names[0]
                .1
                .add(q.category, first_hit(&ids(&sparse[qi]), &q.evidence));
            names[1]
                .1
                .add(q.category, first_hit(&ids(&dense[qi]), &q.evidence));

            let t = Instant::now();
            let fused = rrf(&[dense[qi].clone(), sparse[qi].clone()], n);
            let fused_ids = ids(&fused);
            names[2].2 += t.elapsed().as_secs_f64();
            names[2]
                .1
                .add(q.category, first_hit(&fused_ids, &q.evidence));

            let t = Instant::now();
            let ctx = with_neighbours(&fused, &c.sessions);
            names[3].2 += t.elapsed().as_secs_f64();
            names[3]
                .1
                .add(q.category, first_hit(&ids(&ctx), &q.evidence));
        }
    }

    let mut arms: Vec<Arm> = Vec::new();
    let mut notes = Vec::new();
    let reference = args.reference.clone().unwrap_or_else(default_reference);
    match read_reference(&reference) {
        Ok(arm) => arms.push(arm),
        Err(e) => notes.push(format!(
            "transformer arm left out: {e:#} — regenerate it with `python3 tools/distill/locomo_reference.py --data {}`",
            args.data.display()
        )),
    }
    let dense_secs = names[1].2;
    for (i, (name, tally, secs)) in names.into_iter().enumerate() {
        // The fused arms include the time of both rankings they fuse.
        let secs = if i >= 2 { secs + dense_secs } else { secs };
        arms.push(tally.into_arm(name, secs));
    }
    Ok(Report {
        encoder: args.encoder.fingerprint(),
        conversations: convs.len(),
        turns: convs.iter().map(|c| c.texts.len()).sum(),
        questions: convs.iter().map(|c| c.questions.len()).sum(),
        arms,
        notes,
    })
}

/// Each turn's score plus [`NEIGHBOUR_WEIGHT`] times the scores of the turns just before and
/// after it in the same session; re-ranked.
fn with_neighbours(fused: &[(u64, f32)], sessions: &[u32]) -> Vec<(u64, f32)> {
    let mut score = vec![0.0f32; sessions.len()];
    for &(id, s) in fused {
        score[id as usize] = s;
    }
    let mut out: Vec<(u64, f32)> = (0..sessions.len())
        .map(|i| {
            let mut s = score[i];
            if i > 0 && sessions[i - 1] == sessions[i] {
                s += NEIGHBOUR_WEIGHT * score[i - 1];
            }
            if i + 1 < sessions.len() && sessions[i + 1] == sessions[i] {
                s += NEIGHBOUR_WEIGHT * score[i + 1];
            }
            (i as u64, s)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn read_reference(path: &Path) -> anyhow::Result<Arm> {
    #[derive(serde::Deserialize)]
    struct File {
        overall: Metrics,
        per_category: BTreeMap<String, Metrics>,
    }
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a LoCoMo reference file", path.display()))?;
    Ok(Arm {
        name: "transformer (ref)".to_string(),
        overall: f.overall,
        per_category: f.per_category,
        seconds: None,
    })
}

impl Report {
    /// Overall figures per arm, then recall@10 per category.
    pub fn table(&self) -> String {
        let mut t = format!(
            "LoCoMo turn retrieval: {} conversations, {} turns, {} questions (categories 1-4)\nencoder {}\n\n",
            self.conversations, self.turns, self.questions, self.encoder
        );
        t.push_str("| arm                | R@1   | R@5   | R@10  | R@20  | MRR   | R@10 cat1 | cat2  | cat3  | cat4  |\n");
        t.push_str("|--------------------|-------|-------|-------|-------|-------|-----------|-------|-------|-------|\n");
        for a in &self.arms {
            let m = &a.overall;
            let cat = |c: &str| {
                a.per_category
                    .get(c)
                    .map_or("—".to_string(), |m| format!("{:.3}", m.recall_10))
            };
            t.push_str(&format!(
                "| {:<18} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:>9} | {:>5} | {:>5} | {:>5} |\n",
                a.name,
                m.recall_1,
                m.recall_5,
                m.recall_10,
                m.recall_20,
                m.mrr,
                cat("1"),
                cat("2"),
                cat("3"),
                cat("4"),
            ));
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
    fn neighbours_lift_adjacent_turns_within_a_session_only() {
        let fused = vec![(1, 1.0), (3, 0.1)];
        let sessions = [1, 1, 1, 2, 2];
        let out = with_neighbours(&fused, &sessions);
        let score = |id: u64| out.iter().find(|h| h.0 == id).unwrap().1;
        assert_eq!(score(0), NEIGHBOUR_WEIGHT);
        assert_eq!(score(2), NEIGHBOUR_WEIGHT);
        assert_eq!(
            score(4),
            0.1 * NEIGHBOUR_WEIGHT,
            "turn 3's neighbour in session 2"
        );
        assert_eq!(out[0].0, 1);
    }

    #[test]
    fn tally_counts_recall_and_mrr() {
        let mut t = Tally::default();
        t.add(1, Some(1));
        t.add(1, Some(6));
        t.add(2, None);
        let arm = t.into_arm("x", 0.0);
        assert_eq!(arm.overall.n, 3);
        assert_eq!(arm.overall.recall_1, round4(1.0 / 3.0));
        assert_eq!(arm.overall.recall_10, round4(2.0 / 3.0));
        assert_eq!(arm.per_category["1"].mrr, round4((1.0 + 1.0 / 6.0) / 2.0));
    }
}
