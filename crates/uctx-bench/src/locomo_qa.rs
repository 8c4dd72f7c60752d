//! LoCoMo question answering with a real model: each conversation is played into a
//! session as the history it was, then its questions are asked, one turn each.
//!
//! Per conversation a fresh session (its own temporary pool, the same encoder) records
//! every line as a turn: the first speaker's lines as the user's messages, the second
//! speaker's as the assistant's, each as `Name: text` (with `[shared an image: …]` for a
//! shared photo's caption), and the first message of each session opens with a
//! `Date: …` line, so that questions about when can be answered. Nothing is ingested:
//! the pool holds the conversation only because the session wrote it as it went.
//! Then the questions of categories 1 (multi-hop), 2 (temporal) and 4 (single-hop) are
//! asked in the conversation's order, each one `Session::turn` with a short instruction
//! to answer in a few words; categories 3 (open-domain) and 5 (adversarial) are not.
//! Questions are LoCoMo's own and the gold answer never enters a prompt: it is read
//! only to score what came back.
//!
//! Arms, same model, same questions:
//!
//! - **off**: a plain sliding window of `--window` tokens (no paging);
//! - **on**: uctx paging memory into the same window;
//! - **full**: the whole conversation in a window of `--full-window` tokens (run only when
//!   the server's context is that large; the built-in reader takes any window).
//!
//! Scoring is LoCoMo's token F1 against the gold answer: both lowercased, punctuation and
//! the articles a/an/the removed, split on whitespace, F1 over the token multisets; no
//! judge model. (LoCoMo's own script also stems words and scores multi-hop answers
//! part by part, so its figures are not exactly these.) Beside F1, the share of each
//! question's evidence lines whose text was in the prompt sent (as a recent turn, or as
//! memory paged in from that line's turn) says whether a wrong answer lacked the
//! evidence or misread it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use uctx::backend::{self, Backend, BackendOptions, Role};
use uctx::encoder::Encoder;
use uctx::memory::Memory;
use uctx::session::{Session, SessionConfig, SessionStats, TurnReport};
use uctx::slice::Source;

use crate::locomo::{self, Conversation, Question};

/// The categories asked, with their names.
pub const CATEGORIES: [(u8, &str); 3] = [(1, "multi-hop"), (2, "temporal"), (4, "single-hop")];
/// Where the data set is looked for by default: beside the repository, never in it.
/// Room kept for each answer (LoCoMo's answers are a few words).
pub const ANSWER_TOKENS: usize = 64;
pub const DEFAULT_DATA: &str = "../shared/data/locomo/locomo10.json";
/// The seed of the question sample.
const SAMPLE_SEED: u64 = 0x6c6f_636f_6d6f_7161;

/// One arm of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arm {
    Off,
    On,
    Full,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Off => "off",
            Arm::On => "on",
            Arm::Full => "full",
        }
    }
}

impl std::str::FromStr for Arm {
    type Err = String;
    fn from_str(s: &str) -> Result<Arm, String> {
        match s.trim() {
            "off" => Ok(Arm::Off),
            "on" => Ok(Arm::On),
            "full" => Ok(Arm::Full),
            other => Err(format!("unknown arm {other:?}; use off, on or full")),
        }
    }
}

/// A progress callback: (arm, questions asked, questions in all).
pub type Progress = Box<dyn Fn(&str, usize, usize)>;

/// What the bench needs to run.
pub struct Args {
    /// LoCoMo's `locomo10.json`.
    pub data: PathBuf,
    /// The model every arm calls (`reader`, `ollama/NAME`, `openai/NAME`).
    pub model: String,
    pub backend: BackendOptions,
    pub encoder: Arc<dyn Encoder>,
    /// The window of the off and on arms, in tokens.
    pub window: usize,
    /// The window of the full arm.
    pub full_window: usize,
    /// The arms to run, in any order (each runs once, reported off, on, full).
    pub arms: Vec<Arm>,
    /// Ask only this many questions, a deterministic sample spread across conversations.
    pub questions: Option<usize>,
    /// Only the first this many conversations.
    pub conversations: Option<usize>,
    pub progress: Option<Progress>,
    /// Print every question, its gold answer, the answer and its score to standard error.
    pub trace: bool,
}

/// One arm's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmReport {
    /// The window, in tokens.
    pub window: usize,
    /// Questions asked.
    pub questions: usize,
    /// Mean token F1 over the questions.
    pub f1: f64,
    /// Mean token F1 by category ("1", "2", "4").
    pub f1_by_category: BTreeMap<String, f64>,
    /// Questions asked by category.
    pub questions_by_category: BTreeMap<String, usize>,
    /// Mean share of a question's evidence lines that were in the prompt sent, over the
    /// questions that name evidence.
    pub evidence_in_window: Option<f64>,
    /// Share of questions whose prompt still held the whole conversation, from its first
    /// line on (a window drops its oldest turns first).
    pub whole_conversation: f64,
    /// Mean prompt tokens per question (the server's count; estimated where it gives none).
    pub prompt_tokens: f64,
    /// Share of prompt tokens the server served from its prefix cache, when it says.
    pub cache_reuse: Option<f64>,
    /// Mean time to the first token of an answer, ms, when measured.
    pub ttft_ms_mean: Option<f64>,
    /// Mean memory slices paged into a question's window.
    pub paged_slices: f64,
    /// Prompts over the window by the server's count (must be 0).
    pub overflows: u64,
    /// Prompts the server refused as too large and were sent again smaller.
    pub context_retries: u64,
    /// Prompts the server seems to have cut without saying so.
    pub truncations: u64,
    /// Wall time of the arm, playing the conversations in included, seconds.
    pub seconds: f64,
    /// Of which playing the conversations in, seconds.
    pub playback_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub window: usize,
    pub full_window: usize,
    /// Conversations with at least one question asked.
    pub conversations: usize,
    /// Questions asked per arm.
    pub questions: usize,
    /// Questions of categories 1, 2 and 4 in the conversations read.
    pub questions_available: usize,
    /// `off`, `on`, `full`, those that ran.
    pub arms: BTreeMap<String, ArmReport>,
    /// Why an arm did not run, if one did not.
    pub notes: Vec<String>,
}

/// Text as LoCoMo's F1 compares it: lowercased, punctuation removed, the articles
/// a/an/the dropped, split on whitespace.
pub fn normalize(text: &str) -> Vec<String> {
    let kept: String = text
        .to_lowercase()
        .chars()
        .filter(|&c| !is_punctuation(c))
        .collect();
    kept.split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_string)
        .collect()
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || matches!(c, '‘' | '’' | '“' | '”' | '–' | '—' | '…' | '«' | '»')
}

/// Token F1 of `prediction` against `gold` over the normalized token multisets; two
/// texts with no tokens score 1, one with none scores 0.
pub fn f1(prediction: &str, gold: &str) -> f64 {
    let p = normalize(prediction);
    let g = normalize(gold);
    if p.is_empty() || g.is_empty() {
        return if p.is_empty() && g.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &p {
        if let Some(n) = counts.get_mut(w.as_str()).filter(|n| **n > 0) {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// A deterministic sample of `n` of the items of groups of `sizes` (all when `n` is
/// `None` or at least their total): each group's items in a seeded shuffle, taken one
/// group at a time in turn, so that the sample spreads evenly across groups. Returns
/// each group's chosen positions in ascending order.
pub fn sample(sizes: &[usize], n: Option<usize>, seed: u64) -> Vec<Vec<usize>> {
    let orders: Vec<Vec<usize>> = sizes
        .iter()
        .enumerate()
        .map(|(g, &k)| {
            let mut order: Vec<usize> = (0..k).collect();
            let mut state = seed ^ (g as u64).wrapping_mul(0xA076_1D64_78BD_642F);
            for i in (1..k).rev() {
                state = splitmix(state);
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            order
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let n = n.unwrap_or(total).min(total);
    let mut picked: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    let mut taken = 0;
    let mut round = 0;
    while taken < n {
        for (g, order) in orders.iter().enumerate() {
            if taken < n && round < order.len() {
                picked[g].push(order[round]);
                taken += 1;
            }
        }
        round += 1;
    }
    for p in &mut picked {
        p.sort_unstable();
    }
    picked
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a question is asked: categories 1, 2 and 4, with a question and a gold answer.
fn asked(q: &Question) -> bool {
    CATEGORIES.iter().any(|(c, _)| *c == q.category)
        && !q.text.trim().is_empty()
        && !q.answer.trim().is_empty()
}

/// The system prompt of every arm.
fn system_prompt(c: &Conversation) -> String {
    format!(
        "The messages below are a conversation between {} and {}, held over several \
         sessions; each message starts with its speaker's name, and the first message of \
         each session says its date. Earlier parts that no longer fit are shown as \
         labelled memory blocks; trust them. When asked a question about the \
         conversation, answer it in a few words.",
        c.speaker_a, c.speaker_b
    )
}

/// The message that asks a question.
fn ask(q: &Question) -> String {
    format!(
        "Answer this question about the conversation in a few words.\n{}",
        q.text.trim()
    )
}

/// A line as it was recorded, and where.
struct Played {
    /// The line's own text, `Name: text`, as it stands in the message it was recorded in.
    said: String,
    /// The whole message recorded (with the session's date line on a session's first).
    text: String,
    turn: u64,
    source: Source,
}

/// Record every line of `c` into `session` as the conversation had it.
fn play(session: &mut Session, c: &Conversation) -> anyhow::Result<Vec<Played>> {
    let mut out = Vec::with_capacity(c.lines.len());
    let mut session_no = 0;
    for line in &c.lines {
        let mut said = line.said();
        if let Some(caption) = &line.caption {
            said.push_str(&format!(" [shared an image: {caption}]"));
        }
        let text = if line.session != session_no {
            session_no = line.session;
            let date = c
                .dates
                .get(line.session as usize - 1)
                .map(String::as_str)
                .unwrap_or("")
                .trim();
            if date.is_empty() {
                said.clone()
            } else {
                format!("Date: {date}\n{said}")
            }
        } else {
            said.clone()
        };
        let (role, source) = if line.speaker == c.speaker_b {
            (Role::Assistant, Source::Assistant)
        } else {
            (Role::User, Source::User)
        };
        let turn = session
            .record(role, &text)
            .with_context(|| format!("recording line {} of {}", line.id, c.id))?;
        out.push(Played {
            said,
            text,
            turn,
            source,
        });
    }
    Ok(out)
}

/// Share of `evidence` (indices into `played`) that the window of `report` held: the
/// line's text in a message, or memory paged in from the line's turn and speaker.
fn evidence_share(report: &TurnReport, played: &[Played], evidence: &[usize]) -> Option<f64> {
    if evidence.is_empty() {
        return None;
    }
    let present = evidence
        .iter()
        .filter(|&&i| {
            let p = &played[i];
            report
                .window
                .memory
                .iter()
                .any(|m| m.turn == p.turn && m.source == p.source)
                || report
                    .window
                    .messages
                    .iter()
                    .any(|m| m.content.contains(&p.said))
        })
        .count();
    Some(present as f64 / evidence.len() as f64)
}

/// Running sums of one arm.
#[derive(Default)]
struct Tally {
    f1: BTreeMap<u8, (usize, f64)>,
    evidence: (usize, f64),
    whole: usize,
    prompt_tokens: u64,
    paged: u64,
    stats: SessionStats,
}

impl Tally {
    fn add_stats(&mut self, s: &SessionStats) {
        let t = &mut self.stats;
        t.turns += s.turns;
        t.cached_tokens += s.cached_tokens;
        t.cache_reported_tokens += s.cache_reported_tokens;
        t.ttft_ms_total += s.ttft_ms_total;
        t.ttft_turns += s.ttft_turns;
        t.overflows += s.overflows;
        t.context_retries += s.context_retries;
        t.truncations += s.truncations;
    }

    fn into_report(self, window: usize, seconds: f64, playback_seconds: f64) -> ArmReport {
        let questions: usize = self.f1.values().map(|(n, _)| n).sum();
        let sum: f64 = self.f1.values().map(|(_, s)| s).sum();
        let per_q = |x: f64| round4(x / questions.max(1) as f64);
        ArmReport {
            window,
            questions,
            f1: per_q(sum),
            f1_by_category: self
                .f1
                .iter()
                .map(|(c, (n, s))| (c.to_string(), round4(s / *n as f64)))
                .collect(),
            questions_by_category: self
                .f1
                .iter()
                .map(|(c, (n, _))| (c.to_string(), *n))
                .collect(),
            evidence_in_window: (self.evidence.0 > 0)
                .then(|| round4(self.evidence.1 / self.evidence.0 as f64)),
            whole_conversation: per_q(self.whole as f64),
            prompt_tokens: per_q(self.prompt_tokens as f64),
            cache_reuse: self.stats.cache_reuse().map(round4),
            ttft_ms_mean: self.stats.ttft_ms_mean().map(round4),
            paged_slices: per_q(self.paged as f64),
            overflows: self.stats.overflows,
            context_retries: self.stats.context_retries,
            truncations: self.stats.truncations,
            seconds: round3(seconds),
            playback_seconds: round3(playback_seconds),
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Run the arms asked for.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    if args.window == 0 {
        bail!("--window must be a positive number of tokens");
    }
    if args.arms.contains(&Arm::Full) && args.full_window <= args.window {
        bail!(
            "--full-window ({}) must be larger than --window ({}), or leave full out of --arms",
            args.full_window,
            args.window
        );
    }
    if args.questions == Some(0) {
        bail!("--questions must be at least 1");
    }
    if args.conversations == Some(0) {
        bail!("--conversations must be at least 1");
    }
    let mut arms = args.arms.clone();
    arms.sort();
    arms.dedup();
    if arms.is_empty() {
        bail!("no arm to run; pass --arms off,on,full or a part of it");
    }
    let mut convs = locomo::load(&args.data)?;
    convs.truncate(args.conversations.unwrap_or(usize::MAX));
    let eligible: Vec<Vec<usize>> = convs
        .iter()
        .map(|c| {
            (0..c.questions.len())
                .filter(|&i| asked(&c.questions[i]))
                .collect()
        })
        .collect();
    let available: usize = eligible.iter().map(Vec::len).sum();
    if available == 0 {
        bail!(
            "{} holds no LoCoMo questions of categories 1, 2 or 4 with an answer",
            args.data.display()
        );
    }
    let sizes: Vec<usize> = eligible.iter().map(Vec::len).collect();
    let picked: Vec<Vec<usize>> = sample(&sizes, args.questions, SAMPLE_SEED)
        .into_iter()
        .zip(&eligible)
        .map(|(pos, e)| pos.into_iter().map(|p| e[p]).collect())
        .collect();
    let asked_n: usize = picked.iter().map(Vec::len).sum();

    let tmp = tempfile::tempdir().context("creating a temporary directory for the pools")?;
    let mut report = Report {
        model: args.model.clone(),
        window: args.window,
        full_window: args.full_window,
        conversations: picked.iter().filter(|p| !p.is_empty()).count(),
        questions: asked_n,
        questions_available: available,
        arms: BTreeMap::new(),
        notes: Vec::new(),
    };
    for arm in arms {
        // A backend of its own per arm: no arm starts with another's prompt cached.
        let backend: Arc<dyn Backend> = Arc::from(backend::from_spec(&args.model, &args.backend)?);
        let window = match arm {
            Arm::Full => {
                let ctx = if backend.spec() == "reader" {
                    Ok(args.full_window)
                } else {
                    backend.context_length()
                };
                match ctx {
                    Ok(n) if n >= args.full_window => args.full_window,
                    Ok(n) => {
                        report.notes.push(format!(
                            "full arm skipped: the server's context is {n} tokens, under \
                             --full-window {}; start the server with a larger context or \
                             pass a smaller --full-window",
                            args.full_window
                        ));
                        continue;
                    }
                    Err(e) => {
                        report.notes.push(format!(
                            "full arm skipped: the server's context is unknown ({e})"
                        ));
                        continue;
                    }
                }
            }
            _ => args.window,
        };
        let r = run_arm(
            args,
            &backend,
            &convs,
            &picked,
            arm,
            window,
            &tmp.path().join(arm.name()),
        )?;
        report.arms.insert(arm.name().to_string(), r);
    }
    Ok(report)
}

fn run_arm(
    args: &Args,
    backend: &Arc<dyn Backend>,
    convs: &[Conversation],
    picked: &[Vec<usize>],
    arm: Arm,
    window: usize,
    dir: &Path,
) -> anyhow::Result<ArmReport> {
    let started = Instant::now();
    let mut playback = 0.0;
    let total: usize = picked.iter().map(Vec::len).sum();
    let mut done = 0;
    let mut tally = Tally::default();
    for (c, questions) in convs.iter().zip(picked) {
        if questions.is_empty() {
            continue;
        }
        let memory = Arc::new(
            Memory::open(
                &dir.join(&c.id),
                Arc::clone(&args.encoder),
                true,
                false,
                None,
            )
            .with_context(|| format!("opening the {} arm's pool for {}", arm.name(), c.id))?,
        );
        let mut session = Session::open(
            memory,
            Arc::clone(backend),
            SessionConfig {
                namespace: format!("locomo-{}", c.id),
                system_prompt: system_prompt(c),
                window: Some(window),
                paging: arm == Arm::On,
                // The answers asked for are a few words; greedy, for repeatable runs.
                answer_tokens: Some(ANSWER_TOKENS),
                temperature: Some(0.0),
                ..SessionConfig::default()
            },
        )?;
        let t = Instant::now();
        let played = play(&mut session, c)?;
        playback += t.elapsed().as_secs_f64();
        for &qi in questions {
            let q = &c.questions[qi];
            let report = session
                .turn(&ask(q), &mut |_| {})
                .with_context(|| format!("asking {} question {}", c.id, qi + 1))?;
            let score = f1(&report.answer, &q.answer);
            let e = tally.f1.entry(q.category).or_default();
            e.0 += 1;
            e.1 += score;
            let share = evidence_share(&report, &played, &q.evidence);
            if let Some(s) = share {
                tally.evidence.0 += 1;
                tally.evidence.1 += s;
            }
            // The first message after the system prompt is the oldest turn kept; a
            // memory block of the first line does not count.
            tally.whole += usize::from(played.first().is_some_and(|p| {
                report
                    .window
                    .messages
                    .get(1)
                    .is_some_and(|m| m.content == p.text)
            }));
            tally.prompt_tokens += report
                .prompt_tokens_reported
                .unwrap_or(report.window.est_tokens as u64);
            tally.paged += report.window.memory.len() as u64;
            if args.trace {
                eprintln!(
                    "[{}] {} q{} cat {} f1 {:.2} evidence {}, {} prompt tokens, {} recent, {} paged\n    Q: {}\n    gold: {}\n    answer: {}",
                    arm.name(),
                    c.id,
                    qi + 1,
                    q.category,
                    score,
                    share.map_or("—".to_string(), |s| format!("{s:.2}")),
                    report
                        .prompt_tokens_reported
                        .unwrap_or(report.window.est_tokens as u64),
                    report.window.recent_turns,
                    report.window.memory.len(),
                    q.text,
                    q.answer,
                    report.answer.trim().replace('\n', "\n            ")
                );
            }
            done += 1;
            if let Some(p) = &args.progress {
                p(arm.name(), done, total);
            }
        }
        tally.add_stats(&session.stats());
    }
    Ok(tally.into_report(window, started.elapsed().as_secs_f64(), playback))
}

impl Report {
    /// The arms side by side. Wall times vary from run to run and are left to
    /// [`Report::timing`], so that the table of a deterministic model is the same each run.
    pub fn table(&self) -> String {
        let arms: Vec<(&str, &ArmReport)> = ["off", "on", "full"]
            .iter()
            .filter_map(|n| self.arms.get(*n).map(|a| (*n, a)))
            .collect();
        let mut t = format!(
            "LoCoMo QA: model {}, window {} tokens (full: {}), {} questions of categories 1, 2, 4 \
             ({} available) from {} conversations\n\n",
            self.model,
            self.window,
            self.full_window,
            self.questions,
            self.questions_available,
            self.conversations
        );
        let row = |name: &str, cells: Vec<String>| {
            let mut line = format!("| {name:<26} |");
            for c in cells {
                line.push_str(&format!(" {c:>12} |"));
            }
            line + "\n"
        };
        t.push_str(&row(
            "",
            arms.iter()
                .map(|(n, _)| match *n {
                    "off" => "engine OFF".to_string(),
                    "on" => "engine ON".to_string(),
                    _ => "FULL".to_string(),
                })
                .collect(),
        ));
        t.push_str(&format!(
            "|----------------------------|{}\n",
            "-------------:|".repeat(arms.len())
        ));
        let cells = |f: &dyn Fn(&ArmReport) -> String| arms.iter().map(|(_, a)| f(a)).collect();
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("—".to_string(), f);
        t.push_str(&row("window (tokens)", cells(&|a| a.window.to_string())));
        t.push_str(&row("F1", cells(&|a| format!("{:.3}", a.f1))));
        for (c, name) in CATEGORIES {
            t.push_str(&row(
                &format!("F1 {name} (cat {c})"),
                cells(&|a| {
                    let key = c.to_string();
                    match (
                        a.f1_by_category.get(&key),
                        a.questions_by_category.get(&key),
                    ) {
                        (Some(f), Some(n)) => format!("{f:.3} ({n})"),
                        _ => "—".to_string(),
                    }
                }),
            ));
        }
        t.push_str(&row(
            "evidence in window",
            cells(&|a| opt(a.evidence_in_window, &|x| format!("{:.1}%", 100.0 * x))),
        ));
        t.push_str(&row(
            "whole conversation in",
            cells(&|a| format!("{:.1}%", 100.0 * a.whole_conversation)),
        ));
        t.push_str(&row(
            "prompt tokens / question",
            cells(&|a| format!("{:.0}", a.prompt_tokens)),
        ));
        t.push_str(&row(
            "memory slices / question",
            cells(&|a| format!("{:.2}", a.paged_slices)),
        ));
        t.push_str(&row(
            "served from the cache",
            cells(&|a| opt(a.cache_reuse, &|x| format!("{:.1}%", 100.0 * x))),
        ));
        t.push_str(&row(
            "time to first token",
            cells(&|a| opt(a.ttft_ms_mean, &|x| format!("{x:.0} ms"))),
        ));
        t.push_str(&row("questions asked", cells(&|a| a.questions.to_string())));
        t.push_str(&row(
            "window overflows",
            cells(&|a| a.overflows.to_string()),
        ));
        for n in &self.notes {
            t.push_str(&format!("\nnote: {n}\n"));
        }
        t
    }

    /// Wall time per arm, on one line.
    pub fn timing(&self) -> String {
        let parts: Vec<String> = ["off", "on", "full"]
            .iter()
            .filter_map(|n| {
                self.arms.get(*n).map(|a| {
                    format!(
                        "{n} {:.1} s ({:.1} s playing the conversations in)",
                        a.seconds, a.playback_seconds
                    )
                })
            })
            .collect();
        format!("wall time: {}\n", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_strips_punctuation_and_articles() {
        assert_eq!(
            normalize("The Sunrise, painted in 2022!"),
            vec!["sunrise", "painted", "in", "2022"]
        );
        assert_eq!(normalize("An apple a day"), vec!["apple", "day"]);
        assert_eq!(
            normalize("Caroline’s “new” job"),
            vec!["carolines", "new", "job"]
        );
        assert!(normalize(" ... ").is_empty());
    }

    #[test]
    fn f1_matches_known_pairs() {
        assert_eq!(f1("7 May 2023", "7 May 2023"), 1.0);
        assert_eq!(f1("the 7 May, 2023.", "7 May 2023"), 1.0);
        assert_eq!(f1("Paris", "London"), 0.0);
        // 2 of 3 predicted tokens are right, 2 of 2 gold: P 2/3, R 1 → F1 0.8.
        assert!((f1("on 7 May", "7 May") - 0.8).abs() < 1e-12);
        // P 1/1, R 1/4 → F1 0.4.
        assert!((f1("pottery", "pottery camping painting swimming") - 0.4).abs() < 1e-12);
        // Multisets: a repeated word counts once per occurrence in the gold answer.
        assert!((f1("dog dog", "dog cat") - 0.5).abs() < 1e-12);
        assert_eq!(f1("", "7 May 2023"), 0.0);
        assert_eq!(f1("the", "a"), 1.0);
    }

    #[test]
    fn sample_is_deterministic_spread_and_complete() {
        let sizes = [5, 0, 3, 10];
        let s = sample(&sizes, Some(7), 42);
        assert_eq!(s, sample(&sizes, Some(7), 42));
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 0, 2, 2]);
        for (g, p) in s.iter().enumerate() {
            assert!(p.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            assert!(p.iter().all(|&i| i < sizes[g]));
        }
        // A small group runs out and the others take the rest.
        let s = sample(&sizes, Some(16), 42);
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 0, 3, 8]);
        // All, or more than all, is everything in order.
        let all = sample(&sizes, None, 1);
        assert_eq!(all[3], (0..10).collect::<Vec<_>>());
        assert_eq!(sample(&sizes, Some(100), 1), all);
        // Another seed takes other items.
        assert_ne!(sample(&[50], Some(5), 1), sample(&[50], Some(5), 2));
    }

    #[test]
    fn arms_parse_and_refuse_unknown_names() {
        assert_eq!("full".parse::<Arm>(), Ok(Arm::Full));
        assert!("both"
            .parse::<Arm>()
            .unwrap_err()
            .contains("off, on or full"));
    }
}
