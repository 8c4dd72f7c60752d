//! OpenAI-compatible servers (llama.cpp's `llama-server`, vLLM, LM Studio, hosted APIs):
//! streaming `{base}/chat/completions` over server-sent events, `{base}/models` and
//! llama.cpp's `/props` for the context length.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::{json, Value};

use super::http::{self, Failure, LineReader};
use super::{
    Backend, BackendError, BackendOptions, ChatRequest, ChatResponse, Health, Message,
    DEFAULT_OPENAI_BASE_URL,
};

const FIX_START: &str =
    "start the server (llama.cpp: `llama-server -m MODEL.gguf --port 8080`), or set OPENAI_BASE_URL";
const FIX_KEY: &str = "set OPENAI_API_KEY or pass --api-key-file PATH";

/// A model behind an OpenAI-compatible API.
pub struct OpenAiBackend {
    model: String,
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
    context_override: Option<usize>,
    /// Set once the server has shown it has no `/apply-template` + `/tokenize`.
    no_tokenizer: AtomicBool,
    /// Set once `/props` or `/tokenize` has shown the server is llama.cpp's: only then
    /// does a request carry llama.cpp's own fields.
    llamacpp: AtomicBool,
    /// llama.cpp's `n_cache_reuse` for every request (0: not sent).
    cache_reuse: usize,
}

impl OpenAiBackend {
    /// `model` as the server names it; the base URL comes from `opts.openai_base_url`,
    /// else [`DEFAULT_OPENAI_BASE_URL`]; the key from `opts.openai_api_key`.
    pub fn new(model: &str, opts: &BackendOptions) -> OpenAiBackend {
        let base = opts
            .openai_base_url
            .as_deref()
            .unwrap_or(DEFAULT_OPENAI_BASE_URL)
            .trim()
            .trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        OpenAiBackend {
            model: model.to_string(),
            base,
            key: opts.openai_api_key.clone().filter(|k| !k.is_empty()),
            agent: http::agent(opts),
            context_override: opts.context_override,
            no_tokenizer: AtomicBool::new(false),
            llamacpp: AtomicBool::new(false),
            cache_reuse: opts.cache_reuse.unwrap_or(super::DEFAULT_CACHE_REUSE),
        }
    }

    /// The base URL (`http://127.0.0.1:8080/v1`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    fn fail(&self, f: Failure, url: &str) -> BackendError {
        match f {
            Failure::Transport { detail } => BackendError::Unreachable {
                what: "the OpenAI-compatible server".to_string(),
                url: self.base.clone(),
                detail,
                fix: FIX_START.to_string(),
            },
            Failure::Status { status, body } => {
                let message = http::error_message(&body);
                match status {
                    401 | 403 => BackendError::Auth {
                        url: self.base.clone(),
                        status,
                        fix: FIX_KEY.to_string(),
                    },
                    400 if context_exceeded(&body) => {
                        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        let n = |k: &str| v.pointer(&format!("/error/{k}")).and_then(Value::as_u64);
                        BackendError::ContextExceeded {
                            url: url.to_string(),
                            detail: message,
                            prompt_tokens: n("n_prompt_tokens"),
                            window: n("n_ctx"),
                        }
                    }
                    404 if message.to_lowercase().contains("model") => self.missing(),
                    400 if mentions_missing_model(&message) => self.missing(),
                    404 => BackendError::Endpoint {
                        url: self.base.clone(),
                        path: url.strip_prefix(&self.base).unwrap_or(url).to_string(),
                        status,
                        fix: "check OPENAI_BASE_URL (it usually ends in /v1)".to_string(),
                    },
                    _ => BackendError::Http {
                        url: url.to_string(),
                        status,
                        body: message,
                    },
                }
            }
        }
    }

    fn missing(&self) -> BackendError {
        BackendError::ModelMissing {
            model: self.model.clone(),
            url: self.base.clone(),
            fix: "use a model name the server lists (`uctx doctor` shows them)".to_string(),
        }
    }

    /// A request carrying the API key, when there is one.
    fn authed(&self, r: ureq::Request) -> ureq::Request {
        match &self.key {
            Some(key) => r.set("Authorization", &format!("Bearer {key}")),
            None => r,
        }
    }

    fn get(&self, url: &str) -> Result<Value, BackendError> {
        let resp = self
            .authed(self.agent.get(url))
            .call()
            .map_err(|e| self.fail(e.into(), url))?;
        http::read_json(resp, url)
    }

    /// `{base}/models`: the listed model entries.
    fn model_entries(&self) -> Result<Vec<Value>, BackendError> {
        let v = self.get(&format!("{}/models", self.base))?;
        Ok(v.get("data")
            .or_else(|| v.get("models"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// The model ids the server lists.
    pub fn list_models(&self) -> Result<Vec<String>, BackendError> {
        Ok(self
            .model_entries()?
            .iter()
            .filter_map(|m| m.get("id").or_else(|| m.get("name")))
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect())
    }

    fn post_chat(&self, body: &Value, url: &str) -> Result<ureq::Response, BackendError> {
        let r = self
            .agent
            .post(url)
            .set("Content-Type", "application/json")
            .set("Accept", "text/event-stream");
        self.authed(r)
            .send_string(&body.to_string())
            .map_err(|e| self.fail(e.into(), url))
    }
}

/// Whether an error body says the prompt exceeds the context (llama.cpp's
/// `exceed_context_size_error`, OpenAI's `context_length_exceeded`).
fn context_exceeded(body: &str) -> bool {
    let b = body.to_lowercase();
    b.contains("exceed_context_size") || b.contains("context_length_exceeded") || {
        (b.contains("exceed") || b.contains("too long") || b.contains("larger than"))
            && b.contains("context")
    }
}

/// Whether an error message says the model does not exist.
fn mentions_missing_model(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("model")
        && [
            "not found",
            "does not exist",
            "not exist",
            "no such model",
            "unknown model",
        ]
        .iter()
        .any(|p| m.contains(p))
}

/// The context length in one `{base}/models` entry: the running window (`meta.n_ctx`)
/// where a server reports it, llama.cpp's `meta.n_ctx_train`, vLLM's `max_model_len`, or
/// a `context_length`-like field.
pub fn context_length_from_model_entry(entry: &Value) -> Option<usize> {
    [
        "/meta/n_ctx",
        "/meta/n_ctx_train",
        "/max_model_len",
        "/context_length",
        "/max_context_length",
        "/context_window",
    ]
    .iter()
    .find_map(|p| entry.pointer(p).and_then(Value::as_u64))
    .and_then(|n| usize::try_from(n).ok())
    .filter(|&n| n > 0)
}

/// The running window from llama.cpp's `/props`.
pub fn context_length_from_props(props: &Value) -> Option<usize> {
    ["/default_generation_settings/n_ctx", "/n_ctx"]
        .iter()
        .find_map(|p| props.pointer(p).and_then(Value::as_u64))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
}

/// Server-sent events assembled from lines: `data:` lines joined, dispatched on a blank line.
#[derive(Default)]
struct SseEvent {
    data: Option<String>,
}

impl SseEvent {
    /// Feed one line; returns the event's data when the line completes an event.
    fn feed(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

impl Backend for OpenAiBackend {
    fn spec(&self) -> String {
        format!("openai/{}", self.model)
    }

    fn context_length(&self) -> Result<usize, BackendError> {
        // The running window first (llama.cpp's `-c`), then the model's trained length.
        match self.get(&format!("{}/props", http::origin(&self.base))) {
            Ok(props) => {
                if let Some(n) = context_length_from_props(&props) {
                    self.llamacpp.store(true, Ordering::Relaxed);
                    return Ok(n);
                }
            }
            Err(e @ BackendError::Unreachable { .. }) => return Err(e),
            Err(_) => {}
        }
        match self.model_entries() {
            Ok(entries) => {
                let entry = entries
                    .iter()
                    .find(|m| m.get("id").and_then(Value::as_str) == Some(self.model.as_str()))
                    .or(if entries.len() == 1 {
                        entries.first()
                    } else {
                        None
                    });
                if let Some(n) = entry.and_then(context_length_from_model_entry) {
                    return Ok(n);
                }
            }
            Err(e @ (BackendError::Unreachable { .. } | BackendError::Auth { .. })) => {
                return Err(e)
            }
            Err(_) => {}
        }
        self.context_override
            .ok_or_else(|| BackendError::NoContextLength {
                url: self.base.clone(),
                model: self.model.clone(),
                fix: "pass --ctx N with the window the server runs".to_string(),
            })
    }

    fn health(&self) -> Result<Health, BackendError> {
        let entries = match self.model_entries() {
            Ok(entries) => entries,
            Err(BackendError::Endpoint { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let models: Vec<String> = entries
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        // llama-server serves its one model under any name.
        let single_llamacpp = entries.len() == 1
            && entries[0].get("owned_by").and_then(Value::as_str) == Some("llamacpp");
        let model_present = models.is_empty() || single_llamacpp || models.contains(&self.model);
        Ok(Health {
            endpoint: self.base.clone(),
            models,
            model_present,
            context_length: self.context_length().ok(),
        })
    }

    fn count_prompt(&self, messages: &[Message]) -> Option<usize> {
        if self.no_tokenizer.load(Ordering::Relaxed) {
            return None;
        }
        let origin = http::origin(&self.base);
        let post = |path: &str, body: Value| -> Option<Value> {
            let url = format!("{origin}{path}");
            let r = self
                .agent
                .post(&url)
                .set("Content-Type", "application/json");
            match self.authed(r).send_string(&body.to_string()) {
                Ok(resp) => http::read_json(resp, &url).ok(),
                Err(ureq::Error::Status(..)) => {
                    self.no_tokenizer.store(true, Ordering::Relaxed);
                    None
                }
                Err(_) => None,
            }
        };
        let prompt = post("/apply-template", json!({ "messages": messages }))?;
        let prompt = prompt.get("prompt")?.as_str()?;
        let tokens = post(
            "/tokenize",
            json!({"content": prompt, "add_special": true, "parse_special": true}),
        )?;
        let n = tokens.get("tokens")?.as_array()?.len();
        if n == 0 {
            self.no_tokenizer.store(true, Ordering::Relaxed);
            return None;
        }
        // `/apply-template` and `/tokenize` are llama.cpp's own.
        self.llamacpp.store(true, Ordering::Relaxed);
        Some(n)
    }

    fn chat(
        &self,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError> {
        let started = Instant::now();
        let url = format!("{}/chat/completions", self.base);
        let mut body = json!({
            "model": self.model,
            "messages": req.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if req.max_tokens > 0 {
            body["max_tokens"] = json!(req.max_tokens);
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if self.cache_reuse > 0 && self.llamacpp.load(Ordering::Relaxed) {
            body["n_cache_reuse"] = json!(self.cache_reuse);
        }
        let resp = match self.post_chat(&body, &url) {
            // Some servers refuse `stream_options`; ask once more without it.
            Err(BackendError::Http {
                status: 400,
                body: msg,
                ..
            }) if msg.contains("stream_options") => {
                if let Some(o) = body.as_object_mut() {
                    o.remove("stream_options");
                }
                self.post_chat(&body, &url)?
            }
            other => other?,
        };
        if resp.content_type() == "application/json" {
            // A server that ignored `stream: true` sent the whole completion.
            let v = http::read_json(resp, &url)?;
            let mut out = self.whole(&v, &url, on_text)?;
            out.ttft_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            return Ok(out);
        }
        self.stream(resp, &url, started, req, on_text)
    }
}

impl OpenAiBackend {
    fn check_error(&self, v: &Value, url: &str) -> Result<(), BackendError> {
        match http::json_error(v) {
            None => Ok(()),
            Some(message) if mentions_missing_model(&message) => Err(self.missing()),
            Some(message) => Err(BackendError::Server {
                url: url.to_string(),
                message,
                fix: "check the server's log".to_string(),
            }),
        }
    }

    fn whole(
        &self,
        v: &Value,
        url: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError> {
        self.check_error(v, url)?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !text.is_empty() {
            on_text(&text);
        }
        let mut out = ChatResponse {
            text,
            done_reason: v
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..ChatResponse::default()
        };
        read_accounting(v, &mut out);
        Ok(out)
    }

    fn stream(
        &self,
        resp: ureq::Response,
        url: &str,
        started: Instant,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError> {
        let broken = |detail: String| BackendError::StreamBroken {
            url: url.to_string(),
            detail,
        };
        let mut lines = LineReader::new(resp.into_reader());
        let mut event = SseEvent::default();
        let mut out = ChatResponse::default();
        loop {
            let (data, at_end) = match lines.next_line() {
                Ok(Some(line)) => {
                    let line = String::from_utf8(line).map_err(|_| BackendError::Protocol {
                        url: url.to_string(),
                        detail: "a streamed line is not valid UTF-8".to_string(),
                    })?;
                    (event.feed(&line), false)
                }
                Ok(None) => (event.data.take(), true),
                Err(e) => return Err(broken(e.to_string())),
            };
            if let Some(data) = data {
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(out);
                }
                if !data.is_empty() {
                    let v: Value =
                        serde_json::from_str(data).map_err(|e| BackendError::Protocol {
                            url: url.to_string(),
                            detail: format!("an event is not JSON: {e}"),
                        })?;
                    self.check_error(&v, url)?;
                    let choices = v.get("choices").and_then(Value::as_array);
                    for choice in choices.into_iter().flatten() {
                        if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
                        {
                            if !text.is_empty() {
                                out.ttft_ms
                                    .get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                                on_text(text);
                                out.text.push_str(text);
                            }
                        }
                        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                            out.done_reason = Some(reason.to_string());
                        }
                    }
                    read_accounting(&v, &mut out);
                }
            }
            if req.cancelled() {
                // Dropping the response closes the connection; the server stops.
                out.done_reason = Some(super::INTERRUPTED.to_string());
                return Ok(out);
            }
            if at_end {
                // Some servers close without `[DONE]`; a finish reason means the answer is whole.
                return if out.done_reason.is_some() {
                    Ok(out)
                } else {
                    Err(broken(
                        "the stream ended before a finish reason or `[DONE]`".to_string(),
                    ))
                };
            }
        }
    }
}

/// The token accounting of a completion or a stream chunk, where it has one: `usage`
/// (with `prompt_tokens_details.cached_tokens`) and llama.cpp's `timings`.
fn read_accounting(v: &Value, out: &mut ChatResponse) {
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        let n = |p: &str| usage.pointer(p).and_then(Value::as_u64);
        out.prompt_tokens = n("/prompt_tokens").or(out.prompt_tokens);
        out.completion_tokens = n("/completion_tokens").or(out.completion_tokens);
        out.cached_tokens = n("/prompt_tokens_details/cached_tokens").or(out.cached_tokens);
    }
    if let Some(t) = v.get("timings").filter(|t| t.is_object()) {
        let cache = t.get("cache_n").and_then(Value::as_u64);
        let evaluated = t.get("prompt_n").and_then(Value::as_u64);
        out.cached_tokens = cache.or(out.cached_tokens);
        out.evaluated_tokens = evaluated.or(out.evaluated_tokens);
        out.prompt_eval_ms = t
            .get("prompt_ms")
            .and_then(Value::as_f64)
            .or(out.prompt_eval_ms);
        if out.prompt_tokens.is_none() {
            if let (Some(c), Some(e)) = (cache, evaluated) {
                out.prompt_tokens = Some(c + e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_join_data_lines_and_skip_comments() {
        let mut ev = SseEvent::default();
        assert_eq!(ev.feed(": keep-alive"), None);
        assert_eq!(ev.feed("data: {\"a\":"), None);
        assert_eq!(ev.feed("data:1}"), None);
        assert_eq!(ev.feed("event: message"), None);
        assert_eq!(ev.feed(""), Some("{\"a\":\n1}".to_string()));
        assert_eq!(ev.feed(""), None);
    }

    #[test]
    fn context_lengths_from_llama_cpp_and_vllm() {
        let e = json!({"id": "m", "meta": {"n_ctx_train": 8192}});
        assert_eq!(context_length_from_model_entry(&e), Some(8192));
        let e = json!({"id": "m", "max_model_len": 4096});
        assert_eq!(context_length_from_model_entry(&e), Some(4096));
        assert_eq!(context_length_from_model_entry(&json!({"id": "m"})), None);
        let p = json!({"default_generation_settings": {"n_ctx": 2048}});
        assert_eq!(context_length_from_props(&p), Some(2048));
    }

    #[test]
    fn accounting_reads_usage_and_llama_cpp_timings() {
        let mut out = ChatResponse::default();
        read_accounting(
            &json!({"timings": {"cache_n": 900, "prompt_n": 100, "prompt_ms": 512.5}}),
            &mut out,
        );
        assert_eq!(out.prompt_tokens, Some(1000));
        assert_eq!(out.cache_hits(), Some(900));
        assert_eq!(out.prompt_eval_ms, Some(512.5));
        let mut out = ChatResponse::default();
        read_accounting(
            &json!({"usage": {"prompt_tokens": 50, "completion_tokens": 3,
                              "prompt_tokens_details": {"cached_tokens": 40}}}),
            &mut out,
        );
        assert_eq!((out.prompt_tokens, out.cached_tokens), (Some(50), Some(40)));
    }

    #[test]
    fn context_errors_are_recognised() {
        assert!(context_exceeded(
            r#"{"error":{"code":400,"type":"exceed_context_size_error","n_prompt_tokens":3000,"n_ctx":2048}}"#
        ));
        assert!(context_exceeded(
            r#"{"error":{"code":"context_length_exceeded"}}"#
        ));
        assert!(!context_exceeded(r#"{"error":{"message":"bad key"}}"#));
    }

    #[test]
    fn only_a_missing_model_reads_as_missing() {
        assert!(mentions_missing_model("The model `gpt-x` does not exist"));
        assert!(mentions_missing_model("model 'x' not found"));
        assert!(!mentions_missing_model(
            "the model context is not large enough"
        ));
    }

    #[test]
    fn base_urls_gain_a_scheme_and_lose_a_trailing_slash() {
        let opts = BackendOptions {
            openai_base_url: Some("localhost:1234/v1/".into()),
            ..Default::default()
        };
        assert_eq!(
            OpenAiBackend::new("m", &opts).base_url(),
            "http://localhost:1234/v1"
        );
    }
}
