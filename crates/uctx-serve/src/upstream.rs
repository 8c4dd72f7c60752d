//! The model server behind the proxy, and the engine backend that sessions call.
//!
//! A session assembles each window and calls [`ProxyBackend::chat`]; that call speaks
//! the upstream's own API (Ollama `/api/chat`, OpenAI `/v1/chat/completions`, or the
//! built-in reader), carrying the client's own request fields (`tools`, `format`,
//! `options`, …) and the client's original message objects where the window holds them,
//! and streams what the model says to the client as [`Event`]s while it feeds the pager.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use uctx::backend::reader::ReaderBackend;
use uctx::backend::{
    self, Backend, BackendError, BackendOptions, ChatRequest, ChatResponse, Health, LineReader,
    Message, Role,
};

use crate::wire::{Api, ToolCall};

/// Where the model is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// The engine's built-in `reader` (answers only from its window).
    Reader,
    /// An Ollama server's base URL (`http://127.0.0.1:11434`).
    Ollama(String),
    /// An OpenAI-compatible base URL, `/v1` included (`http://127.0.0.1:8080/v1`).
    OpenAi(String),
}

impl std::str::FromStr for UpstreamSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<UpstreamSpec, String> {
        let s = s.trim();
        if s == "reader" {
            return Ok(UpstreamSpec::Reader);
        }
        let bad = || {
            format!(
                "unknown upstream {s:?} — use `ollama:URL` (e.g. ollama:http://127.0.0.1:11434), \
                 `openai:URL` (e.g. openai:http://127.0.0.1:8080/v1) or `reader`"
            )
        };
        let (kind, url) = s.split_once(':').ok_or_else(bad)?;
        let url = url.trim().trim_end_matches('/');
        if url.is_empty() {
            return Err(bad());
        }
        match kind {
            "ollama" => Ok(UpstreamSpec::Ollama(backend::ollama::normalize_host(url))),
            "openai" if url.contains("://") => Ok(UpstreamSpec::OpenAi(url.to_string())),
            "openai" => Ok(UpstreamSpec::OpenAi(format!("http://{url}"))),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamSpec::Reader => write!(f, "reader"),
            UpstreamSpec::Ollama(u) => write!(f, "ollama:{u}"),
            UpstreamSpec::OpenAi(u) => write!(f, "openai:{u}"),
        }
    }
}

/// What the model said, piece by piece, in no client's format yet.
#[derive(Clone, Debug)]
pub enum Event {
    Text(String),
    Thinking(String),
    /// Complete tool calls (streamed pieces are gathered first).
    ToolCalls(Vec<ToolCall>),
    Done(Finish),
    /// The call failed; `status` is the HTTP status to answer with when nothing was sent yet.
    Error {
        status: u16,
        message: String,
    },
}

/// The last figures of a call.
#[derive(Clone, Debug, Default)]
pub struct Finish {
    pub done_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_ns: u64,
    pub load_ns: u64,
    pub prompt_eval_ns: u64,
    pub eval_ns: u64,
}

/// The upstream, shared by every session.
pub struct Upstream {
    pub spec: UpstreamSpec,
    api_key: Option<String>,
    agent: ureq::Agent,
    ctx: Option<usize>,
    /// Engine backends per model, for context lengths and exact prompt counts.
    engines: Mutex<HashMap<String, Arc<dyn Backend>>>,
}

/// The key is never printed.
impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Upstream {
    pub fn new(spec: UpstreamSpec, api_key: Option<String>, ctx: Option<usize>) -> Upstream {
        Upstream {
            spec,
            api_key: api_key.filter(|k| !k.trim().is_empty()),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(600))
                .build(),
            ctx,
            engines: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_reader(&self) -> bool {
        self.spec == UpstreamSpec::Reader
    }

    /// The base URL requests are passed through to (`None` for the reader).
    pub fn base(&self) -> Option<&str> {
        match &self.spec {
            UpstreamSpec::Reader => None,
            UpstreamSpec::Ollama(u) | UpstreamSpec::OpenAi(u) => Some(u),
        }
    }

    /// Where a passed-through path goes: Ollama's routes and `/v1/...` on an Ollama
    /// server sit under its root; on an OpenAI server `/v1/...` maps onto the base.
    pub fn passthrough_url(&self, path_and_query: &str) -> Option<String> {
        match &self.spec {
            UpstreamSpec::Reader => None,
            UpstreamSpec::Ollama(u) => Some(format!("{u}{path_and_query}")),
            UpstreamSpec::OpenAi(u) => {
                let rest = path_and_query
                    .strip_prefix("/v1")
                    .filter(|r| r.is_empty() || r.starts_with(['/', '?']))
                    .unwrap_or(path_and_query);
                Some(format!("{u}{rest}"))
            }
        }
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// The engine's backend for `model` (made once per model).
    pub fn engine(&self, model: &str) -> Arc<dyn Backend> {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = engines.get(model) {
            return Arc::clone(b);
        }
        let opts = BackendOptions {
            ollama_host: match &self.spec {
                UpstreamSpec::Ollama(u) => Some(u.clone()),
                _ => None,
            },
            openai_base_url: match &self.spec {
                UpstreamSpec::OpenAi(u) => Some(u.clone()),
                _ => None,
            },
            openai_api_key: self.api_key.clone(),
            context_override: self.ctx,
            timeout: None,
            cache_reuse: None,
        };
        let b: Arc<dyn Backend> = match &self.spec {
            UpstreamSpec::Reader => Arc::new(ReaderBackend::new(&opts)),
            UpstreamSpec::Ollama(_) => Arc::new(backend::ollama::OllamaBackend::new(model, &opts)),
            UpstreamSpec::OpenAi(_) => Arc::new(backend::openai::OpenAiBackend::new(model, &opts)),
        };
        engines.insert(model.to_string(), Arc::clone(&b));
        b
    }

    /// The window served for `model`: `--ctx`, else what the upstream reports (capped
    /// like every session's).
    pub fn window(&self, model: &str) -> Result<usize, BackendError> {
        match self.ctx {
            Some(n) => Ok(n),
            None => Ok(self
                .engine(model)
                .context_length()?
                .min(uctx::session::DEFAULT_MAX_WINDOW)),
        }
    }
}

/// One client request being answered: what the session's call to the model carries
/// beyond the window.
pub struct Call {
    pub api: Api,
    pub model: String,
    /// The client's request body (fields other than `messages` are passed on).
    pub body: Value,
    /// The client's own message objects by (role in the window, text in the window).
    pub originals: HashMap<(&'static str, String), Value>,
    pub tx: mpsc::Sender<Event>,
    /// Filled by the call: the figures of its last message and its tool calls.
    pub finish: Option<Finish>,
    pub tool_calls: Vec<ToolCall>,
    /// The messages last sent upstream (for tests and status).
    pub sent: Vec<Value>,
}

impl Call {
    fn send(&self, e: Event) {
        // A client that went away stops reading; the turn still completes and is kept.
        let _ = self.tx.blocking_send(e);
    }
}

/// The engine backend of one conversation: the window in, the upstream's answer out.
pub struct ProxyBackend {
    upstream: Arc<Upstream>,
    model: String,
    /// The reader answers in process; one per conversation, so its prefix-cache
    /// figures are this conversation's own.
    reader: Option<ReaderBackend>,
    pub call: Mutex<Option<Call>>,
}

impl ProxyBackend {
    pub fn new(upstream: Arc<Upstream>, model: &str) -> ProxyBackend {
        let reader = upstream.is_reader().then(|| {
            ReaderBackend::new(&BackendOptions {
                context_override: upstream.ctx,
                ..BackendOptions::default()
            })
        });
        ProxyBackend {
            upstream,
            model: model.to_string(),
            reader,
            call: Mutex::new(None),
        }
    }

    fn lock_call(&self) -> std::sync::MutexGuard<'_, Option<Call>> {
        self.call.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for ProxyBackend {
    fn spec(&self) -> String {
        format!("{}/{}", self.upstream.spec, self.model)
    }

    fn context_length(&self) -> Result<usize, BackendError> {
        self.upstream.window(&self.model)
    }

    fn health(&self) -> Result<Health, BackendError> {
        self.upstream.engine(&self.model).health()
    }

    fn count_prompt(&self, messages: &[Message]) -> Option<usize> {
        match &self.reader {
            Some(r) => r.count_prompt(messages),
            None => self.upstream.engine(&self.model).count_prompt(messages),
        }
    }

    fn chat(
        &self,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError> {
        let mut guard = self.lock_call();
        let Some(call) = guard.as_mut() else {
            return Err(BackendError::Protocol {
                url: "uctx serve".into(),
                detail: "a model call with no client request".into(),
            });
        };
        call.tool_calls.clear();
        call.finish = None;
        let started = Instant::now();
        let dialect = match self.upstream.spec {
            UpstreamSpec::Ollama(_) => Api::Ollama,
            _ => Api::OpenAi,
        };
        let messages = upstream_messages(req, call, dialect);
        call.sent = messages.clone();
        let resp = match &self.upstream.spec {
            UpstreamSpec::Reader => {
                let reader = self.reader.as_ref().expect("reader upstream has a reader");
                let resp = reader.chat(req, &mut |t| {
                    on_text(t);
                    call.send(Event::Text(t.to_string()));
                })?;
                let ns = started.elapsed().as_nanos() as u64;
                call.finish = Some(Finish {
                    done_reason: resp.done_reason.clone().unwrap_or_else(|| "stop".into()),
                    prompt_tokens: resp.prompt_tokens.unwrap_or(0),
                    completion_tokens: resp.completion_tokens.unwrap_or(0),
                    total_ns: ns,
                    prompt_eval_ns: ns / 2,
                    eval_ns: ns - ns / 2,
                    load_ns: 0,
                });
                resp
            }
            UpstreamSpec::Ollama(base) => {
                let body = ollama_body(call, messages, req);
                let url = format!("{base}/api/chat");
                let r = post(&self.upstream, &url, &body)?;
                read_ollama(r, &url, call, on_text, started)?
            }
            UpstreamSpec::OpenAi(base) => {
                let body = openai_body(call, messages, req);
                let url = format!("{base}/chat/completions");
                let r = post(&self.upstream, &url, &body)?;
                read_openai(r, &url, call, on_text, started)?
            }
        };
        let mut resp = resp;
        // What the conversation keeps of the answer: its text and its tool calls, in
        // the form the next request's copy of it is matched by.
        resp.text = crate::wire::render_answer(&resp.text, &call.tool_calls);
        Ok(resp)
    }
}

/// The window as the upstream receives it: each message that is one of the client's
/// own goes as the client sent it (tool calls, images and all); a tool result whose call
/// the window no longer holds goes as plain text, so a tool call is never split from
/// its result in a way a server would refuse.
fn upstream_messages(req: &ChatRequest, call: &Call, dialect: Api) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut open_calls = false;
    for (i, m) in req.messages.iter().enumerate() {
        if i == 0 && m.role == Role::System && m.content.is_empty() {
            continue;
        }
        let original = call.originals.get(&(m.role.as_str(), m.content.clone()));
        let v = match original {
            Some(o) => {
                let role = o.get("role").and_then(Value::as_str).unwrap_or("");
                if role == "tool" && !open_calls {
                    json!({"role": "user", "content": m.content})
                } else {
                    crate::wire::convert_message(o, call.api, dialect)
                }
            }
            None => json!({"role": m.role.as_str(), "content": m.content}),
        };
        let role = v.get("role").and_then(Value::as_str).unwrap_or("");
        let has_calls = v
            .get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if role == "assistant" {
            open_calls = has_calls;
        } else if role != "tool" {
            open_calls = false;
        }
        out.push(v);
    }
    out
}

/// Client fields that never go upstream as they are.
const OWN_FIELDS: &[&str] = &["messages", "stream", "stream_options", "model"];

fn ollama_body(call: &Call, messages: Vec<Value>, req: &ChatRequest) -> Value {
    let mut body = Map::new();
    let mut options = Map::new();
    match call.api {
        Api::Ollama => {
            for (k, v) in call.body.as_object().into_iter().flatten() {
                if k == "options" {
                    if let Some(o) = v.as_object() {
                        options = o.clone();
                    }
                } else if !OWN_FIELDS.contains(&k.as_str()) {
                    body.insert(k.clone(), v.clone());
                }
            }
        }
        Api::OpenAi => {
            let b = &call.body;
            for (from, to) in [
                ("temperature", "temperature"),
                ("top_p", "top_p"),
                ("seed", "seed"),
                ("stop", "stop"),
                ("presence_penalty", "presence_penalty"),
                ("frequency_penalty", "frequency_penalty"),
            ] {
                if let Some(v) = b.get(from).filter(|v| !v.is_null()) {
                    options.insert(to.into(), v.clone());
                }
            }
            if let Some(t) = b.get("tools").filter(|v| !v.is_null()) {
                body.insert("tools".into(), t.clone());
            }
            if b.pointer("/response_format/type").and_then(Value::as_str) == Some("json_object") {
                body.insert("format".into(), json!("json"));
            }
        }
    }
    let asked = options
        .get("num_predict")
        .and_then(Value::as_i64)
        .or_else(|| client_max_tokens(&call.body));
    options.insert("num_ctx".into(), json!(req.num_ctx));
    options.insert(
        "num_predict".into(),
        json!(answer_cap(asked, req.max_tokens)),
    );
    body.insert("model".into(), json!(call.model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert("options".into(), Value::Object(options));
    Value::Object(body)
}

fn openai_body(call: &Call, messages: Vec<Value>, req: &ChatRequest) -> Value {
    let mut body = Map::new();
    match call.api {
        Api::OpenAi => {
            for (k, v) in call.body.as_object().into_iter().flatten() {
                if !OWN_FIELDS.contains(&k.as_str()) && k != "max_completion_tokens" {
                    body.insert(k.clone(), v.clone());
                }
            }
        }
        Api::Ollama => {
            let o = call.body.get("options").cloned().unwrap_or_default();
            for k in [
                "temperature",
                "top_p",
                "seed",
                "stop",
                "presence_penalty",
                "frequency_penalty",
            ] {
                if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
                    body.insert(k.into(), v.clone());
                }
            }
            if let Some(t) = call.body.get("tools").filter(|v| !v.is_null()) {
                body.insert("tools".into(), t.clone());
            }
            if call.body.get("format").and_then(Value::as_str) == Some("json") {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
        }
    }
    let asked = client_max_tokens(&call.body).or_else(|| {
        call.body
            .pointer("/options/num_predict")
            .and_then(Value::as_i64)
    });
    body.insert("model".into(), json!(call.model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    body.insert(
        "max_tokens".into(),
        json!(answer_cap(asked, req.max_tokens)),
    );
    // llama-server keeps the prompt's KV cache between calls only when asked.
    body.insert("cache_prompt".into(), json!(true));
    Value::Object(body)
}

fn client_max_tokens(body: &Value) -> Option<i64> {
    body.get("max_completion_tokens")
        .and_then(Value::as_i64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_i64))
}

/// The client's answer limit, never above the session's reserve (the window budgets
/// the prompt against it).
fn answer_cap(asked: Option<i64>, reserve: usize) -> usize {
    match asked {
        Some(n) if n > 0 => (n as usize).min(reserve),
        _ => reserve,
    }
}

fn post(up: &Upstream, url: &str, body: &Value) -> Result<ureq::Response, BackendError> {
    let mut r = up.agent.post(url).set("Content-Type", "application/json");
    if let Some(k) = &up.api_key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    match r.send_string(&body.to_string()) {
        Ok(resp) => Ok(resp),
        Err(ureq::Error::Status(status, resp)) => {
            let mut text = String::new();
            let _ = resp.into_reader().take(64 << 10).read_to_string(&mut text);
            Err(status_error(url, status, &text))
        }
        Err(ureq::Error::Transport(t)) => Err(BackendError::Unreachable {
            what: "the upstream model server".into(),
            url: url.to_string(),
            detail: t.to_string(),
            fix: "start it, or pass another --upstream".into(),
        }),
    }
}

/// An upstream HTTP error as the engine knows it: a prompt over the server's context
/// becomes [`BackendError::ContextExceeded`], so the session sends a smaller one.
fn status_error(url: &str, status: u16, body: &str) -> BackendError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or(body)
        .to_string();
    let kind = v.pointer("/error/type").and_then(Value::as_str);
    if status == 400
        && (kind == Some("exceed_context_size_error") || message.contains("exceeds the available"))
    {
        return BackendError::ContextExceeded {
            url: url.to_string(),
            detail: message,
            prompt_tokens: v.pointer("/error/n_prompt_tokens").and_then(Value::as_u64),
            window: v.pointer("/error/n_ctx").and_then(Value::as_u64),
        };
    }
    BackendError::Http {
        url: url.to_string(),
        status,
        body: message,
    }
}

fn broken(url: &str, detail: impl Into<String>) -> BackendError {
    BackendError::StreamBroken {
        url: url.to_string(),
        detail: detail.into(),
    }
}

/// A piece of the answer, from either API: to the session, the answer, the client.
fn text_piece(call: &Call, out: &mut ChatResponse, on_text: &mut dyn FnMut(&str), t: &str) {
    if !t.is_empty() {
        on_text(t);
        out.text.push_str(t);
        call.send(Event::Text(t.to_string()));
    }
}

/// A piece of the model's reasoning, from either API: to the client only.
fn thinking_piece(call: &Call, t: &str) {
    if !t.is_empty() {
        call.send(Event::Thinking(t.to_string()));
    }
}

fn read_ollama(
    resp: ureq::Response,
    url: &str,
    call: &mut Call,
    on_text: &mut dyn FnMut(&str),
    started: Instant,
) -> Result<ChatResponse, BackendError> {
    let mut lines = LineReader::new(resp.into_reader());
    let mut out = ChatResponse::default();
    loop {
        let line = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => return Err(broken(url, "the stream ended before its last message")),
            Err(e) => return Err(broken(url, e.to_string())),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(&line).map_err(|e| BackendError::Protocol {
            url: url.to_string(),
            detail: format!("a streamed line is not JSON: {e}"),
        })?;
        if let Some(err) = v.get("error") {
            return Err(BackendError::Server {
                url: url.to_string(),
                message: err.as_str().map_or_else(|| err.to_string(), str::to_string),
                fix: "check the server's log".into(),
            });
        }
        if out.ttft_ms.is_none() {
            out.ttft_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(t) = v.pointer("/message/thinking").and_then(Value::as_str) {
            thinking_piece(call, t);
        }
        if let Some(t) = v.pointer("/message/content").and_then(Value::as_str) {
            text_piece(call, &mut out, on_text, t);
        }
        if let Some(calls) = v.pointer("/message/tool_calls").and_then(Value::as_array) {
            let parsed: Vec<ToolCall> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| ToolCall::from_ollama(c, call.tool_calls.len() + i))
                .collect();
            call.tool_calls.extend(parsed.iter().cloned());
            call.send(Event::ToolCalls(parsed));
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            let n = |k: &str| v.get(k).and_then(Value::as_u64);
            out.prompt_tokens = n("prompt_eval_count");
            out.completion_tokens = n("eval_count");
            out.done_reason = v
                .get("done_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            out.prompt_eval_ms = n("prompt_eval_duration").map(|d| d as f64 / 1e6);
            call.finish = Some(Finish {
                done_reason: out.done_reason.clone().unwrap_or_else(|| "stop".into()),
                prompt_tokens: out.prompt_tokens.unwrap_or(0),
                completion_tokens: out.completion_tokens.unwrap_or(0),
                total_ns: n("total_duration").unwrap_or(started.elapsed().as_nanos() as u64),
                load_ns: n("load_duration").unwrap_or(0),
                prompt_eval_ns: n("prompt_eval_duration").unwrap_or(0),
                eval_ns: n("eval_duration").unwrap_or(0),
            });
            return Ok(out);
        }
    }
}

fn read_openai(
    resp: ureq::Response,
    url: &str,
    call: &mut Call,
    on_text: &mut dyn FnMut(&str),
    started: Instant,
) -> Result<ChatResponse, BackendError> {
    let json_body = resp.content_type() == "application/json";
    let mut lines = LineReader::new(resp.into_reader());
    let mut out = ChatResponse::default();
    // Tool calls arrive in pieces keyed by `index`; they are sent whole at the end.
    let mut calls: Vec<ToolCall> = Vec::new();
    let mut finish_reason: Option<String> = None;
    let mut whole = Vec::new();
    loop {
        let line = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) if json_body => break,
            Ok(None) => break,
            Err(e) => return Err(broken(url, e.to_string())),
        };
        if json_body {
            whole.extend_from_slice(&line);
            whole.push(b'\n');
            continue;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            break;
        }
        let v: Value = serde_json::from_slice(data).map_err(|e| BackendError::Protocol {
            url: url.to_string(),
            detail: format!("a streamed event is not JSON: {e}"),
        })?;
        openai_piece(
            &v,
            url,
            call,
            on_text,
            &mut out,
            &mut calls,
            &mut finish_reason,
            started,
        )?;
    }
    if json_body {
        // A server that ignored `stream: true` sent the whole completion.
        let v: Value = serde_json::from_slice(&whole).map_err(|e| BackendError::Protocol {
            url: url.to_string(),
            detail: format!("the completion is not JSON: {e}"),
        })?;
        let mut as_delta = v.clone();
        if let Some(m) = v.pointer("/choices/0/message") {
            as_delta["choices"][0]["delta"] = m.clone();
        }
        openai_piece(
            &as_delta,
            url,
            call,
            on_text,
            &mut out,
            &mut calls,
            &mut finish_reason,
            started,
        )?;
    } else if finish_reason.is_none() && out.prompt_tokens.is_none() {
        return Err(broken(url, "the stream ended before its last event"));
    }
    if !calls.is_empty() {
        call.tool_calls = calls.clone();
        call.send(Event::ToolCalls(calls));
    }
    out.done_reason = finish_reason.clone();
    let total = started.elapsed().as_nanos() as u64;
    let prompt_ns = out.prompt_eval_ms.map(|ms| (ms * 1e6) as u64).unwrap_or(0);
    call.finish = Some(Finish {
        done_reason: finish_reason.unwrap_or_else(|| "stop".into()),
        prompt_tokens: out.prompt_tokens.unwrap_or(0),
        completion_tokens: out.completion_tokens.unwrap_or(0),
        total_ns: total,
        load_ns: 0,
        prompt_eval_ns: prompt_ns,
        eval_ns: total.saturating_sub(prompt_ns),
    });
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn openai_piece(
    v: &Value,
    url: &str,
    call: &mut Call,
    on_text: &mut dyn FnMut(&str),
    out: &mut ChatResponse,
    calls: &mut Vec<ToolCall>,
    finish_reason: &mut Option<String>,
    started: Instant,
) -> Result<(), BackendError> {
    if let Some(err) = v.get("error") {
        return Err(BackendError::Server {
            url: url.to_string(),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_string),
            fix: "check the server's log".into(),
        });
    }
    if let Some(choice) = v.pointer("/choices/0") {
        let delta = choice.get("delta").cloned().unwrap_or_default();
        if out.ttft_ms.is_none() {
            out.ttft_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        }
        for key in ["reasoning_content", "reasoning"] {
            if let Some(t) = delta.get(key).and_then(Value::as_str) {
                thinking_piece(call, t);
            }
        }
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            text_piece(call, out, on_text, t);
        }
        for piece in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ToolCall::merge_openai_piece(calls, piece);
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            *finish_reason = Some(r.to_string());
        }
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        out.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
        out.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        if let Some(c) = u
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
        {
            out.cached_tokens = Some(c);
        }
    }
    if let Some(t) = v.get("timings") {
        if let Some(c) = t.get("cache_n").and_then(Value::as_u64) {
            out.cached_tokens = Some(c);
        }
        out.evaluated_tokens = t.get("prompt_n").and_then(Value::as_u64);
        out.prompt_eval_ms = t.get("prompt_ms").and_then(Value::as_f64);
    }
    Ok(())
}
