//! The drift benchmark: a long scripted build whose early decisions are needed late,
//! run with the same model in three arms — OFF, a plain sliding window; ON, a uctx
//! session that pages memory in from a pool that also holds a haystack of unrelated
//! documents; and FULL, the whole conversation in one large window (the upper bound).
//!
//! The script decides its facts in its first three stages, then runs work stages far
//! past the window, each asking for one or two of them in other words: no content word
//! of a fact's key or value (nor of any key in the script) is in the question that needs
//! it. Each fact's distractor (a similar key with another value) is decided at a seeded
//! random stage, never at or right before one that needs the fact. Facts are not pinned:
//! they come back by retrieval or not at all. After the last stage, one probe per fact
//! measures what the model can still reach.
//!
//! The facts are split in two by a seeded shuffle: the built-in `reader`'s threshold is
//! tuned on the tuning split alone, and the conversation (every figure reported) uses
//! only the held-out facts.
//!
//! Scoring reads the model's text only: an answer states the decided value (correct),
//! another value the script knows (a contradiction), or neither (stuck: someone would
//! have to step in). Beside it, the bench checks what reached the prompt: whether the
//! fact's own sentence was in the window of the turn that needed it.

pub mod facts;
pub mod haystack;
pub mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use uctx::backend::reader::{self, ReaderBackend};
use uctx::backend::{self, Backend, BackendOptions, Message, Role};
use uctx::encoder::Encoder;
use uctx::memory::{Memory, Unit};
use uctx::session::{Layout, Session, SessionConfig};
use uctx::slice::Source;

pub use facts::{Fact, FACTS};
pub use script::{judge, script, split, Script, Stage, Verdict};

/// A progress callback: (arm, turn, turns in all).
pub type Progress = Box<dyn Fn(&str, usize, usize)>;

/// Documents in the default haystack.
pub const DEFAULT_HAYSTACK_DOCS: usize = 3000;
/// The FULL arm's window for the `reader` when `--full-window` is not given: the reader
/// has no trained context to respect.
pub const READER_FULL_WINDOW: usize = 131_072;

/// What the bench needs to run.
pub struct Args {
    pub model: String,
    pub window: usize,
    pub stages: usize,
    pub backend: BackendOptions,
    pub encoder: Arc<dyn Encoder>,
    /// Where the arms' pools go; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Called after each turn with (arm, turn, turns in all).
    pub progress: Option<Progress>,
    /// Print every turn's verdicts, paged-in slices and answer to standard error.
    pub trace: bool,
    /// Tokens reserved for each answer; `None` takes the session's default.
    pub answer_tokens: Option<usize>,
    /// Window layouts of the ON arms: the first is `on`, each other one runs as
    /// `on-<layout>` beside it (to compare what the server's cache reuses).
    pub layouts: Vec<Layout>,
    /// The FULL arm's window; `None` runs it only for the `reader`.
    pub full_window: Option<usize>,
    /// Where the haystack's documents come from; generated when `None`.
    pub haystack: Option<PathBuf>,
    /// Haystack documents to ingest (at most).
    pub haystack_docs: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmReport {
    /// The arm's window, tokens.
    pub window: usize,
    /// Answers that stated a value other than the decided one.
    pub contradictions: u64,
    /// Share of stages whose answer stated every needed fact correctly.
    pub correctness: f64,
    /// Facts the model could still state at the end: [answerable, total].
    pub reach: [u64; 2],
    /// Ran to the end with no stage stuck and the final integration right.
    pub finished: bool,
    /// Answers that stated no value at all.
    pub stuck: u64,
    pub stages: u64,
    /// Share of needed facts (stages and probes) whose deciding sentence was in the
    /// prompt of the turn that needed it: what reached the window, whatever the model
    /// made of it.
    pub in_window: f64,
    /// Prompt tokens sent, as the server counted them (estimated where it reports none).
    pub prompt_tokens: u64,
    /// Turns whose prompt exceeded the window (must be 0).
    pub overflows: u64,
    /// Slices paged into windows (ON only).
    pub paged_slices: u64,
    /// Paged-in slices whose content showed up in the answer (ON only).
    pub used_slices: u64,
    /// The pager's hit rate (ON only): paged-in slices warm in its cache before the
    /// input arrived.
    pub hit_rate: Option<f64>,
    /// Prefetch that helped (ON only): paged-in slices that a search on the previous
    /// answer's streamed output had found before the input arrived and that the
    /// input's own search ranks too.
    pub helped: u64,
    /// `helped` as a share of the paged-in slices.
    pub helped_rate: Option<f64>,
    /// Search time taken off the turns' critical path, ms in all (ON only; timing).
    pub off_path_ms: Option<f64>,
    /// Time the turns waited for the pager's search, ms in all (ON only; timing).
    pub waited_ms: Option<f64>,
    /// The window layout (ON only).
    pub layout: Option<Layout>,
    /// Share of prompt tokens the server served from its prefix cache, when it says.
    pub cache_reuse: Option<f64>,
    /// Mean time to the first token of an answer, ms (timing).
    pub ttft_ms_mean: Option<f64>,
    /// Mean prompt evaluation time per turn by the server's own clock, ms (timing).
    pub prompt_eval_ms_mean: Option<f64>,
    /// Prompts the server refused as too large and were sent again smaller.
    pub context_retries: u64,
    /// Prompts the server seems to have cut without saying so.
    pub truncations: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub window: usize,
    pub stages: usize,
    /// Probes after the last stage (one per held-out fact).
    pub probes: usize,
    /// Facts the threshold was tuned on, and facts the conversation uses.
    pub tuning_facts: usize,
    pub held_out_facts: usize,
    /// The reader's threshold, tuned on the tuning split (`reader` only).
    pub reader_threshold: Option<f32>,
    /// How the tuned threshold did on the tuning split.
    pub tuning: Option<String>,
    /// Where the haystack came from, and the slices it made in ON's pool.
    pub haystack: String,
    pub haystack_slices: u64,
    /// `off`, `on`, `on-<layout>` for each further layout asked for, and `full`.
    pub arms: BTreeMap<String, ArmReport>,
    /// Arms skipped, and why.
    pub notes: Vec<String>,
}

const SYSTEM: &str = "You are the engineer on a long software build that runs over many stages. \
Decisions made in earlier stages stay binding. When asked for a value, answer with one short \
sentence that states it, one sentence per question.";

/// The thresholds tried when tuning the reader.
fn threshold_grid() -> impl Iterator<Item = f32> {
    (10..=95).map(|c| c as f32 / 100.0)
}

/// Tune the reader's threshold on the tuning facts alone. For each, the reader is shown
/// one long message deciding every tuning fact and every tuning distractor among tool
/// output, then asked the fact's question: once with the fact there, once with it taken
/// out. A threshold gains for each right answer and loses for each wrong value stated;
/// the middle of the best run of thresholds wins. Returns it and a line on how it did.
pub fn tune_threshold(tuning: &[usize]) -> (f32, String) {
    let mut rng = script::Rng(0x7475_6e65);
    let mut paragraphs: Vec<(Option<usize>, String)> = Vec::new();
    for &f in tuning {
        paragraphs.push((Some(f), FACTS[f].decided.to_string()));
        paragraphs.push((None, script::distractor_sentence(&FACTS[f])));
    }
    for _ in 0..tuning.len() / 2 {
        let lines = 8 + rng.below(6);
        paragraphs.push((None, script::tool_output(&mut rng, lines)));
    }
    rng.shuffle(&mut paragraphs);
    // (score, right) with the fact shown, (score, wrong) without it.
    let mut with = Vec::new();
    let mut without = Vec::new();
    for &f in tuning {
        for shown in [true, false] {
            let text: Vec<&str> = paragraphs
                .iter()
                .filter(|(g, _)| shown || *g != Some(f))
                .map(|(_, p)| p.as_str())
                .collect();
            let q = format!("Before you continue: {}", FACTS[f].needed);
            let msgs = [
                Message::new(Role::System, SYSTEM),
                Message::new(Role::User, text.join("\n\n")),
                Message::new(Role::User, q.clone()),
            ];
            let facts = reader::assertions(&msgs);
            let Some(question) = reader::questions(&q).into_iter().next() else {
                continue;
            };
            if let Some((a, score)) = reader::best(&facts, &question) {
                let right = script::contains_value(&a.value, FACTS[f].value);
                if shown {
                    with.push((score, right));
                } else {
                    without.push(score);
                }
            }
        }
    }
    let gain = |t: f32| -> i64 {
        let mut g = 0i64;
        for &(s, right) in &with {
            if s >= t {
                g += if right { 1 } else { -1 };
            }
        }
        g - without.iter().filter(|&&s| s >= t).count() as i64
    };
    let grid: Vec<f32> = threshold_grid().collect();
    let gains: Vec<i64> = grid.iter().map(|&t| gain(t)).collect();
    let top = gains.iter().copied().max().unwrap_or(0);
    // The longest run of thresholds at the top gain; its middle.
    let (mut best, mut run) = ((0usize, 0usize), None::<usize>);
    for (i, &g) in gains.iter().enumerate() {
        if g == top {
            let start = *run.get_or_insert(i);
            if i + 1 - start > best.1 - best.0 {
                best = (start, i + 1);
            }
        } else {
            run = None;
        }
    }
    let t = grid[(best.0 + best.1 - 1) / 2];
    let right = with.iter().filter(|&&(s, r)| r && s >= t).count();
    let wrong = with.iter().filter(|&&(s, r)| !r && s >= t).count();
    let wrong_absent = without.iter().filter(|&&s| s >= t).count();
    let line = format!(
        "tuned on {} facts: with the fact shown, {right} right and {wrong} wrong values; \
         with it taken out, {wrong_absent} wrong values",
        tuning.len()
    );
    (t, line)
}

/// Run every arm.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let (tuning, held) = split();
    let script = script(args.stages, &held);
    let is_reader = args.model == "reader";
    let (threshold, tuning_line) = if is_reader {
        let (t, line) = tune_threshold(&tuning);
        (Some(t), Some(line))
    } else {
        (None, None)
    };
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory for the pools")?;
            tmp.path().to_path_buf()
        }
    };
    let hay = haystack::load(args.haystack.as_deref(), args.haystack_docs)?;
    // A backend of its own per arm: no arm starts with another's prompt cached.
    let make_backend = |window: usize| -> anyhow::Result<Arc<dyn Backend>> {
        let opts = BackendOptions {
            context_override: Some(window),
            ..args.backend.clone()
        };
        Ok(match threshold {
            Some(t) => Arc::new(ReaderBackend::new(&opts).with_threshold(t)),
            None => Arc::from(backend::from_spec(&args.model, &opts)?),
        })
    };
    let mut report = Report {
        model: args.model.clone(),
        window: args.window,
        stages: script.stages.len(),
        probes: script.probes.len(),
        tuning_facts: tuning.len(),
        held_out_facts: held.len(),
        reader_threshold: threshold,
        tuning: tuning_line,
        haystack: hay.source.clone(),
        haystack_slices: 0,
        arms: BTreeMap::new(),
        notes: Vec::new(),
    };
    let plain = |name: &str, window: usize| Arm {
        name: name.to_string(),
        window,
        layout: None,
    };
    let off = plain("off", args.window);
    let r = run_arm(args, &make_backend(args.window)?, &script, &dir, &off, None)?;
    report.arms.insert("off".into(), r);
    let layouts = if args.layouts.is_empty() {
        vec![Layout::Stable]
    } else {
        args.layouts.clone()
    };
    for (i, &layout) in layouts.iter().enumerate() {
        let arm = Arm {
            name: if i == 0 {
                "on".to_string()
            } else {
                format!("on-{}", layout_name(layout))
            },
            window: args.window,
            layout: Some(layout),
        };
        let (r, slices) = {
            let mut slices = 0;
            let r = run_arm(
                args,
                &make_backend(args.window)?,
                &script,
                &dir,
                &arm,
                Some((&hay.docs, &mut slices)),
            )?;
            (r, slices)
        };
        report.haystack_slices = slices;
        report.arms.insert(arm.name, r);
    }
    let full = match args.full_window {
        Some(n) if is_reader => Some(n),
        Some(n) => {
            let backend = make_backend(n)?;
            match backend.context_length() {
                Ok(ctx) if ctx >= n => Some(n),
                Ok(ctx) => {
                    report.notes.push(format!(
                        "full arm skipped: the server's context is {ctx} tokens, under \
                         --full-window {n}; start the server with a larger context"
                    ));
                    None
                }
                Err(e) => {
                    report.notes.push(format!(
                        "full arm skipped: the server's context is unknown ({e})"
                    ));
                    None
                }
            }
        }
        None if is_reader => Some(READER_FULL_WINDOW),
        None => {
            report.notes.push(
                "full arm skipped: pass --full-window N (at most the model's trained context) \
                 to run the whole conversation in one window"
                    .to_string(),
            );
            None
        }
    };
    if let Some(n) = full {
        let arm = plain("full", n);
        let r = run_arm(args, &make_backend(n)?, &script, &dir, &arm, None)?;
        report.arms.insert("full".into(), r);
    }
    Ok(report)
}

/// A layout as the command line names it.
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Stable => "stable",
        Layout::StableInline => "stable-inline",
        Layout::Legacy => "legacy",
    }
}

struct Arm {
    name: String,
    window: usize,
    /// `Some` pages memory in with this layout.
    layout: Option<Layout>,
}

/// Ingest the haystack into `namespace`, in batches; returns the slices written.
fn ingest(memory: &Memory, namespace: &str, docs: &[String]) -> anyhow::Result<u64> {
    let mut slices = 0;
    for batch in docs.chunks(256) {
        let units: Vec<Unit> = batch
            .iter()
            .map(|d| Unit {
                namespace,
                source: Source::Document,
                text: d,
                turn: 0,
                ext_id: None,
            })
            .collect();
        slices += memory.write(&units)?.len() as u64;
    }
    Ok(slices)
}

fn run_arm(
    args: &Args,
    backend: &Arc<dyn Backend>,
    script: &Script,
    dir: &Path,
    arm: &Arm,
    haystack: Option<(&[String], &mut u64)>,
) -> anyhow::Result<ArmReport> {
    let name = arm.name.as_str();
    let memory = Arc::new(
        Memory::open(
            &dir.join(name),
            Arc::clone(&args.encoder),
            true,
            false,
            None,
        )
        .with_context(|| format!("opening the {name} arm's pool"))?,
    );
    let namespace = "drift";
    if let Some((docs, slices)) = haystack {
        *slices = ingest(&memory, namespace, docs).context("ingesting the haystack")?;
    }
    let mut session = Session::open(
        memory,
        Arc::clone(backend),
        SessionConfig {
            namespace: namespace.into(),
            system_prompt: SYSTEM.into(),
            window: Some(arm.window),
            paging: arm.layout.is_some(),
            layout: arm.layout.unwrap_or(Layout::Stable),
            answer_tokens: args.answer_tokens,
            temperature: Some(0.0),
            ..SessionConfig::default()
        },
    )?;
    let total = script.stages.len() + script.probes.len();
    let mut r = ArmReport {
        window: arm.window,
        stages: script.stages.len() as u64,
        reach: [0, script.probes.len() as u64],
        ..ArmReport::default()
    };
    let mut correct_stages = 0u64;
    let mut final_ok = false;
    let (mut needs, mut in_window) = (0u64, 0u64);
    for (i, stage) in script.stages.iter().chain(&script.probes).enumerate() {
        let report = session.turn(&stage.text, &mut |_| {})?;
        let verdicts = judge(&report.answer, &stage.needs);
        r.contradictions += verdicts
            .iter()
            .filter(|v| **v == Verdict::Contradiction)
            .count() as u64;
        r.stuck += verdicts.iter().filter(|v| **v == Verdict::Stuck).count() as u64;
        let all_right = verdicts.iter().all(|v| *v == Verdict::Correct);
        let seen: Vec<bool> = stage
            .needs
            .iter()
            .map(|&f| {
                let clause = format!("The {} is {}", FACTS[f].key, FACTS[f].value);
                report
                    .window
                    .messages
                    .iter()
                    .any(|m| m.content.contains(&clause))
            })
            .collect();
        needs += seen.len() as u64;
        in_window += seen.iter().filter(|s| **s).count() as u64;
        if args.trace {
            let paged: Vec<String> = report
                .window
                .memory
                .iter()
                .map(|p| format!("{}@t{}", p.id, p.turn))
                .collect();
            eprintln!(
                "[{name}] turn {} needs {:?} -> {:?}; in window {:?}; {} recent turns; paged [{}]\n    {}",
                i + 1,
                stage
                    .needs
                    .iter()
                    .map(|&f| FACTS[f].key)
                    .collect::<Vec<_>>(),
                verdicts,
                seen,
                report.window.recent_turns,
                paged.join(" "),
                report.answer.replace('\n', "\n    ")
            );
        }
        r.prompt_tokens += report
            .prompt_tokens_reported
            .unwrap_or(report.window.est_tokens as u64);
        if i < script.stages.len() {
            correct_stages += u64::from(all_right);
            if i + 1 == script.stages.len() {
                final_ok = all_right;
            }
        } else {
            r.reach[0] += u64::from(all_right);
        }
        if let Some(p) = &args.progress {
            p(name, i + 1, total);
        }
    }
    let stats = session.stats();
    r.correctness = correct_stages as f64 / script.stages.len() as f64;
    r.finished = final_ok && r.stuck == 0;
    r.in_window = if needs > 0 {
        in_window as f64 / needs as f64
    } else {
        0.0
    };
    r.overflows = stats.overflows;
    r.paged_slices = stats.paged_slices;
    r.used_slices = stats.used_slices;
    r.layout = arm.layout;
    r.cache_reuse = stats.cache_reuse();
    r.ttft_ms_mean = stats.ttft_ms_mean();
    r.prompt_eval_ms_mean = (stats.prompt_eval_ms_total > 0.0)
        .then(|| stats.prompt_eval_ms_total / stats.turns.max(1) as f64);
    r.context_retries = stats.context_retries;
    r.truncations = stats.truncations;
    if let Some(p) = session.pager_stats() {
        r.hit_rate = p.hit_rate();
        r.helped = p.predicted;
        r.helped_rate = p.helped_rate();
        r.off_path_ms = Some(p.off_path_ms);
        r.waited_ms = Some(p.waited_ms);
    }
    Ok(r)
}

/// One cell of a table row, from an arm's report.
type Cell<'a> = Box<dyn Fn(&ArmReport) -> String + 'a>;

impl Report {
    /// The arms side by side.
    pub fn table(&self) -> String {
        let mut names: Vec<&String> = self.arms.keys().collect();
        // off, on, the other layouts, full.
        names.sort_by_key(|n| {
            (
                n.as_str() == "full",
                n.as_str() != "off",
                n.as_str() != "on",
                n.to_string(),
            )
        });
        let arms: Vec<&ArmReport> = names.iter().map(|n| &self.arms[*n]).collect();
        let mut t = format!(
            "drift: model {}, window {} tokens, {} stages + {} probes, {} held-out facts\n",
            self.model, self.window, self.stages, self.probes, self.held_out_facts
        );
        if let (Some(th), Some(line)) = (self.reader_threshold, &self.tuning) {
            t.push_str(&format!(
                "reader threshold {th:.2}, {line}; the table is on the {} held-out facts only\n",
                self.held_out_facts
            ));
        }
        t.push_str(&format!(
            "haystack: {} ({} slices in ON's pool)\n",
            self.haystack, self.haystack_slices
        ));
        for n in &self.notes {
            t.push_str(n);
            t.push('\n');
        }
        t.push('\n');
        let header: Vec<String> = names
            .iter()
            .map(|n| match n.as_str() {
                "off" => "engine OFF".to_string(),
                "on" => "engine ON".to_string(),
                "full" => "FULL window".to_string(),
                other => format!("ON, {}", &other[3..]),
            })
            .collect();
        let row = |name: &str, cells: Vec<String>| {
            let mut line = format!("| {name:<26} |");
            for c in cells {
                line.push_str(&format!(" {c:>16} |"));
            }
            line + "\n"
        };
        t.push_str(&row("", header));
        t.push_str(&format!(
            "|----------------------------|{}\n",
            "-----------------:|".repeat(arms.len())
        ));
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        let pct = |h: Option<f64>| h.map_or("—".to_string(), |h| format!("{:.1}%", 100.0 * h));
        let ms = |h: Option<f64>| h.map_or("—".to_string(), |h| format!("{h:.0} ms"));
        let on = |a: &ArmReport, s: String| if a.layout.is_some() { s } else { "—".into() };
        let rows: Vec<(&str, Cell)> = vec![
            (
                "window",
                Box::new(|a: &ArmReport| {
                    let layout = a.layout.map_or("sliding", layout_name);
                    format!("{} {layout}", a.window)
                }),
            ),
            (
                "contradictions",
                Box::new(|a: &ArmReport| a.contradictions.to_string()),
            ),
            (
                "per-stage correctness",
                Box::new(|a: &ArmReport| format!("{:.2}", a.correctness)),
            ),
            (
                "fact reach at the end",
                Box::new(|a: &ArmReport| format!("{}/{}", a.reach[0], a.reach[1])),
            ),
            (
                "finished unattended",
                Box::new(move |a: &ArmReport| yes(a.finished)),
            ),
            (
                "stuck answers",
                Box::new(|a: &ArmReport| a.stuck.to_string()),
            ),
            (
                "needed fact in window",
                Box::new(move |a: &ArmReport| pct(Some(a.in_window))),
            ),
            (
                "prompt tokens sent",
                Box::new(|a: &ArmReport| a.prompt_tokens.to_string()),
            ),
            (
                "served from the cache",
                Box::new(move |a: &ArmReport| pct(a.cache_reuse)),
            ),
            (
                "time to first token",
                Box::new(move |a: &ArmReport| ms(a.ttft_ms_mean)),
            ),
            (
                "prompt eval per turn",
                Box::new(move |a: &ArmReport| ms(a.prompt_eval_ms_mean)),
            ),
            (
                "slices paged in",
                Box::new(move |a: &ArmReport| on(a, a.paged_slices.to_string())),
            ),
            (
                "pager hit rate",
                Box::new(move |a: &ArmReport| pct(a.hit_rate)),
            ),
            (
                "prefetch that helped",
                Box::new(move |a: &ArmReport| {
                    on(a, format!("{} ({})", a.helped, pct(a.helped_rate)))
                }),
            ),
            (
                "used by the answers",
                Box::new(move |a: &ArmReport| on(a, a.used_slices.to_string())),
            ),
            (
                "search off critical path",
                Box::new(move |a: &ArmReport| ms(a.off_path_ms)),
            ),
            (
                "waited for the search",
                Box::new(move |a: &ArmReport| ms(a.waited_ms)),
            ),
            (
                "window overflows",
                Box::new(|a: &ArmReport| a.overflows.to_string()),
            ),
            (
                "refused, sent smaller",
                Box::new(|a: &ArmReport| a.context_retries.to_string()),
            ),
            (
                "cut by the server",
                Box::new(|a: &ArmReport| a.truncations.to_string()),
            ),
        ];
        for (name, cell) in rows {
            t.push_str(&row(name, arms.iter().map(|a| cell(a)).collect()));
        }
        t
    }
}

#[cfg(test)]
mod tests;
