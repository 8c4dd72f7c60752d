//! The drift script: which facts are tuned on and which reported, the stages that decide
//! and need them, the distractors placed at seeded random stages, and the judge.

use super::facts::{Fact, FACTS};

/// Stages that decide facts; work stages follow.
pub const DECISION_STAGES: usize = 3;
/// Facts kept apart to tune the reader's threshold on; the others are reported.
pub const TUNING_FACTS: usize = 16;
/// The seed of every random choice the script makes.
const SEED: u64 = 0x0075_6374_7864_7269;

/// The facts split in two, by a seeded shuffle: (tuning, held out), each sorted.
pub fn split() -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng(SEED ^ 0x5eed);
    let mut order: Vec<usize> = (0..FACTS.len()).collect();
    rng.shuffle(&mut order);
    let mut tuning = order[..TUNING_FACTS].to_vec();
    let mut held = order[TUNING_FACTS..].to_vec();
    tuning.sort_unstable();
    held.sort_unstable();
    (tuning, held)
}

/// One user turn of the script.
#[derive(Clone, Debug)]
pub struct Stage {
    pub number: usize,
    pub text: String,
    /// Facts (indexes into [`FACTS`]) this stage's answer must state, in the order asked.
    pub needs: Vec<usize>,
}

/// The whole script: stages, then one probe per fact.
#[derive(Clone, Debug)]
pub struct Script {
    pub stages: Vec<Stage>,
    pub probes: Vec<Stage>,
    /// The stage (number) where each fact's distractor is decided: (fact, stage).
    pub distractors: Vec<(usize, usize)>,
}

/// A deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
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
    "Nothing here should change visible behaviour.",
    "Leave a short note in the runbook when you are finished.",
    "Measure before and after; guesses do not count as results.",
    "Pair with whoever owns the on-call rotation this week.",
    "Prefer deleting code to adding flags wherever that works.",
    "The staging cluster mirrors production closely enough for this.",
];

/// Filler: a tool-output block of log and code lines, `lines` lines long.
pub fn tool_output(rng: &mut Rng, lines: usize) -> String {
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

/// How a distractor is decided.
pub fn distractor_sentence(f: &Fact) -> String {
    format!(
        "One more decision from today's review. The {} is {}.",
        f.distractor_key, f.distractor_value
    )
}

/// Build the script for `stages` stages (at least [`DECISION_STAGES`] + 2) over the
/// facts `facts`: they are decided in the first stages, needed (one or two a stage, three
/// in the last) in the work stages after, and probed once each at the end. Each fact's
/// distractor is decided at a seeded random stage that neither needs the fact nor comes
/// right before one that does.
pub fn script(stages: usize, facts: &[usize]) -> Script {
    let stages = stages.max(DECISION_STAGES + 2);
    let mut rng = Rng(SEED);
    // Which stage needs what: a seeded order of the facts, taken in turn, again and again.
    let mut order = facts.to_vec();
    rng.shuffle(&mut order);
    let mut next = 0usize;
    let mut take = |n: usize| -> Vec<usize> {
        let mut out = Vec::new();
        while out.len() < n.min(order.len()) {
            let f = order[next % order.len()];
            next += 1;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    };
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); stages + 1];
    for (number, need) in needs
        .iter_mut()
        .enumerate()
        .take(stages)
        .skip(DECISION_STAGES + 1)
    {
        *need = take(if number < 8 { 1 } else { 2 });
    }
    needs[stages] = take(3);
    // Distractors: anywhere but at or right before a stage that needs the fact.
    let mut at: Vec<Vec<usize>> = vec![Vec::new(); stages + 1];
    let mut distractors = Vec::new();
    for &f in facts {
        let bad = |s: usize| needs[s].contains(&f) || (s < stages && needs[s + 1].contains(&f));
        let mut stage = None;
        for _ in 0..1000 {
            let s = 1 + rng.below(stages);
            if !bad(s) {
                stage = Some(s);
                break;
            }
        }
        if let Some(s) = stage {
            at[s].push(f);
            distractors.push((f, s));
        }
    }
    // Decisions: the facts in the seeded order, in three groups.
    let mut decided = facts.to_vec();
    rng.shuffle(&mut decided);
    let per = decided.len().div_ceil(DECISION_STAGES);
    let mut out = Vec::new();
    for number in 1..=stages {
        let mut paragraphs: Vec<String> = Vec::new();
        for &f in &at[number] {
            paragraphs.push(distractor_sentence(&FACTS[f]));
        }
        let text = if number <= DECISION_STAGES {
            for &f in decided.iter().skip((number - 1) * per).take(per) {
                paragraphs.push(FACTS[f].decided.to_string());
            }
            rng.shuffle(&mut paragraphs);
            format!(
                "Stage {number}: planning meeting notes. {}\n\n{}\n\nNote these decisions; later stages depend on them. No answer needed yet.",
                rng.pick(&NOTES),
                paragraphs.join("\n\n")
            )
        } else {
            let head = if number == stages {
                "final integration before the release.".to_string()
            } else {
                format!("{} the {}.", rng.pick(&TASKS), rng.pick(&COMPONENTS))
            };
            let lines = 8 + rng.below(6);
            let mut text = format!("Stage {number}: {head} {}\n\n", rng.pick(&NOTES));
            for p in &paragraphs {
                text.push_str(p);
                text.push_str("\n\n");
            }
            text.push_str(&tool_output(&mut rng, lines));
            text.push_str("\nBefore you continue, answer in one short sentence each:");
            for &f in &needs[number] {
                text.push(' ');
                text.push_str(FACTS[f].needed);
            }
            text
        };
        out.push(Stage {
            number,
            text,
            needs: needs[number].clone(),
        });
    }
    let probes = facts
        .iter()
        .enumerate()
        .map(|(i, &f)| Stage {
            number: stages + 1 + i,
            text: format!("Quick check before we close: {}", FACTS[f].needed),
            needs: vec![f],
        })
        .collect();
    Script {
        stages: out,
        probes,
        distractors,
    }
}

/// How an answer treated one needed fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    Contradiction,
    Stuck,
}

/// Every value the script knows (any fact's, any distractor's, any rival) but `f`'s own.
fn wrong_values(f: &Fact) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = FACTS
        .iter()
        .flat_map(|g| {
            std::iter::once(g.value)
                .chain(std::iter::once(g.distractor_value))
                .chain(g.rivals.iter().copied())
        })
        .filter(|w| !w.eq_ignore_ascii_case(f.value))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub fn contains_value(text: &str, value: &str) -> bool {
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

/// Judge an answer for each fact a stage needs. When the answer has one line per
/// question, each line is judged alone; otherwise the whole text is. Correct: it states
/// the decided value; a contradiction: another value the script knows; stuck: neither.
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
