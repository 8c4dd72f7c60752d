//! `reader`: a deterministic model that answers only from its window.
//!
//! It reads every message of the request and collects *assertions*, clauses of the form
//! `<subject> is <value>`, `<subject> = <value>` or `<subject>: <value>`. The questions are
//! the sentences ending in `?` of the last user message; each gets one answer line:
//! `The <subject> is <value>.` for the assertion that matches the question best, when
//! its match reaches the reader's threshold, or `I don't know the <key words>.` when none
//! does. A message without a question gets `OK.`.
//!
//! An assertion whose every subject word is among the question's words matches for
//! certain (the one with most such words first). Otherwise matching is by meaning, as
//! well as a small static encoder can tell it: each content word of the question is
//! paired with the nearest word (by the cosine of the bundled encoder's embeddings) of
//! the assertion in its context (its sentence and the sentence before it on the same
//! line), and the match is the mean of those cosines, at most 1. A question
//! in other words than the fact can therefore still find it, and can as well find a
//! distractor with a similar key instead: that contradiction is the reader's own
//! mistake, made the way a model makes it, never planted. The reader knows no fact
//! table: it sees the messages and nothing else.
//!
//! Order: by position in the window and nothing else (ties go to the latest assertion).
//! Like a model, the reader knows nothing of uctx's memory labels, so it gets no help
//! ordering paged-in facts that the sliding window would not get.
//!
//! It never states a value it did not read: every value it states is the value of an
//! assertion in its window.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use crate::encoder::{dot, Encoder, StaticEncoder};

use super::{
    Backend, BackendError, BackendOptions, ChatRequest, ChatResponse, Health, Message, Role,
};

/// The window the reader claims when no `--ctx` is given.
pub const DEFAULT_CONTEXT: usize = 4096;
/// The match an assertion must reach for the reader to state it: the threshold `uctx
/// bench drift` tunes on its tuning split of facts (never on the facts it reports).
pub const DEFAULT_THRESHOLD: f32 = 0.63;
/// Subjects keep at most this many content words (the ones nearest the verb).
const MAX_SUBJECT_WORDS: usize = 4;
/// Values keep at most this many words.
const MAX_VALUE_WORDS: usize = 12;

/// Words a question asks with, beyond [`crate::lexical::STOPWORDS`]: they say what is
/// asked for, not what about.
const ASKING: &[&str] = &[
    "use",
    "uses",
    "used",
    "using",
    "please",
    "tell",
    "remind",
    "decided",
    "agreed",
    "chose",
    "chosen",
    "picked",
    "going",
    "gonna",
    "let",
    "lets",
    "know",
    "remember",
    "recall",
    "say",
    "said",
    "currently",
    "actually",
    "exactly",
];

/// Words that end a clause: the value stops before them.
const CLAUSE_WORDS: &[&str] = &["because", "and", "so", "but"];
/// Words dropped from the front of a value (`is now 9443` → `9443`).
const VALUE_FILLERS: &[&str] = &["now", "still", "actually", "currently", "definitely"];
/// Modal verbs that make `be` a verb (`the port will be 8443`).
const MODALS: &[&str] = &["will", "should", "must", "shall", "would", "'ll"];

/// One `<subject> is <value>` statement found in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    /// Content words of the subject as written (lowercased), nearest the verb last.
    pub subject: Vec<String>,
    /// The subject's words normalized for matching (singular, no possessive).
    pub keys: BTreeSet<String>,
    /// The value as written, trailing punctuation removed.
    pub value: String,
    /// The sentence the assertion was read from.
    pub sentence: String,
    /// The sentence before it on the same line (empty when none): context, whose words
    /// count for less in a match than the sentence's own.
    pub before: String,
    /// Rank in the window: (message, assertion). Larger is later.
    pub order: (u64, u64),
}

/// A question of the last user message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub text: String,
    /// Content words as written (lowercased), in order.
    pub words: Vec<String>,
    /// The words normalized for matching.
    pub keys: BTreeSet<String>,
}

/// The answer the reader gives to `messages` with [`DEFAULT_THRESHOLD`].
pub fn answer(messages: &[Message]) -> String {
    answer_with(messages, DEFAULT_THRESHOLD)
}

/// The answer the reader gives to `messages`: one line per question of the last user
/// message (an assertion matching it at `threshold` or better, else "I don't know"), or
/// `OK.` when it asks none.
pub fn answer_with(messages: &[Message], threshold: f32) -> String {
    let Some(last) = messages.iter().rev().find(|m| m.role == Role::User) else {
        return "OK.".to_string();
    };
    let qs = questions(&last.content);
    if qs.is_empty() {
        return "OK.".to_string();
    }
    let facts = assertions(messages);
    let mut words = WordVectors::default();
    qs.iter()
        .map(|q| match best_with(&facts, q, &mut words) {
            Some((a, score)) if score >= threshold => {
                format!("The {} is {}.", a.subject.join(" "), a.value)
            }
            _ if q.words.is_empty() => "I don't know.".to_string(),
            _ => format!("I don't know the {}.", q.words.join(" ")),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The assertion that matches `q` best, with its match (above 1 when every subject word
/// is in the question, else [`matching`]), whatever the threshold; the latest wins a tie. `None` when there is no assertion or no word to match.
pub fn best<'a>(facts: &'a [Assertion], q: &Question) -> Option<(&'a Assertion, f32)> {
    best_with(facts, q, &mut WordVectors::default())
}

fn best_with<'a>(
    facts: &'a [Assertion],
    q: &Question,
    words: &mut WordVectors,
) -> Option<(&'a Assertion, f32)> {
    let qv = words.of(&q.words);
    if qv.is_empty() {
        return None;
    }
    let mut best: Option<(&Assertion, f32)> = None;
    for a in facts {
        let shared = a.keys.intersection(&q.keys).count();
        let score = if shared > 0 && shared == a.keys.len() {
            // Every word of the subject is in the question: certain, more words first.
            1.0 + shared as f32 / 100.0
        } else {
            let own = words.of(&content_words(&a.sentence));
            let before = words.of(&content_words(&a.before));
            matching(&qv, &own, &before)
        };
        if best.is_none_or(|(b, s)| (score, a.order) > (s, b.order)) {
            best = Some((a, score));
        }
    }
    best
}

/// How much a word of the sentence before an assertion counts, against one of its own.
pub const CONTEXT_WEIGHT: f32 = 0.8;

/// The match of a question with a sentence, from their words' vectors: each question
/// word's best cosine with a word of the sentence (or, times [`CONTEXT_WEIGHT`], of the
/// sentence before it), averaged over the question's words.
pub fn matching(question: &[Arc<[f32]>], sentence: &[Arc<[f32]>], before: &[Arc<[f32]>]) -> f32 {
    if question.is_empty() || sentence.is_empty() {
        return 0.0;
    }
    let sum: f32 = question
        .iter()
        .map(|q| {
            let own = sentence.iter().map(|t| dot(q, t));
            let context = before.iter().map(|t| CONTEXT_WEIGHT * dot(q, t));
            own.chain(context).fold(f32::NEG_INFINITY, f32::max)
        })
        .sum();
    sum / question.len() as f32
}

/// The bundled encoder, loaded once.
fn encoder() -> Option<&'static StaticEncoder> {
    static ENCODER: OnceLock<Option<StaticEncoder>> = OnceLock::new();
    ENCODER
        .get_or_init(|| StaticEncoder::bundled().ok())
        .as_ref()
}

/// Word vectors by the bundled encoder, each word encoded once per answer.
#[derive(Default)]
struct WordVectors(HashMap<String, Arc<[f32]>>);

impl WordVectors {
    fn of(&mut self, words: &[String]) -> Vec<Arc<[f32]>> {
        let Some(enc) = encoder() else {
            return Vec::new();
        };
        words
            .iter()
            .map(|w| {
                Arc::clone(
                    self.0
                        .entry(w.clone())
                        .or_insert_with(|| Arc::from(enc.encode(w))),
                )
            })
            .filter(|v| v.iter().any(|x| *x != 0.0))
            .collect()
    }
}

/// The content words of a text (lowercased, stopwords dropped), in order.
fn content_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(clean)
        .filter(|w| !w.is_empty() && !is_stopword(w))
        .collect()
}

/// The questions of `text`: its sentences that end in `?`.
pub fn questions(text: &str) -> Vec<Question> {
    sentences(text)
        .into_iter()
        .filter(|(_, end)| *end == '?')
        .map(|(s, _)| {
            let words = content_words(s);
            let keys = words.iter().map(|w| key(w)).collect();
            Question {
                text: s.trim().to_string(),
                words,
                keys,
            }
        })
        .collect()
}

/// Every assertion in the window, in window order.
pub fn assertions(messages: &[Message]) -> Vec<Assertion> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    for (i, m) in messages.iter().enumerate() {
        for part in crate::session::without_memory_labels(&m.content) {
            let mut previous: Option<&str> = None;
            for (sentence, end) in sentences(part) {
                // A line's end leaves the next sentence with none before it.
                let before = std::mem::replace(&mut previous, (end != '\n').then_some(sentence));
                if end == '?' {
                    continue;
                }
                for clause in clauses(sentence) {
                    if let Some((subject, value)) = parse_clause(&clause) {
                        seq += 1;
                        let keys = subject.iter().map(|w| key(w)).collect();
                        out.push(Assertion {
                            subject,
                            keys,
                            value,
                            sentence: sentence.trim().to_string(),
                            before: before.unwrap_or_default().trim().to_string(),
                            order: (i as u64, seq),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Sentences without the character that ended each, with that character (`\n` for a
/// line end or the text's end): [`crate::chunk::sentence_spans`]'s.
fn sentences(text: &str) -> Vec<(&str, char)> {
    crate::chunk::sentence_spans(text)
        .into_iter()
        .map(|(s, end)| (s.strip_suffix(end).unwrap_or(s), end))
        .collect()
}

/// A sentence cut into clauses (as words) at `,` `;` `(` `)` and at the words
/// `because`, `and`, `so`, `but`.
fn clauses(sentence: &str) -> Vec<Vec<&str>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut chars = sentence.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let before_space = chars.peek().is_none_or(|&(_, n)| n.is_whitespace());
        if matches!(c, '(' | ')' | ';') || (c == ',' && before_space) {
            pieces.push(&sentence[start..i]);
            start = i + c.len_utf8();
        }
    }
    pieces.push(&sentence[start..]);
    let mut out = Vec::new();
    for piece in pieces {
        let mut clause = Vec::new();
        for word in piece.split_whitespace() {
            if CLAUSE_WORDS.contains(&clean(word).as_str()) {
                out.push(std::mem::take(&mut clause));
            } else {
                clause.push(word);
            }
        }
        out.push(clause);
    }
    out.retain(|c| !c.is_empty());
    out
}

/// `(subject words, value)` of one clause, if it states something.
fn parse_clause(words: &[&str]) -> Option<(Vec<String>, String)> {
    // `PORT=8443` counts as `PORT = 8443`.
    let mut tokens: Vec<&str> = Vec::with_capacity(words.len() + 2);
    for w in words {
        match w.split_once('=') {
            Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.starts_with('=') => {
                tokens.extend([l, "=", r]);
            }
            _ => tokens.push(w),
        }
    }
    let is_verb = |i: usize| {
        let w = clean(tokens[i]);
        matches!(w.as_str(), "is" | "are" | "was")
            || tokens[i] == "="
            || (w == "be" && i > 0 && MODALS.iter().any(|m| clean(tokens[i - 1]).ends_with(m)))
    };
    let (subject_end, value_start) = match (0..tokens.len()).find(|&i| is_verb(i)) {
        Some(v) => {
            let modal = clean(tokens[v]) == "be";
            (if modal { v - 1 } else { v }, v + 1)
        }
        None => {
            // The last `word:` with something after it.
            let c = (0..tokens.len().saturating_sub(1))
                .rev()
                .find(|&i| tokens[i].len() > 1 && tokens[i].ends_with(':'))?;
            (c + 1, c + 1)
        }
    };
    // A `speaker:` or `note:` before the verb starts the subject afresh.
    let subject_start = (0..subject_end)
        .rev()
        .find(|&i| tokens[i].ends_with(':') && i + 1 < subject_end)
        .map_or(0, |i| i + 1);
    let mut subject: Vec<String> = tokens[subject_start..subject_end]
        .iter()
        .map(|w| clean(w.trim_end_matches(':')))
        .filter(|w| !w.is_empty() && !is_stopword(w))
        .collect();
    if subject.len() > MAX_SUBJECT_WORDS {
        subject.drain(..subject.len() - MAX_SUBJECT_WORDS);
    }
    let mut value_words: Vec<&str> = tokens[value_start.min(tokens.len())..].to_vec();
    while value_words
        .first()
        .is_some_and(|w| VALUE_FILLERS.contains(&clean(w).as_str()))
    {
        value_words.remove(0);
    }
    value_words.truncate(MAX_VALUE_WORDS);
    let value = value_words
        .join(" ")
        .trim_matches(|c: char| {
            matches!(
                c,
                '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '`' | '*' | '“' | '”' | '‘' | '’'
            )
        })
        .to_string();
    if subject.is_empty() || value.is_empty() {
        return None;
    }
    Some((subject, value))
}

/// A word lowercased, without the punctuation around it (inner `-`, `_`, `.` stay).
fn clean(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .trim_matches('\'')
        .to_lowercase()
}

fn is_stopword(w: &str) -> bool {
    crate::lexical::is_stopword(w) || ASKING.contains(&w)
}

/// A word as matched: no possessive `'s`, plural `s` dropped (`ports` = `port`).
fn key(word: &str) -> String {
    let w = word.strip_suffix("'s").unwrap_or(word);
    if w.chars().count() > 3 && w.ends_with('s') && !w.ends_with("ss") {
        w[..w.len() - 1].to_string()
    } else {
        w.to_string()
    }
}

/// A rough token count: 4 tokens per 3 whitespace-separated words.
pub fn approx_tokens(text: &str) -> u64 {
    let words = text.split_whitespace().count() as u64;
    (words * 4).div_ceil(3)
}

/// [`approx_tokens`] over every message of a prompt.
pub fn prompt_tokens(messages: &[Message]) -> u64 {
    messages.iter().map(|m| approx_tokens(&m.content)).sum()
}

/// Counts the tokens of a text.
pub type TokenCounter = std::sync::Arc<dyn Fn(&str) -> u64 + Send + Sync>;

/// The built-in reader model.
pub struct ReaderBackend {
    context_length: usize,
    counter: Option<TokenCounter>,
    /// The match an assertion must reach to be stated.
    threshold: f32,
    /// The previous prompt, message by message, for a prefix cache like a server's.
    last_prompt: std::sync::Mutex<Vec<Message>>,
}

impl ReaderBackend {
    /// The window is `opts.context_override`, else [`DEFAULT_CONTEXT`]; tokens are
    /// counted with [`approx_tokens`].
    pub fn new(opts: &BackendOptions) -> ReaderBackend {
        ReaderBackend {
            context_length: opts.context_override.unwrap_or(DEFAULT_CONTEXT),
            counter: None,
            threshold: DEFAULT_THRESHOLD,
            last_prompt: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Report token counts with `counter` (a real tokenizer) instead of [`approx_tokens`].
    pub fn with_token_counter(mut self, counter: TokenCounter) -> ReaderBackend {
        self.counter = Some(counter);
        self
    }

    /// State an assertion only when its match reaches `threshold` (see [`matching`]).
    pub fn with_threshold(mut self, threshold: f32) -> ReaderBackend {
        self.threshold = threshold;
        self
    }

    fn count(&self, text: &str) -> u64 {
        match &self.counter {
            Some(c) => c(text),
            None => approx_tokens(text),
        }
    }
}

impl Backend for ReaderBackend {
    fn spec(&self) -> String {
        "reader".to_string()
    }

    fn context_length(&self) -> Result<usize, BackendError> {
        Ok(self.context_length)
    }

    fn health(&self) -> Result<Health, BackendError> {
        Ok(Health {
            endpoint: "built-in".to_string(),
            models: vec!["reader".to_string()],
            model_present: true,
            context_length: Some(self.context_length),
        })
    }

    fn count_prompt(&self, messages: &[Message]) -> Option<usize> {
        Some(messages.iter().map(|m| self.count(&m.content)).sum::<u64>() as usize)
    }

    /// Answers from the window; reports as cached the tokens of the leading messages
    /// that equal the previous call's prompt followed by its answer, as a server's
    /// prefix cache would (whole messages only, so it never counts more reuse than a
    /// real server gets).
    fn chat(
        &self,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError> {
        let cached: u64 = {
            let last = self.last_prompt.lock().unwrap_or_else(|e| e.into_inner());
            let same = last
                .iter()
                .zip(&req.messages)
                .take_while(|(a, b)| a == b)
                .count();
            // The last message is always evaluated: a server needs at least one new token.
            let same = same.min(req.messages.len().saturating_sub(1));
            req.messages[..same]
                .iter()
                .map(|m| self.count(&m.content))
                .sum()
        };
        let full = answer_with(&req.messages, self.threshold);
        let mut done_reason = "stop";
        let mut text = String::new();
        // max_tokens bounds the answer like a server's num_predict: 3 words per 4 tokens.
        let word_budget = (req.max_tokens > 0).then(|| (req.max_tokens * 3 / 4).max(1));
        for (words, piece) in full.split_inclusive([' ', '\n']).enumerate() {
            if word_budget.is_some_and(|b| words >= b) {
                done_reason = "length";
                break;
            }
            on_text(piece);
            text.push_str(piece);
            if req.cancelled() {
                done_reason = super::INTERRUPTED;
                break;
            }
        }
        let prompt: u64 = req.messages.iter().map(|m| self.count(&m.content)).sum();
        {
            let mut last = self.last_prompt.lock().unwrap_or_else(|e| e.into_inner());
            *last = req.messages.clone();
            last.push(Message::new(Role::Assistant, text.clone()));
        }
        Ok(ChatResponse {
            completion_tokens: Some(self.count(&text)),
            text,
            prompt_tokens: Some(prompt),
            done_reason: Some(done_reason.to_string()),
            cached_tokens: Some(cached),
            evaluated_tokens: Some(prompt - cached),
            ..ChatResponse::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Message {
        Message::new(Role::User, s)
    }

    fn ask(window: &[&str], question: &str) -> String {
        let mut msgs: Vec<Message> = window
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                Message::new(role, *s)
            })
            .collect();
        msgs.push(user(question));
        answer(&msgs)
    }

    #[test]
    fn parses_the_three_forms_and_keeps_odd_values() {
        let a = assertions(&[user(
            "We decided the gateway port is 8443, because TLS. DB_ENGINE=postgres-16; \
             Release tag: v2.3.1. The naming style will be snake_case (for Rust).",
        )]);
        let got: Vec<(String, String)> = a
            .iter()
            .map(|a| (a.subject.join(" "), a.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("gateway port".to_string(), "8443".to_string()),
                ("db_engine".to_string(), "postgres-16".to_string()),
                ("release tag".to_string(), "v2.3.1".to_string()),
                ("naming style".to_string(), "snake_case".to_string()),
            ]
        );
    }

    #[test]
    fn subjects_keep_the_last_four_content_words() {
        let a = assertions(&[user(
            "The very long winded name of the primary cache is redis.",
        )]);
        assert_eq!(a[0].subject, vec!["winded", "name", "primary", "cache"]);
    }

    #[test]
    fn answers_with_the_best_covered_subject() {
        let got = ask(
            &["The gateway port is 8443. The metrics port is 9100.", "OK."],
            "What port does the gateway listen on?",
        );
        assert_eq!(got, "The gateway port is 8443.");
    }

    #[test]
    fn latest_value_wins() {
        let got = ask(
            &[
                "The gateway port is 8443.",
                "OK.",
                "Change of plan: the gateway port is now 9443.",
            ],
            "Which gateway port?",
        );
        assert_eq!(got, "The gateway port is 9443.");
    }

    #[test]
    fn one_line_per_question_and_ok_without_one() {
        let window = ["The database is postgres-16. The cache is redis."];
        assert_eq!(
            ask(&window, "Which database? And the cache?"),
            "The database is postgres-16.\nThe cache is redis."
        );
        assert_eq!(ask(&window, "Write the config."), "OK.");
        assert_eq!(answer(&[]), "OK.");
    }

    #[test]
    fn a_similar_key_can_be_mistaken_for_the_one_asked_but_only_above_the_threshold() {
        let window = [user("The metrics port is 9100.")];
        let q = user("What port does the gateway use?");
        let msgs = [window[0].clone(), q.clone()];
        let facts = assertions(&msgs);
        let (a, score) = best(&facts, &questions(&q.content)[0]).unwrap();
        assert_eq!(a.value, "9100");
        assert!(score < 1.0);
        // A cautious reader says it does not know; a loose one states what it read.
        assert_eq!(
            answer_with(&msgs, score + 0.01),
            "I don't know the port gateway."
        );
        assert_eq!(answer_with(&msgs, score), "The metrics port is 9100.");
    }

    #[test]
    fn words_of_the_sentence_before_count_for_less() {
        let got = ask(
            &["The gateway port is 8443. The metrics port is 9100."],
            "Which gateway port?",
        );
        assert_eq!(got, "The gateway port is 8443.");
    }

    #[test]
    fn a_paraphrase_matches_the_fact_better_than_an_unrelated_one() {
        let msgs = [
            user("The database engine is postgres-16.\nThe frontend framework is svelte."),
            user("Which SQL server do the schema migrations target?"),
        ];
        let q = &questions(&msgs[1].content)[0];
        let facts = assertions(&msgs);
        let (a, _) = best(&facts, q).unwrap();
        assert_eq!(a.value, "postgres-16");
    }

    #[test]
    fn every_value_stated_was_read_in_the_window() {
        let window = "The gateway port is 8443.\nThe metrics port is 9100.\n\
                      The release codename is tern.";
        for q in [
            "Which port?",
            "What do we call the release?",
            "Which number does outside traffic reach?",
            "What colour is the sky?",
        ] {
            let got = ask(&[window], q);
            assert!(
                got.starts_with("I don't know")
                    || ["8443", "9100", "tern"].iter().any(|v| got.contains(v)),
                "{q} -> {got}"
            );
        }
    }

    #[test]
    fn no_shared_word_means_i_do_not_know() {
        let got = ask(
            &["The metrics port is 9100."],
            "Which database should we use?",
        );
        assert_eq!(got, "I don't know the database.");
    }

    #[test]
    fn order_is_position_in_the_window_not_memory_labels() {
        let system = Message::new(
            Role::System,
            "Memory:\n[memory 7 · turn 30 · user] The gateway port is 9443.\n\
             [memory 2 · turn 3 · user] The gateway port is 8443.",
        );
        // The labels name turns 30 and 3; the reader reads neither: the later line wins.
        assert_eq!(
            answer(&[system.clone(), user("What is the gateway port?")]),
            "The gateway port is 8443."
        );
        let recent = Message::new(Role::Assistant, "Update: the gateway port is 7443.");
        assert_eq!(
            answer(&[system, recent, user("What is the gateway port?")]),
            "The gateway port is 7443."
        );
    }

    #[test]
    fn questions_are_not_assertions() {
        let got = ask(&["Is the gateway port 8443?"], "What is the gateway port?");
        assert_eq!(got, "I don't know the gateway port.");
    }

    #[test]
    fn unicode_and_garbage_do_not_panic() {
        let odd = [
            "Der Straßenname ist Müllerstraße. 東京の港は 8443 です。 🚀 = 🌕",
            "[memory 1 · turn x · user] [memory",
            "] : = is ? . ; , ( ) 'is' ’s",
            "café: crème brûlée; naïve = true",
        ];
        for text in odd {
            let _ = assertions(&[user(text)]);
            let _ = ask(&[text], "Wie heißt 🚀? café?");
        }
        assert_eq!(
            ask(&["café: crème brûlée"], "Which café?"),
            "The café is crème brûlée."
        );
        assert_eq!(
            ask(&["東京ポート = 8443"], "東京ポート?"),
            "The 東京ポート is 8443."
        );
        // Symbols alone are no subject.
        assert_eq!(ask(&["🚀 = 🌕"], "🚀?"), "I don't know.");
    }

    proptest::proptest! {
        #[test]
        fn any_text_gets_an_answer(window in "\\PC{0,200}", question in "\\PC{0,80}") {
            let msgs = [
                Message::new(Role::System, window.clone()),
                Message::new(Role::Assistant, format!("[memory 1 · turn 2 · user] {window}")),
                user(&format!("{question}?")),
            ];
            proptest::prop_assert!(!answer(&msgs).is_empty());
        }
    }

    #[test]
    fn streams_word_by_word_and_honours_max_tokens() {
        let backend = ReaderBackend::new(&BackendOptions::default());
        let req = ChatRequest {
            messages: vec![user("The gateway port is 8443. What is the gateway port?")],
            num_ctx: 4096,
            max_tokens: 100,
            temperature: None,
            cancel: None,
        };
        let mut pieces = Vec::new();
        let r = backend
            .chat(&req, &mut |t| pieces.push(t.to_string()))
            .expect("chat");
        assert_eq!(pieces, vec!["The ", "gateway ", "port ", "is ", "8443."]);
        assert_eq!(r.text, "The gateway port is 8443.");
        assert_eq!(
            r.prompt_tokens,
            Some(approx_tokens(&req.messages[0].content))
        );
        assert_eq!(r.done_reason.as_deref(), Some("stop"));
        let short = ChatRequest {
            max_tokens: 2,
            ..req
        };
        let r = backend.chat(&short, &mut |_| {}).expect("chat");
        assert_eq!(r.text, "The ");
        assert_eq!(r.done_reason.as_deref(), Some("length"));
        let counted = ReaderBackend::new(&BackendOptions::default())
            .with_token_counter(std::sync::Arc::new(|t: &str| t.len() as u64));
        let r = counted.chat(&short, &mut |_| {}).expect("chat");
        assert_eq!(
            r.prompt_tokens,
            Some(short.messages[0].content.len() as u64)
        );
        assert_eq!(r.completion_tokens, Some(4));
    }
}
