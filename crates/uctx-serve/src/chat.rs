//! One chat request, from the client's message list to the model's answer, through the
//! conversation's session. Runs on a blocking thread: the session, the pool and the
//! upstream call are synchronous.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use uctx::backend::{Backend, BackendError, ChatRequest, Message, Role};
use uctx::session::{Layout, Session, SessionConfig};
use uctx::Source;

use crate::convo::{message_digest, root_digest, Digest, Live, Planned};
use crate::upstream::{Call, Event, ProxyBackend};
use crate::wire::{render_message, Api, Kind, Rendered};
use crate::State;

/// A chat request, parsed.
pub struct ChatJob {
    pub api: Api,
    pub model: String,
    pub body: Value,
    pub key: Option<String>,
}

/// The system prompt (the leading system messages, byte for byte) and the rest.
struct Split {
    system: String,
    msgs: Vec<(Rendered, Value)>,
}

fn split(messages: &[Value]) -> Result<Split, String> {
    let mut system_parts: Vec<String> = Vec::new();
    let mut msgs = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let r = render_message(m).ok_or_else(|| format!("messages[{i}] has no role"))?;
        if r.kind == Kind::System && msgs.is_empty() {
            system_parts.push(crate::wire::content_text(m));
        } else {
            msgs.push((r, m.clone()));
        }
    }
    Ok(Split {
        system: system_parts.join("\n\n"),
        msgs,
    })
}

/// Open WebUI's housekeeping requests (titles, tags, follow-ups, queries): answered,
/// never stored.
fn is_housekeeping(text: &str) -> bool {
    text.trim_start().starts_with("### Task:")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error_event(e: &uctx::Error) -> Event {
    let status = match e {
        uctx::Error::Backend(b) => match b {
            BackendError::Unreachable { .. } | BackendError::StreamBroken { .. } => 502,
            BackendError::ModelMissing { .. } => 404,
            BackendError::Auth { .. } => 502,
            BackendError::Http { status, .. } => *status,
            BackendError::ContextExceeded { .. } | BackendError::BadSpec { .. } => 400,
            _ => 502,
        },
        uctx::Error::WindowTooSmall { .. } | uctx::Error::InvalidInput { .. } => 400,
        _ => 500,
    };
    Event::Error {
        status,
        message: e.to_string(),
    }
}

/// The source a client message is written to the pool as.
fn source_of(kind: Kind) -> Source {
    match kind {
        Kind::Assistant => Source::Assistant,
        Kind::Tool => Source::Tool,
        Kind::User | Kind::System => Source::User,
    }
}

/// Answer one request; every outcome, errors included, goes out on `tx`.
pub fn run(state: &State, job: ChatJob, tx: mpsc::Sender<Event>) {
    if let Err(e) = answer(state, job, &tx) {
        let _ = tx.blocking_send(e);
    }
}

fn bad(message: impl Into<String>) -> Event {
    Event::Error {
        status: 400,
        message: message.into(),
    }
}

fn answer(state: &State, job: ChatJob, tx: &mpsc::Sender<Event>) -> Result<(), Event> {
    let messages = job
        .body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the request has no `messages` list"))?;
    let Split { system, msgs } = split(messages).map_err(bad)?;
    let (last, _) = msgs
        .last()
        .ok_or_else(|| bad("`messages` holds no message to answer"))?;
    if !matches!(last.kind, Kind::User | Kind::Tool) {
        return Err(bad(
            "the last message must be the user's or a tool's: there is nothing to answer",
        ));
    }
    if last.text.trim().is_empty() {
        return Err(bad("the last message is empty"));
    }
    let originals: HashMap<(&'static str, String), Value> = msgs
        .iter()
        .map(|(r, v)| ((r.role.as_str(), r.text.clone()), v.clone()))
        .collect();
    let call = |tx: &mpsc::Sender<Event>| Call {
        api: job.api,
        model: job.model.clone(),
        body: job.body.clone(),
        originals: originals.clone(),
        tx: tx.clone(),
        finish: None,
        tool_calls: Vec::new(),
        sent: Vec::new(),
    };
    if is_housekeeping(&last.text) {
        return housekeeping(state, &job, &system, &msgs, call(tx), tx);
    }

    // What other servers on a shared journal added: a history one of them began
    // continues here in its conversation.
    state.catch_up();
    let root = root_digest(&system);
    let digests: Vec<Digest> = msgs.iter().map(|(r, _)| message_digest(r)).collect();
    // Plan under the index lock, then hold the conversation; if another request of
    // the same conversation got there first, plan again.
    let (plan, live) = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (plan, live) = {
                let mut ix = lock(&state.index);
                let plan = ix.plan(job.key.as_deref(), root, &digests);
                let live = Arc::clone(
                    lock(&state.live)
                        .entry(plan.conv)
                        .or_insert_with(|| Arc::new(Mutex::new(Live::default()))),
                );
                (plan, live)
            };
            let guard_ok = {
                let _held = lock(&live);
                lock(&state.index).len_of(plan.conv) == Some(plan.expected_len)
            };
            if guard_ok || attempt >= 4 {
                break (plan, live);
            }
        }
    };
    let mut held = lock(&live);
    if lock(&state.index).len_of(plan.conv) != Some(plan.expected_len) {
        return Err(Event::Error {
            status: 409,
            message: "this conversation is being changed by other requests; retry".into(),
        });
    }
    let namespace = lock(&state.index)
        .get(plan.conv)
        .map(|e| e.namespace.clone())
        .unwrap_or_default();
    held.requests += 1;
    held.last_used = Instant::now();
    if held.session.is_none() || held.model != job.model {
        open_session(
            state, &mut held, &plan, &namespace, &system, &job.model, &msgs,
        )?;
    }
    let backend = Arc::clone(held.backend.as_ref().expect("open session has a backend"));
    let session = held.session.as_mut().expect("just opened");
    if session.system_prompt() != system {
        session.set_system_prompt(&system);
    }
    // Play what the conversation does not hold yet into the pool, then answer the last
    // (a regeneration's input is its parent's: only the answer is new).
    let n = msgs.len();
    let adopted_input = plan.record_from >= n;
    let played = plan.record_from.min(n - 1)..n - 1;
    let mut played_ids = Vec::with_capacity(played.len());
    for (r, _) in &msgs[played.clone()] {
        if r.text.trim().is_empty() {
            played_ids.push(0);
            continue;
        }
        let rec = session
            .record_as(source_of(r.kind), &r.text)
            .map_err(|e| error_event(&e))?;
        played_ids.push(rec.ids.last().copied().unwrap_or(0));
    }
    if !played.is_empty() {
        lock(&state.index).append(plan.conv, &digests[played], &played_ids);
    }
    *lock(&backend.call) = Some(call(tx));
    let result = if adopted_input {
        session.turn_on_adopted(source_of(last.kind), &last.text, &mut |_| {})
    } else {
        session.turn_as(source_of(last.kind), &last.text, &mut |_| {})
    };
    let finished = lock(&backend.call).take();
    let report = match result {
        Ok(r) => r,
        Err(e) => return Err(error_event(&e)),
    };
    let stats = session.stats();
    held.last_paged = stats.paged_slices.saturating_sub(held.stats.paged_slices) as usize;
    held.stats = stats;
    let answer = Rendered {
        kind: Kind::Assistant,
        role: Role::Assistant,
        text: report.answer.clone(),
    };
    let answer_id = report.answer_ids.last().copied().unwrap_or(0);
    if adopted_input {
        lock(&state.index).append(plan.conv, &[message_digest(&answer)], &[answer_id]);
    } else {
        let input_id = report.input_ids.last().copied().unwrap_or(0);
        lock(&state.index).append(
            plan.conv,
            &[digests[n - 1], message_digest(&answer)],
            &[input_id, answer_id],
        );
    }
    // Journaled before the answer ends: the next turn may reach another server.
    drop(held);
    state.persist();
    let finish = finished.and_then(|c| c.finish).unwrap_or_default();
    let _ = tx.blocking_send(Event::Done(finish));
    state.close_idle_sessions();
    Ok(())
}

fn open_session(
    state: &State,
    live: &mut Live,
    plan: &Planned,
    namespace: &str,
    system: &str,
    model: &str,
    msgs: &[(Rendered, Value)],
) -> Result<(), Event> {
    let backend = Arc::new(ProxyBackend::new(Arc::clone(&state.upstream), model));
    let window = backend.context_length().map_err(|e| Event::Error {
        status: 502,
        message: e.to_string(),
    })?;
    let cfg = SessionConfig {
        namespace: namespace.to_string(),
        system_prompt: system.to_string(),
        window: Some(window),
        answer_tokens: state.cfg.answer_tokens,
        layout: Layout::Stable,
        // A conversation the server knew before its session was closed resumes from
        // the pool; a new one (or a fork) starts from what the request holds.
        resume: !plan.created,
        // A fork's shared start is its parent's (and that one's parents'): searched
        // through the fork, so what slid out of the window is paged back in.
        lineage: lock(&state.index).lineage(plan.conv),
        docs: state.cfg.docs.clone(),
        ..SessionConfig::default()
    };
    let mut session = Session::open(
        Arc::clone(&state.memory),
        Arc::clone(&backend) as Arc<dyn Backend>,
        cfg,
    )
    .map_err(|e| error_event(&e))?;
    if plan.created {
        // The input of a regeneration comes with the turn that answers it.
        for (r, _) in &msgs[..plan.adopt.min(msgs.len() - 1)] {
            session.adopt(source_of(r.kind), &r.text);
        }
    }
    live.session = Some(session);
    live.backend = Some(backend);
    live.model = model.to_string();
    Ok(())
}

/// A housekeeping request: the client's messages as they are, to the upstream, through
/// the same call as any answer, and nothing kept.
fn housekeeping(
    state: &State,
    job: &ChatJob,
    system: &str,
    msgs: &[(Rendered, Value)],
    call: Call,
    tx: &mpsc::Sender<Event>,
) -> Result<(), Event> {
    let backend = ProxyBackend::new(Arc::clone(&state.upstream), &job.model);
    let window = backend.context_length().map_err(|e| Event::Error {
        status: 502,
        message: e.to_string(),
    })?;
    let mut messages = vec![Message::new(Role::System, system)];
    messages.extend(
        msgs.iter()
            .map(|(r, _)| Message::new(r.role, r.text.clone())),
    );
    *lock(&backend.call) = Some(call);
    let req = ChatRequest {
        messages,
        num_ctx: window,
        max_tokens: (window / 4).min(1024),
        temperature: None,
        cancel: None,
    };
    let res = backend.chat(&req, &mut |_| {});
    let finished = lock(&backend.call).take();
    match res {
        Ok(_) => {
            let finish = finished.and_then(|c| c.finish).unwrap_or_default();
            state.count_housekeeping();
            let _ = tx.blocking_send(Event::Done(finish));
            Ok(())
        }
        Err(e) => Err(error_event(&uctx::Error::from(e))),
    }
}
