use super::script::{contains_value, distractor_sentence, DECISION_STAGES, TUNING_FACTS};
use super::*;

/// A word cut to its stem: lowercase, a common suffix dropped.
fn stem(w: &str) -> String {
    for suffix in ["ing", "ed", "es", "s", "er", "ly", "ion"] {
        if let Some(s) = w.strip_suffix(suffix) {
            if s.chars().count() >= 3 {
                return s.to_string();
            }
        }
    }
    w.to_string()
}

/// The content words of a text, as stems.
fn content(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && !uctx::lexical::is_stopword(w))
        .map(stem)
        .collect()
}

/// Two stems clash when equal, or when one (of four letters or more) begins the other.
fn clash(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    a == b || (short.len() >= 4 && long.starts_with(short))
}

#[test]
fn needed_questions_share_no_content_word_with_any_key_or_value() {
    // Every key and value of the script: the fact's own, its distractor's, and the others'.
    let mut keyed: Vec<(String, &str)> = Vec::new();
    for f in &FACTS {
        for text in [f.key, f.value, f.distractor_key, f.distractor_value] {
            for w in content(text) {
                keyed.push((w, f.key));
            }
        }
    }
    let mut clashes = Vec::new();
    for f in &FACTS {
        // The fact's own deciding sentence, context included, gives the question no hook.
        let own: Vec<String> = content(f.decided);
        for q in content(f.needed) {
            for (w, of) in &keyed {
                if clash(&q, w) {
                    clashes.push(format!("{:?}: {q:?} ~ {w:?} (of {of:?})", f.needed));
                }
            }
            for w in &own {
                if clash(&q, w) {
                    clashes.push(format!("{:?}: {q:?} ~ {w:?} (its own decision)", f.needed));
                }
            }
        }
    }
    assert!(clashes.is_empty(), "{}", clashes.join("\n"));
}

#[test]
fn the_check_catches_a_question_that_repeats_its_key() {
    let q = content("Which gateway ports does the proxy expose?");
    let k = content("gateway port");
    assert!(q.iter().any(|a| k.iter().any(|b| clash(a, b))));
    assert!(clash(&stem("deployment"), &stem("deploy")));
    assert!(!clash("port", "post"));
}

#[test]
fn facts_are_well_formed() {
    assert!((30..=60).contains(&FACTS.len()));
    for f in &FACTS {
        assert!(
            f.decided
                .contains(&format!("The {} is {}.", f.key, f.value)),
            "{}",
            f.key
        );
        assert!(f.needed.ends_with('?'), "{}", f.needed);
        assert_ne!(f.key, f.distractor_key);
        assert_ne!(f.value, f.distractor_value);
        // Similar keys: the distractor shares a word with the fact's key.
        let k = content(f.key);
        assert!(
            content(f.distractor_key).iter().any(|w| k.contains(w)),
            "{} / {}",
            f.key,
            f.distractor_key
        );
        for g in &FACTS {
            assert!(std::ptr::eq(f, g) || f.value != g.value, "{}", f.value);
        }
    }
}

#[test]
fn tuning_and_held_out_facts_are_apart() {
    let (tuning, held) = split();
    assert_eq!(tuning.len(), TUNING_FACTS);
    assert_eq!(tuning.len() + held.len(), FACTS.len());
    assert!(tuning.iter().all(|f| !held.contains(f)));
    assert_eq!(split(), (tuning, held));
}

#[test]
fn script_needs_every_fact_and_keeps_distractors_away_from_the_questions() {
    let (_, held) = split();
    let s = script(24, &held);
    assert_eq!(s.stages.len(), 24);
    assert_eq!(s.probes.len(), held.len());
    for &f in &held {
        assert!(
            s.stages[DECISION_STAGES..]
                .iter()
                .any(|st| st.needs.contains(&f)),
            "{} is never needed",
            FACTS[f].key
        );
        // Decided once, in a decision stage.
        let decided: Vec<usize> = s
            .stages
            .iter()
            .filter(|st| st.text.contains(FACTS[f].decided))
            .map(|st| st.number)
            .collect();
        assert_eq!(decided.len(), 1);
        assert!(decided[0] <= DECISION_STAGES);
    }
    assert_eq!(s.distractors.len(), held.len());
    let mut stages_used = std::collections::BTreeSet::new();
    for &(f, at) in &s.distractors {
        stages_used.insert(at);
        let stage = &s.stages[at - 1];
        assert!(stage.text.contains(&distractor_sentence(&FACTS[f])));
        assert!(
            !stage.needs.contains(&f),
            "{} beside its question",
            FACTS[f].key
        );
        if at < s.stages.len() {
            assert!(!s.stages[at].needs.contains(&f));
        }
    }
    // Spread out, not bunched where the questions are.
    assert!(stages_used.len() >= 8, "{stages_used:?}");
    // Work stages never state a value they ask for.
    for st in &s.stages[DECISION_STAGES..] {
        for &f in &st.needs {
            assert!(
                !contains_value(&st.text, FACTS[f].value),
                "stage {}",
                st.number
            );
            assert!(st.text.contains(FACTS[f].needed));
        }
    }
    // Deterministic.
    assert_eq!(script(24, &held).stages[10].text, s.stages[10].text);
}

#[test]
fn judging_reads_values_not_substrings() {
    let port = 0; // gateway port
    let retry = 4; // retry policy, distractor retry limit 12
    assert_eq!(FACTS[port].key, "gateway port");
    assert_eq!(FACTS[retry].key, "retry policy");
    assert_eq!(
        judge("The gateway port is 8443.", &[port]),
        vec![Verdict::Correct]
    );
    assert_eq!(
        judge("The metrics port is 9100.", &[port]),
        vec![Verdict::Contradiction]
    );
    // Another fact's value is a contradiction too.
    assert_eq!(
        judge("The frontend framework is svelte.", &[port]),
        vec![Verdict::Contradiction]
    );
    assert_eq!(judge("Use port 84430.", &[port]), vec![Verdict::Stuck]);
    assert_eq!(
        judge("I don't know the number entry.", &[port]),
        vec![Verdict::Stuck]
    );
    assert_eq!(
        judge(
            "The gateway port is 8443.\nThe retry limit is 12.",
            &[port, retry]
        ),
        vec![Verdict::Correct, Verdict::Contradiction]
    );
}

#[test]
fn the_threshold_is_tuned_on_the_tuning_split_only_and_the_same_each_time() {
    let (tuning, _) = split();
    let (t, line) = tune_threshold(&tuning);
    assert!(threshold_grid().any(|g| g == t), "{t}");
    assert!(line.contains(&format!("{} facts", tuning.len())), "{line}");
    assert_eq!(tune_threshold(&tuning).0, t);
}

fn small_run() -> serde_json::Value {
    let report = run(&Args {
        model: "reader".into(),
        window: 2048,
        stages: 6,
        backend: BackendOptions::default(),
        encoder: Arc::new(uctx::encoder::StaticEncoder::bundled().unwrap()),
        dir: None,
        progress: None,
        trace: false,
        answer_tokens: None,
        layouts: vec![Layout::Stable],
        full_window: Some(16_384),
        haystack: None,
        haystack_docs: 400,
    })
    .unwrap();
    let mut v = serde_json::to_value(&report).unwrap();
    // Timing is the one thing allowed to differ.
    for arm in v["arms"].as_object_mut().unwrap().values_mut() {
        let arm = arm.as_object_mut().unwrap();
        for key in [
            "ttft_ms_mean",
            "prompt_eval_ms_mean",
            "off_path_ms",
            "waited_ms",
        ] {
            assert!(arm.remove(key).is_some(), "{key}");
        }
    }
    v
}

#[test]
fn two_runs_print_the_same_figures() {
    let a = small_run();
    assert_eq!(a["model"], "reader");
    for arm in ["off", "on", "full"] {
        for key in [
            "contradictions",
            "correctness",
            "reach",
            "finished",
            "prompt_tokens",
            "cache_reuse",
            "in_window",
        ] {
            assert!(a["arms"][arm].get(key).is_some(), "{arm} lacks {key}: {a}");
        }
    }
    assert!(a["haystack_slices"].as_u64().unwrap() >= 400);
    // The whole conversation fits FULL's window: every needed fact is in it.
    assert_eq!(a["arms"]["full"]["in_window"].as_f64(), Some(1.0), "{a}");
    assert_eq!(a, small_run());
}
