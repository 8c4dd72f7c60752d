//! Sessions end to end against fake servers on loopback: what reaches the prompt.

use std::sync::Arc;

use uctx::backend::{self, Backend, BackendOptions, Role};
use uctx::encoder::{Encoder, StaticEncoder};
use uctx::memory::Memory;
use uctx::pool::Scope;
use uctx::session::{Session, SessionConfig};

use crate::fake_server::{FakeConfig, FakeServer};

const FACT: &str = "The vault passphrase is tangerine-42.";
const VALUE: &str = "tangerine-42";
const NEED: &str = "The archive job is blocked. Which vault passphrase opens the archive?";

fn encoder() -> Arc<dyn Encoder> {
    Arc::new(StaticEncoder::bundled().expect("bundled encoder"))
}

/// Deterministic, varied filler text about things unrelated to the fact.
fn filler(seed: u64, words: usize) -> String {
    const W: [&str; 40] = [
        "scheduler",
        "drained",
        "queue",
        "batch",
        "renderer",
        "thumbnail",
        "billing",
        "invoice",
        "webhook",
        "relay",
        "latency",
        "budget",
        "sprint",
        "review",
        "runbook",
        "fixture",
        "cluster",
        "staging",
        "rollout",
        "canary",
        "metric",
        "histogram",
        "sampling",
        "tracing",
        "compaction",
        "index",
        "shard",
        "replica",
        "ticket",
        "backlog",
        "refactor",
        "module",
        "function",
        "closure",
        "iterator",
        "buffer",
        "socket",
        "parser",
        "lexer",
        "grammar",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::new();
    for i in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(W[(x % W.len() as u64) as usize]);
        out.push(if i % 12 == 11 { '.' } else { ' ' });
        if i % 12 == 11 {
            out.push(' ');
        }
    }
    out
}

/// The built-in reader model with a `window`-token context.
fn reader(window: usize) -> Arc<dyn Backend> {
    let opts = BackendOptions {
        context_override: Some(window),
        ..BackendOptions::default()
    };
    Arc::from(backend::from_spec("reader", &opts).unwrap())
}

/// A fresh pool in a temporary directory.
fn memory() -> (Arc<Memory>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::open(dir.path(), encoder(), true, false, None).unwrap());
    (memory, dir)
}

struct Run {
    server: FakeServer,
    session: Session,
    _dir: tempfile::TempDir,
}

fn open(server: FakeServer, spec: &str, opts: BackendOptions, paging: bool, window: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::open(dir.path(), encoder(), true, false, None).unwrap());
    let backend: Arc<dyn Backend> = Arc::from(backend::from_spec(spec, &opts).unwrap());
    let session = Session::open(
        memory,
        backend,
        SessionConfig {
            namespace: "test".into(),
            window: None,
            paging,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        session.window_size(),
        window,
        "the window comes from the server"
    );
    Run {
        server,
        session,
        _dir: dir,
    }
}

fn ollama(paging: bool, window: usize) -> Run {
    let server = FakeServer::ollama(FakeConfig {
        context_length: Some(window),
        ..FakeConfig::default()
    });
    let opts = server.options();
    open(server, "ollama/m", opts, paging, window)
}

fn openai(paging: bool, window: usize) -> Run {
    let server = FakeServer::openai(FakeConfig {
        context_length: Some(window),
        ..FakeConfig::default()
    });
    let opts = server.options();
    open(server, "openai/m", opts, paging, window)
}

/// Say the fact at turn 1, talk past 50,000 tokens, then need it. Returns the last answer.
fn long_conversation(run: &mut Run) -> String {
    let mut sink = |_: &str| {};
    run.session
        .turn(
            &format!("Setting things up. {FACT} Keep it safe."),
            &mut sink,
        )
        .unwrap();
    let mut tokens = 0;
    let mut i = 0;
    while tokens < 50_000 {
        i += 1;
        let text = filler(i, 700);
        tokens += run.session.memory().count_tokens(&text);
        run.session.turn(&text, &mut sink).unwrap();
    }
    run.session.turn(NEED, &mut sink).unwrap().answer
}

fn prompt_text(req: &serde_json::Value) -> String {
    req["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn check_never_over_window(run: &Run, window: usize) {
    let chats: Vec<serde_json::Value> = run
        .server
        .requests()
        .into_iter()
        .filter(|r| r["messages"].is_array())
        .collect();
    assert!(!chats.is_empty());
    for (i, req) in chats.iter().enumerate() {
        let messages: Vec<uctx::backend::Message> =
            serde_json::from_value(req["messages"].clone()).unwrap();
        let counted = uctx::backend::reader::prompt_tokens(&messages);
        assert!(
            counted <= window as u64,
            "request {i} sent {counted} tokens into a {window}-token window"
        );
    }
    assert_eq!(run.session.stats().overflows, 0);
}

#[test]
fn ollama_fact_from_turn_one_reaches_the_prompt_that_needs_it() {
    let window = 4096;
    let mut on = ollama(true, window);
    let answer = long_conversation(&mut on);
    let last = on.server.requests().last().cloned().unwrap();
    assert_eq!(
        last["options"]["num_ctx"].as_u64(),
        Some(window as u64),
        "num_ctx is set explicitly"
    );
    assert!(
        prompt_text(&last).contains(VALUE),
        "the fact was paged into the prompt"
    );
    assert!(
        prompt_text(&last).contains(uctx::session::MEMORY_LABEL),
        "paged slices carry provenance"
    );
    assert!(answer.contains(VALUE), "answer: {answer}");
    check_never_over_window(&on, window);

    let mut off = ollama(false, window);
    let answer = long_conversation(&mut off);
    let last = off.server.requests().last().cloned().unwrap();
    assert!(
        !prompt_text(&last).contains(VALUE),
        "a sliding window has lost the fact"
    );
    assert!(!answer.contains(VALUE));
    check_never_over_window(&off, window);
}

#[test]
fn openai_fact_from_turn_one_reaches_the_prompt_that_needs_it() {
    let window = 2048;
    let mut on = openai(true, window);
    let answer = long_conversation(&mut on);
    let last = on.server.requests().last().cloned().unwrap();
    assert!(prompt_text(&last).contains(VALUE));
    assert!(answer.contains(VALUE), "answer: {answer}");
    check_never_over_window(&on, window);
    let stats = on.session.pager_stats().unwrap();
    assert!(
        stats.hits + stats.misses > 0,
        "the pager paged something in"
    );

    let mut off = openai(false, window);
    let answer = long_conversation(&mut off);
    assert!(!prompt_text(&off.server.requests().last().cloned().unwrap()).contains(VALUE));
    assert!(!answer.contains(VALUE));
}

#[test]
fn separate_namespaces_never_see_each_other() {
    let (memory, _dir) = memory();
    let backend: Arc<dyn Backend> = reader(2048);
    let cfg = |ns: &str| SessionConfig {
        namespace: ns.into(),
        ..SessionConfig::default()
    };
    let mut a = Session::open(Arc::clone(&memory), Arc::clone(&backend), cfg("alice")).unwrap();
    let mut b = Session::open(Arc::clone(&memory), Arc::clone(&backend), cfg("bob")).unwrap();
    let mut sink = |_: &str| {};
    a.turn(FACT, &mut sink).unwrap();
    let r = b.turn(NEED, &mut sink).unwrap();
    assert!(
        !r.answer.contains(VALUE),
        "bob read alice's fact: {}",
        r.answer
    );
    assert!(
        r.window.memory.is_empty() || r.window.messages.iter().all(|m| !m.content.contains(VALUE))
    );
    assert!(b
        .recall("vault passphrase", 10)
        .unwrap()
        .iter()
        .all(|h| h.slice.meta.namespace == "bob"));
    let r = a.turn(NEED, &mut sink).unwrap();
    assert!(
        r.answer.contains(VALUE),
        "alice keeps her own fact: {}",
        r.answer
    );
    // A shared session searches every namespace.
    let mut shared = Session::open(
        Arc::clone(&memory),
        Arc::clone(&backend),
        SessionConfig {
            shared: true,
            ..cfg("carol")
        },
    )
    .unwrap();
    assert!(shared
        .recall("vault passphrase", 10)
        .unwrap()
        .iter()
        .any(|h| h.slice.meta.namespace == "alice"));
    let r = shared.turn(NEED, &mut sink).unwrap();
    assert!(r.answer.contains(VALUE));
    assert!(memory
        .pool()
        .metas(Scope::Namespace("bob"))
        .unwrap()
        .iter()
        .all(|m| m.namespace == "bob"));
}

#[test]
fn resumed_session_continues_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = reader(2048);
    let cfg = SessionConfig {
        namespace: "resume".into(),
        resume: true,
        ..SessionConfig::default()
    };
    {
        let memory = Arc::new(Memory::open(dir.path(), encoder(), true, false, None).unwrap());
        let mut s = Session::open(memory, Arc::clone(&backend), cfg.clone()).unwrap();
        s.turn(FACT, &mut |_| {}).unwrap();
        s.pin("The on-call engineer is rosalind.").unwrap();
    }
    let memory = Arc::new(Memory::open(dir.path(), encoder(), true, false, None).unwrap());
    let mut s = Session::open(memory, backend, cfg).unwrap();
    assert_eq!(s.history().len(), 2);
    assert_eq!(s.history()[0].role, Role::User);
    let r = s
        .turn("Which on-call engineer should we page?", &mut |_| {})
        .unwrap();
    assert_eq!(r.turn, 2);
    assert!(
        r.answer.contains("rosalind"),
        "pinned facts are always in the window: {}",
        r.answer
    );
    let transcript = s.transcript().unwrap();
    assert_eq!(transcript.len(), 4);
    assert!(transcript[0].text.contains(VALUE));
}

#[test]
fn an_input_larger_than_the_window_is_cut_and_said_so() {
    let (memory, _dir) = memory();
    let backend: Arc<dyn Backend> = reader(1024);
    let mut s = Session::open(Arc::clone(&memory), backend, SessionConfig::default()).unwrap();
    let big = format!("{FACT}\n\n{}", filler(7, 6000));
    let r = s.turn(&big, &mut |_| {}).unwrap();
    assert!(r.window.input_cut);
    assert!(r
        .window
        .messages
        .last()
        .unwrap()
        .content
        .contains("are in memory"));
    assert!(r.window.est_tokens <= 1024);
    // Nothing was lost: the whole input is in the pool.
    let hits = memory.recall("vault passphrase", 3, Scope::All).unwrap();
    assert!(hits.iter().any(|h| h.slice.text.contains(VALUE)));
}

/// Work on one topic: filler drawn from the topic's own eight words.
fn topic_filler(topic: u64, seed: u64, words: usize) -> String {
    let vocab: Vec<String> = filler(topic + 1000, 400)
        .split_whitespace()
        .map(|w| w.trim_matches('.').to_string())
        .take(8)
        .collect();
    filler(seed, words)
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            let word = &vocab[(i * 7 + w.len()) % vocab.len()];
            match w {
                "" => String::new(),
                w if w.ends_with('.') => format!("{word}."),
                _ => word.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 40-turn conversation through `session`: work on a topic for eight turns, then the
/// next; a fact stated at each topic's start and asked for at its end. Returns the
/// prompts the model was sent.
fn forty_turns(session: &mut Session) -> Vec<Vec<uctx::backend::Message>> {
    let mut prompts = Vec::new();
    for i in 0..40u64 {
        let topic = i / 8;
        let input = match i % 8 {
            0 => format!(
                "The relay{topic} token is amber-{topic}. {}",
                topic_filler(topic, i, 40)
            ),
            7 => format!("Which relay{topic} token did we note?"),
            _ => topic_filler(topic, i, 60 + (i as usize * 7) % 50),
        };
        let r = session.turn(&input, &mut |_| {}).unwrap();
        prompts.push(r.window.messages.clone());
    }
    prompts
}

fn layout_session(layout: uctx::session::Layout) -> (Session, tempfile::TempDir) {
    let (memory, dir) = memory();
    let s = Session::open(
        memory,
        reader(2048),
        SessionConfig {
            layout,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    (s, dir)
}

#[test]
fn the_stable_layout_keeps_a_prefix_the_server_cache_reuses() {
    use uctx::session::{Layout, MEMORY_HEADER, MEMORY_LABEL};
    let (mut s, _dir) = layout_session(Layout::Stable);
    let prompts = forty_turns(&mut s);
    let system = &prompts[0][0];
    let mut drops = 0;
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(&p[0], system, "turn {i}: the system message changed");
        assert!(!p[0].content.contains(MEMORY_LABEL));
        let n = p.len();
        if let Some(m) = p[1..n - 1]
            .iter()
            .find(|m| m.content.contains(MEMORY_LABEL))
        {
            assert!(
                m.content.starts_with(MEMORY_HEADER),
                "memory has its own message"
            );
        }
        if i == 0 {
            continue;
        }
        // No slice is in the window twice.
        let mut ids = std::collections::HashSet::new();
        for m in p.iter().filter(|m| m.content.starts_with(MEMORY_HEADER)) {
            for line in m.content.lines().filter(|l| l.starts_with(MEMORY_LABEL)) {
                let id = line.split(' ').nth(1).unwrap();
                assert!(ids.insert(id.to_string()), "turn {i}: memory {id} twice");
            }
        }
        // Append-only: everything after the system message continues the last prompt
        // whole, memory included, unless the oldest turns were dropped in one step.
        let before = &prompts[i - 1][1..];
        if !p[1..].starts_with(before) {
            drops += 1;
            assert!(
                n - 1 <= before.len(),
                "turn {i}: the prompt changed without a drop"
            );
        }
    }
    assert!(drops >= 1, "40 turns at 2,048 tokens must fill the window");
    assert!(
        drops <= 12,
        "recent turns were dropped {drops} times in 40 turns"
    );
    let stable = s.stats().cache_reuse().unwrap();

    let (mut legacy, _dir) = layout_session(Layout::Legacy);
    forty_turns(&mut legacy);
    let old = legacy.stats().cache_reuse().unwrap();
    assert!(
        stable >= 0.65 && stable >= 3.0 * old,
        "cache reuse: stable {stable:.3}, legacy {old:.3}"
    );
    assert_eq!(s.stats().overflows, 0);
}

#[test]
fn a_prompt_the_server_refuses_as_too_large_is_sent_again_smaller() {
    // The server's tokenizer counts 3.5 times the reader's tokens: our first estimates
    // are short, and llama-server answers HTTP 400 exceed_context_size_error.
    let server = FakeServer::openai(FakeConfig {
        props_n_ctx: Some(2048),
        n_ctx: Some(2048),
        token_scale: 3.5,
        ..FakeConfig::default()
    });
    let opts = server.options();
    let mut run = open(server, "openai/m", opts, true, 2048);
    let mut sink = |_: &str| {};
    for i in 0..12 {
        let words = if i == 0 { 1000 } else { 300 };
        run.session.turn(&filler(i, words), &mut sink).unwrap();
    }
    let stats = run.session.stats();
    assert!(stats.context_retries >= 1, "{stats:?}");
    assert_eq!(stats.overflows, 0);
    assert_eq!(stats.turns, 12);
}

#[test]
fn a_prompt_the_server_cuts_silently_is_detected() {
    // Ollama keeps what fits its context and reports only that: the server says 2,048
    // but cuts at 600.
    let server = FakeServer::ollama(FakeConfig {
        context_length: Some(2048),
        n_ctx: Some(600),
        ..FakeConfig::default()
    });
    let opts = server.options();
    let mut run = open(server, "ollama/m", opts, false, 2048);
    let mut sink = |_: &str| {};
    let mut seen = false;
    for i in 0..8 {
        seen |= run
            .session
            .turn(&filler(i, 300), &mut sink)
            .unwrap()
            .truncated;
    }
    assert!(seen);
    assert!(run.session.stats().truncations >= 1);
}

#[test]
fn a_failed_model_call_leaves_no_half_turn_behind() {
    use uctx::pool::Scope;
    let server = FakeServer::openai(FakeConfig {
        context_length: Some(2048),
        stream_error: Some((1, "out of memory".to_string())),
        ..FakeConfig::default()
    });
    let opts = server.options();
    let mut run = open(server, "openai/m", opts, true, 2048);
    let input = "The ferry schedule moved to quay 12.";
    for _ in 0..2 {
        assert!(run.session.turn(input, &mut |_| {}).is_err());
    }
    let memory = Arc::clone(run.session.memory());
    assert!(
        memory
            .pool()
            .metas(Scope::Namespace("default"))
            .unwrap()
            .is_empty(),
        "a failed turn left slices behind"
    );
    // The same input answered later is stored once, as turn 1.
    let mut s = Session::open(Arc::clone(&memory), reader(2048), SessionConfig::default()).unwrap();
    let r = s.turn(input, &mut |_| {}).unwrap();
    assert_eq!(r.turn, 1);
    let metas = memory.pool().metas(Scope::Namespace("default")).unwrap();
    let inputs = metas
        .iter()
        .filter(|m| m.source == uctx::slice::Source::User)
        .count();
    assert_eq!(inputs, 1, "{metas:?}");
    assert!(metas
        .iter()
        .any(|m| m.source == uctx::slice::Source::Assistant));
}

#[test]
fn a_session_searches_the_documents_and_clearing_it_keeps_them() {
    use uctx::memory::Unit;
    use uctx::pool::Scope;
    use uctx::session::DOCS_NAMESPACE;
    let (memory, _dir) = memory();
    memory
        .write(&[Unit {
            namespace: DOCS_NAMESPACE,
            source: uctx::slice::Source::Document,
            text: FACT,
            turn: 0,
            ext_id: Some("notes/vault.md"),
        }])
        .unwrap();
    let mut s = Session::open(Arc::clone(&memory), reader(2048), SessionConfig::default()).unwrap();
    let r = s.turn(NEED, &mut |_| {}).unwrap();
    assert!(
        r.answer.contains(VALUE),
        "the document was not paged in: {}",
        r.answer
    );
    assert!(s
        .recall("vault passphrase", 5)
        .unwrap()
        .iter()
        .any(|h| h.slice.meta.namespace == DOCS_NAMESPACE));
    s.clear().unwrap();
    assert_eq!(
        memory
            .pool()
            .metas(Scope::Namespace(DOCS_NAMESPACE))
            .unwrap()
            .len(),
        1
    );
    assert!(memory
        .pool()
        .metas(Scope::Namespace("default"))
        .unwrap()
        .is_empty());
    // Without the documents' namespace, the session does not see it.
    let mut alone = Session::open(
        Arc::clone(&memory),
        reader(2048),
        SessionConfig {
            namespace: "alone".into(),
            docs: Vec::new(),
            ..SessionConfig::default()
        },
    )
    .unwrap();
    let r = alone.turn(NEED, &mut |_| {}).unwrap();
    assert!(!r.answer.contains(VALUE), "{}", r.answer);
}

#[test]
fn an_interrupted_answer_keeps_what_streamed_marked() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use uctx::pool::Scope;
    let (memory, _dir) = memory();
    let mut s = Session::open(Arc::clone(&memory), reader(2048), SessionConfig::default()).unwrap();
    s.turn(FACT, &mut |_| {}).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    s.set_interrupt(Arc::clone(&stop));
    let mut pieces = 0;
    let r = s
        .turn(NEED, &mut |_| {
            pieces += 1;
            if pieces == 2 {
                stop.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(r.interrupted);
    assert!(
        r.answer.ends_with(uctx::session::INTERRUPTED_MARK),
        "{}",
        r.answer
    );
    let metas = memory.pool().metas(Scope::Namespace("default")).unwrap();
    let answers: Vec<String> = metas
        .iter()
        .filter(|m| m.source == uctx::slice::Source::Assistant && m.turn == r.turn)
        .map(|m| memory.pool().get(m.id).unwrap().unwrap().text)
        .collect();
    assert_eq!(answers.len(), 1);
    assert!(answers[0].contains(uctx::session::INTERRUPTED_MARK));
    assert!(metas
        .iter()
        .any(|m| m.source == uctx::slice::Source::User && m.turn == r.turn));
    // The flag is cleared for the next turn, which answers whole.
    let r = s.turn(NEED, &mut |_| {}).unwrap();
    assert!(!r.interrupted, "{}", r.answer);
    assert!(r.answer.contains(VALUE), "{}", r.answer);
}
