//! The drift benchmark: a long scripted build whose early decisions are needed
//! late, run twice with the same model and window — OFF, a plain sliding
//! window, and ON, a uctx session that pages memory in.
//!
//! The script decides ten facts in its first three stages (ports, names,
//! versions, policies), then runs work stages far past the window, each
//! asking for one or two of those facts in other words than they were decided
//! in, while distractors that share a word with a fact (the *metrics* port
//! beside the *gateway* port) are decided close to where the fact is needed.
//! Facts are not pinned: they come back by retrieval or not at all. After the
//! last stage, one probe per fact measures what the model can still reach.
//!
//! Scoring reads the model's text only: an answer states the decided value
//! (correct), another value the script knows for that kind of thing (a
//! contradiction), or neither (stuck: someone would have to step in).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use uctx::backend::{self, Backend, BackendOptions};
use uctx::encoder::Encoder;
use uctx::memory::Memory;
use uctx::session::{Layout, Session, SessionConfig};

/// A fact decided early and needed late.
#[derive(Clone, Debug)]
pub struct Fact {
    pub key: &'static str,
    pub value: &'static str,
    /// How the fact is decided (contains `The <key> is <value>`).
    pub decided: &'static str,
    /// How the fact is asked for later: other words around the same thing.
    pub needed: &'static str,
    /// Values a drifting model might state instead.
    pub rivals: &'static [&'static str],
    /// A fact sharing a word with this one, decided near where this one is needed.
    pub distractor: &'static str,
    pub distractor_value: &'static str,
}

pub const FACTS: [Fact; 10] = [
    Fact {
        key: "gateway port",
        value: "8443",
        decided: "We went through the options with operations. The gateway port is 8443, because 443 stays with the legacy proxy until it is retired.",
        needed: "Which gateway port should the load balancer health check probe?",
        rivals: &["443", "8080", "80"],
        distractor: "The metrics port is 9100.",
        distractor_value: "9100",
    },
    Fact {
        key: "database engine",
        value: "postgres-16",
        decided: "Storage came next and nobody wants two engines to maintain. The database engine is postgres-16, for its logical replication.",
        needed: "Which database engine should the migration scripts target?",
        rivals: &["postgres-15", "mysql-8", "sqlite"],
        distractor: "The database pool is 40.",
        distractor_value: "40",
    },
    Fact {
        key: "service name",
        value: "orbit-api",
        decided: "Branding signed off on the naming question this morning. The service name is orbit-api in every manifest from now on.",
        needed: "What service name goes into the container labels?",
        rivals: &["orbit", "api-service"],
        distractor: "The service owner is platform-team.",
        distractor_value: "platform-team",
    },
    Fact {
        key: "api version",
        value: "v3",
        decided: "Old clients break either way, so we make a clean cut. The api version is v3, and the v2 routes are dropped.",
        needed: "What api version prefix do the route handlers mount under?",
        rivals: &["v1", "v2", "v4"],
        distractor: "The api timeout is 30s.",
        distractor_value: "30s",
    },
    Fact {
        key: "retry policy",
        value: "exponential-backoff",
        decided: "Flaky upstreams were the main pain in the last project. The retry policy is exponential-backoff, with jitter on every attempt.",
        needed: "Which retry policy must the HTTP client wrapper implement?",
        rivals: &["fixed-interval", "linear-backoff", "no-retry"],
        distractor: "The retry limit is 5.",
        distractor_value: "5",
    },
    Fact {
        key: "log format",
        value: "json-lines",
        decided: "Observability wants machine-readable output everywhere. The log format is json-lines, one event per line.",
        needed: "What log format should the request logger emit?",
        rivals: &["plain-text", "logfmt"],
        distractor: "The log level is debug.",
        distractor_value: "debug",
    },
    Fact {
        key: "deploy region",
        value: "eu-west-3",
        decided: "Data residency rules settle where we run. The deploy region is eu-west-3, close to most customers.",
        needed: "Which deploy region do the terraform variables point at?",
        rivals: &["us-east-1", "eu-central-1", "eu-west-1"],
        distractor: "The deploy window is friday.",
        distractor_value: "friday",
    },
    Fact {
        key: "cache ttl",
        value: "900s",
        decided: "Product accepts slightly stale listings. The cache ttl is 900s for every listing response.",
        needed: "What cache ttl should the response cache apply?",
        rivals: &["60s", "300s", "3600s"],
        distractor: "The cache size is 512mb.",
        distractor_value: "512mb",
    },
    Fact {
        key: "release codename",
        value: "tern",
        decided: "Marketing picked a bird again for this cycle. The release codename is tern, and it goes on every artifact.",
        needed: "What release codename belongs in the changelog header?",
        rivals: &["heron", "gull", "puffin"],
        distractor: "The release channel is beta.",
        distractor_value: "beta",
    },
    Fact {
        key: "naming convention",
        value: "snake_case",
        decided: "The data team reads our tables directly. The naming convention is snake_case for every table and column.",
        needed: "Which naming convention do the new columns follow?",
        rivals: &["camelCase", "kebab-case", "PascalCase"],
        distractor: "The naming prefix is ux.",
        distractor_value: "ux",
    },
];

/// Stages that decide facts; work stages follow.
const DECISION_STAGES: usize = 3;

/// One user turn of the script.
#[derive(Clone, Debug)]
pub struct Stage {
    pub number: usize,
    pub text: String,
    /// Facts (indexes into [`FACTS`]) this stage's answer must state.
    pub needs: Vec<usize>,
}

/// The whole script: stages, then one probe per fact.
#[derive(Clone, Debug)]
pub struct Script {
    pub stages: Vec<Stage>,
    pub probes: Vec<Stage>,
}

/// A deterministic generator for filler (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const COMPONENTS: [&str; 12] = [
    "scheduler",
    "ingest worker",
    "billing job",
    "search indexer",
    "thumbnail renderer",
    "webhook relay",
    "audit trail",
    "session store",
    "feature flags",
    "mail sender",
    "report builder",
    "quota tracker",
];
const TASKS: [&str; 10] = [
    "wire up",
    "write tests for",
    "refactor",
    "profile",
    "document",
    "add tracing to",
    "split out",
    "harden",
    "review",
    "benchmark",
];
const VERBS: [&str; 8] = [
    "drained",
    "flushed",
    "retried",
    "skipped",
    "merged",
    "rebuilt",
    "sampled",
    "compacted",
];
const NOTES: [&str; 8] = [
    "Keep the change small enough to review in one sitting.",
    "The previous attempt stalled on flaky fixtures, so stabilise those first.",
    "Nothing here should change behaviour that customers can see.",
    "Leave a short note in the runbook when you are finished.",
    "Measure before and after; guesses do not count as results.",
    "Pair with whoever owns the on-call rotation this week.",
    "Prefer deleting code to adding flags wherever that works.",
    "The staging cluster mirrors production closely enough for this.",
];

/// Filler: a tool-output block of log and code lines, about `lines` lines long.
fn tool_output(rng: &mut Rng, lines: usize) -> String {
    let mut out = String::from("Output of the last run:\n");
    for _ in 0..lines {
        let comp = rng.pick(&COMPONENTS).replace(' ', "_");
        match rng.below(3) {
            0 => out.push_str(&format!(
                "2026-03-{:02}T{:02}.{:02}Z INFO {comp} {} batch {} in {}ms, queue depth {}\n",
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.pick(&VERBS),
                rng.below(5000),
                1 + rng.below(900),
                rng.below(64)
            )),
            1 => out.push_str(&format!(
                "fn {comp}_step_{}(items: &[Item]) -> usize {{ items.iter().filter(|i| i.ready).count() }}\n",
                rng.below(100)
            )),
            _ => out.push_str(&format!(
                "WARN {comp} slow call took {}ms after {} attempts\n",
                100 + rng.below(4000),
                1 + rng.below(4)
            )),
        }
    }
    out
}

/// Build the script for `stages` stages (at least 20).
pub fn script(stages: usize) -> Script {
    let stages = stages.max(20);
    let mut rng = Rng(0x0075_6374_7864_7269);
    let mut out = Vec::new();
    // Decisions: facts 0-3, 4-6, 7-9.
    let groups: [&[usize]; DECISION_STAGES] = [&[0, 1, 2, 3], &[4, 5, 6], &[7, 8, 9]];
    for (i, group) in groups.iter().enumerate() {
        let mut text = format!(
            "Stage {}: planning meeting notes. {}\n\n",
            i + 1,
            rng.pick(&NOTES)
        );
        for &f in group.iter() {
            text.push_str(FACTS[f].decided);
            text.push(' ');
            text.push_str(rng.pick(&NOTES));
            text.push_str("\n\n");
        }
        text.push_str("Note these decisions; later stages depend on them. No answer needed yet.");
        out.push(Stage {
            number: i + 1,
            text,
            needs: Vec::new(),
        });
    }
    // Work stages: each needs one fact (two from stage 8 on); a fact's
    // distractor is decided in the stage that first needs it.
    for number in DECISION_STAGES + 1..stages {
        let first = (number - DECISION_STAGES - 1) % FACTS.len();
        let mut needs = vec![first];
        if number >= 8 {
            let second = (number + 3) % FACTS.len();
            if second != first {
                needs.push(second);
            }
        }
        let comp = rng.pick(&COMPONENTS);
        let lines = 8 + rng.below(6);
        let mut text = format!(
            "Stage {number}: {} the {comp}. {}\n\n{}\n",
            rng.pick(&TASKS),
            rng.pick(&NOTES),
            tool_output(&mut rng, lines)
        );
        if number - DECISION_STAGES - 1 < FACTS.len() {
            text.push_str(&format!(
                "One more decision from today's review.\n{}\n\n",
                FACTS[first].distractor
            ));
        }
        text.push_str("Before you continue, answer in one short sentence each:");
        for &f in &needs {
            text.push(' ');
            text.push_str(FACTS[f].needed);
        }
        out.push(Stage {
            number,
            text,
            needs,
        });
    }
    // The last stage integrates: it needs three facts at once.
    out.push(Stage {
        number: stages,
        text: format!(
            "Stage {stages}: final integration before the release. {}\n\n{}\nAnswer in one short sentence each: {} {} {}",
            rng.pick(&NOTES),
            tool_output(&mut rng, 6),
            FACTS[0].needed,
            FACTS[3].needed,
            FACTS[6].needed
        ),
        needs: vec![0, 3, 6],
    });
    let probes = FACTS
        .iter()
        .enumerate()
        .map(|(i, f)| Stage {
            number: stages + 1 + i,
            text: format!("Quick check before we close: {}", f.needed),
            needs: vec![i],
        })
        .collect();
    Script {
        stages: out,
        probes,
    }
}

/// How an answer treated one needed fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    Contradiction,
    Stuck,
}

/// Every value the script knows for a fact's kind of thing, except the decided one.
fn wrong_values(f: &Fact) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = f.rivals.to_vec();
    v.push(f.distractor_value);
    v
}

fn contains_value(text: &str, value: &str) -> bool {
    let text = text.to_lowercase();
    let value = value.to_lowercase();
    text.match_indices(&value).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + value.len()..].chars().next();
        let boundary =
            |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
        boundary(before) && boundary(after)
    })
}

/// Judge an answer for each fact a stage needs. When the answer has one line
/// per question, each line is judged alone; otherwise the whole text is.
pub fn judge(answer: &str, needs: &[usize]) -> Vec<Verdict> {
    let lines: Vec<&str> = answer.lines().filter(|l| !l.trim().is_empty()).collect();
    needs
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            let part = if lines.len() == needs.len() {
                lines[i]
            } else {
                answer
            };
            let fact = &FACTS[f];
            if contains_value(part, fact.value) {
                Verdict::Correct
            } else if wrong_values(fact).iter().any(|w| contains_value(part, w)) {
                Verdict::Contradiction
            } else {
                Verdict::Stuck
            }
        })
        .collect()
}

/// A progress callback: (arm, turn, turns in all).
pub type Progress = Box<dyn Fn(&str, usize, usize)>;

/// What the bench needs to run.
pub struct Args {
    pub model: String,
    pub window: usize,
    pub stages: usize,
    pub backend: BackendOptions,
    pub encoder: Arc<dyn Encoder>,
    /// Where the two arms' pools go; a temporary directory when `None`.
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
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmReport {
    /// Answers that stated a value other than the decided one.
    pub contradictions: u64,
    /// Share of stages whose answer stated every needed fact correctly.
    pub correctness: f64,
    /// Facts the model could still state at the end: [answerable, total].
    pub reach: [u64; 2],
    /// Ran to the end with no stage stuck and the final integration right.
    pub finished: bool,
    /// Prompt tokens sent, as the server counted them (estimated where it reports none).
    pub prompt_tokens: u64,
    /// The pager's hit rate (ON only): paged-in slices that were already warm
    /// in its cache when the input arrived.
    pub hit_rate: Option<f64>,
    /// Share of paged-in slices that the search on the previous answer's
    /// streamed output had found (ON only).
    pub predicted_rate: Option<f64>,
    /// Answers that stated no value at all.
    pub stuck: u64,
    pub stages: u64,
    /// Turns whose prompt exceeded the window (must be 0).
    pub overflows: u64,
    /// Slices paged into windows (ON only).
    pub paged_slices: u64,
    /// The window layout.
    pub layout: Option<Layout>,
    /// Share of prompt tokens the server served from its prefix cache, when it says.
    pub cache_reuse: Option<f64>,
    /// Mean time to the first token of an answer, ms.
    pub ttft_ms_mean: Option<f64>,
    /// Mean prompt evaluation time per turn by the server's own clock, ms.
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
    /// `off`, `on`, and `on-<layout>` for each further layout asked for.
    pub arms: std::collections::BTreeMap<String, ArmReport>,
}

const SYSTEM: &str = "You are the engineer on a long software build that runs over many stages. \
Decisions made in earlier stages stay binding. When asked for a value, answer with one short \
sentence that states it, one sentence per question.";

/// Run both arms.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let backend: Arc<dyn Backend> = Arc::from(backend::from_spec(&args.model, &args.backend)?);
    let script = script(args.stages);
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory for the pools")?;
            tmp.path().to_path_buf()
        }
    };
    let mut arms = std::collections::BTreeMap::new();
    let layouts = if args.layouts.is_empty() {
        vec![Layout::Stable]
    } else {
        args.layouts.clone()
    };
    arms.insert(
        "off".to_string(),
        run_arm(args, &backend, &script, &dir.join("off"), None)?,
    );
    for (i, &layout) in layouts.iter().enumerate() {
        let name = if i == 0 {
            "on".to_string()
        } else {
            format!("on-{}", layout_name(layout))
        };
        let report = run_arm(args, &backend, &script, &dir.join(&name), Some(layout))?;
        arms.insert(name, report);
    }
    Ok(Report {
        model: args.model.clone(),
        window: args.window,
        stages: script.stages.len(),
        arms,
    })
}

/// A layout as the command line names it.
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Stable => "stable",
        Layout::StableInline => "stable-inline",
        Layout::Legacy => "legacy",
    }
}

fn run_arm(
    args: &Args,
    backend: &Arc<dyn Backend>,
    script: &Script,
    dir: &std::path::Path,
    layout: Option<Layout>,
) -> anyhow::Result<ArmReport> {
    let paging = layout.is_some();
    let arm = match layout {
        None => "off",
        Some(l) if Some(&l) == args.layouts.first() || args.layouts.is_empty() => "on",
        Some(l) => layout_name(l),
    };
    let memory = Arc::new(
        Memory::open(dir, Arc::clone(&args.encoder), true, false, None)
            .with_context(|| format!("opening the {arm} arm's pool"))?,
    );
    let mut session = Session::open(
        memory,
        Arc::clone(backend),
        SessionConfig {
            namespace: format!("drift-{arm}"),
            system_prompt: SYSTEM.into(),
            window: Some(args.window),
            paging,
            layout: layout.unwrap_or(Layout::Stable),
            answer_tokens: args.answer_tokens,
            temperature: Some(0.0),
            ..SessionConfig::default()
        },
    )?;
    let total = script.stages.len() + script.probes.len();
    let mut r = ArmReport {
        stages: script.stages.len() as u64,
        reach: [0, script.probes.len() as u64],
        ..ArmReport::default()
    };
    let mut correct_stages = 0u64;
    let mut final_ok = false;
    for (i, stage) in script.stages.iter().chain(&script.probes).enumerate() {
        let report = session.turn(&stage.text, &mut |_| {})?;
        let verdicts = judge(&report.answer, &stage.needs);
        r.contradictions += verdicts
            .iter()
            .filter(|v| **v == Verdict::Contradiction)
            .count() as u64;
        r.stuck += verdicts.iter().filter(|v| **v == Verdict::Stuck).count() as u64;
        let all_right = verdicts.iter().all(|v| *v == Verdict::Correct);
        if args.trace {
            let paged: Vec<String> = report
                .window
                .memory
                .iter()
                .map(|p| format!("{}@t{}", p.id, p.turn))
                .collect();
            eprintln!(
                "[{arm}] turn {} needs {:?} -> {:?}; {} recent turns; paged [{}]\n    {}",
                i + 1,
                stage
                    .needs
                    .iter()
                    .map(|&f| FACTS[f].key)
                    .collect::<Vec<_>>(),
                verdicts,
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
            p(arm, i + 1, total);
        }
    }
    let stats = session.stats();
    r.correctness = correct_stages as f64 / script.stages.len() as f64;
    r.finished = final_ok && r.stuck == 0;
    r.overflows = stats.overflows;
    r.paged_slices = stats.paged_slices;
    r.layout = layout;
    r.cache_reuse = stats.cache_reuse();
    r.ttft_ms_mean = stats.ttft_ms_mean();
    r.prompt_eval_ms_mean = (stats.prompt_eval_ms_total > 0.0)
        .then(|| stats.prompt_eval_ms_total / stats.turns.max(1) as f64);
    r.context_retries = stats.context_retries;
    r.truncations = stats.truncations;
    if let Some(p) = session.pager_stats() {
        r.hit_rate = p.hit_rate();
        r.predicted_rate =
            (p.hits + p.misses > 0).then(|| p.predicted as f64 / (p.hits + p.misses) as f64);
    }
    Ok(r)
}

/// One cell of a table row, from an arm's report.
type Cell<'a> = Box<dyn Fn(&ArmReport) -> String + 'a>;

impl Report {
    /// The arms side by side.
    pub fn table(&self) -> String {
        let mut names: Vec<&String> = self.arms.keys().collect();
        // off, on, then the other layouts.
        names.sort_by_key(|n| (n.as_str() != "off", n.as_str() != "on", n.to_string()));
        let arms: Vec<&ArmReport> = names.iter().map(|n| &self.arms[*n]).collect();
        let mut t = format!(
            "drift: model {}, window {} tokens, {} stages + {} probes\n\n",
            self.model,
            self.window,
            self.stages,
            FACTS.len()
        );
        let header: Vec<String> = names
            .iter()
            .map(|n| match n.as_str() {
                "off" => "engine OFF".to_string(),
                "on" => "engine ON".to_string(),
                other => format!("ON, {}", &other[3..]),
            })
            .collect();
        let row = |name: &str, cells: Vec<String>| {
            let mut line = format!("| {name:<22} |");
            for c in cells {
                line.push_str(&format!(" {c:>16} |"));
            }
            line + "\n"
        };
        t.push_str(&row("", header));
        t.push_str(&format!(
            "|------------------------|{}\n",
            "-----------------:|".repeat(arms.len())
        ));
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        let pct = |h: Option<f64>| h.map_or("—".to_string(), |h| format!("{:.1}%", 100.0 * h));
        let ms = |h: Option<f64>| h.map_or("—".to_string(), |h| format!("{h:.0} ms"));
        let rows: Vec<(&str, Cell)> = vec![
            (
                "window layout",
                Box::new(|a: &ArmReport| {
                    a.layout
                        .map_or("sliding".to_string(), |l| layout_name(l).to_string())
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
                "pager hit rate",
                Box::new(move |a: &ArmReport| pct(a.hit_rate)),
            ),
            (
                "predicted by prefetch",
                Box::new(move |a: &ArmReport| pct(a.predicted_rate)),
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
mod tests {
    use super::*;

    #[test]
    fn script_has_the_shape_the_issue_asks_for() {
        let s = script(24);
        assert_eq!(s.stages.len(), 24);
        assert!(FACTS.len() >= 8);
        // Every fact is needed at least once after the decision stages.
        for f in 0..FACTS.len() {
            assert!(s.stages[DECISION_STAGES..]
                .iter()
                .any(|st| st.needs.contains(&f)));
        }
        // Decided and needed wordings differ, and needs never leak the value.
        for st in &s.stages[DECISION_STAGES..] {
            for &f in &st.needs {
                assert!(
                    !contains_value(&st.text, FACTS[f].value),
                    "stage {} leaks {}",
                    st.number,
                    FACTS[f].value
                );
            }
        }
        for f in &FACTS {
            assert!(f.decided.contains(&format!("The {} is {}", f.key, f.value)));
            assert_ne!(f.decided, f.needed);
        }
        assert_eq!(s.probes.len(), FACTS.len());
        // Deterministic.
        assert_eq!(script(24).stages[10].text, s.stages[10].text);
    }

    #[test]
    fn judging_reads_values_not_substrings() {
        assert_eq!(
            judge("The gateway port is 8443.", &[0]),
            vec![Verdict::Correct]
        );
        assert_eq!(
            judge("The metrics port is 9100.", &[0]),
            vec![Verdict::Contradiction]
        );
        assert_eq!(judge("Use port 84430.", &[0]), vec![Verdict::Stuck]);
        assert_eq!(
            judge("I don't know the gateway port.", &[0]),
            vec![Verdict::Stuck]
        );
        assert_eq!(
            judge("The gateway port is 8443.\nThe retry limit is 5.", &[0, 4]),
            vec![Verdict::Correct, Verdict::Contradiction]
        );
    }
}
