//! The two wire formats clients speak: Ollama's (`api/types.go`: NDJSON lines, `done`,
//! `done_reason`, `prompt_eval_count`, durations in nanoseconds) and OpenAI's (SSE
//! `data:` frames of `chat.completion.chunk`, `[DONE]`, error bodies
//! `{"error":{"message","type","code"}}`); and the text form of a message that the
//! conversation keeps and matches resent history by.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use uctx::backend::Role;

use crate::upstream::Finish;

/// Which API a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Ollama,
    OpenAi,
}

/// A complete tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub index: usize,
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl ToolCall {
    /// From Ollama's `{"function": {"name", "arguments": {…}}}`.
    pub fn from_ollama(v: &Value, index: usize) -> ToolCall {
        let f = v.get("function").cloned().unwrap_or_default();
        let arguments = match f.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(a) => a.to_string(),
            None => "{}".to_string(),
        };
        ToolCall {
            index,
            id: v
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{index}"), str::to_string),
            name: f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            arguments,
        }
    }

    /// From OpenAI's `{"id", "type": "function", "function": {"name", "arguments": "…"}}`.
    pub fn from_openai(v: &Value, index: usize) -> ToolCall {
        let mut c = ToolCall::from_ollama(v, index);
        if let Some(i) = v.get("index").and_then(Value::as_u64) {
            c.index = i as usize;
        }
        c
    }

    /// Fold one streamed piece (`{"index", "id"?, "function": {"name"?, "arguments"?}}`)
    /// into the calls gathered so far.
    pub fn merge_openai_piece(calls: &mut Vec<ToolCall>, piece: &Value) {
        let index = piece
            .get("index")
            .and_then(Value::as_u64)
            .map_or(calls.len(), |i| i as usize);
        let pos = match calls.iter().position(|c| c.index == index) {
            Some(p) => p,
            None => {
                calls.push(ToolCall {
                    index,
                    id: format!("call_{index}"),
                    name: String::new(),
                    arguments: String::new(),
                });
                calls.len() - 1
            }
        };
        let c = &mut calls[pos];
        if let Some(id) = piece.get("id").and_then(Value::as_str) {
            c.id = id.to_string();
        }
        if let Some(n) = piece.pointer("/function/name").and_then(Value::as_str) {
            c.name.push_str(n);
        }
        if let Some(a) = piece.pointer("/function/arguments").and_then(Value::as_str) {
            c.arguments.push_str(a);
        }
    }

    /// The arguments as a JSON value (an object when they parse, else the text).
    fn arguments_value(&self) -> Value {
        serde_json::from_str(&self.arguments).unwrap_or_else(|_| json!(self.arguments))
    }

    /// The arguments in one canonical spelling (keys sorted), for matching.
    fn canonical_arguments(&self) -> String {
        match serde_json::from_str::<Value>(&self.arguments) {
            Ok(v) => v.to_string(),
            Err(_) => self.arguments.trim().to_string(),
        }
    }

    pub fn to_openai(&self) -> Value {
        json!({
            "index": self.index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }

    pub fn to_ollama(&self) -> Value {
        json!({"function": {"index": self.index, "name": self.name, "arguments": self.arguments_value()}})
    }
}

/// The text a conversation keeps of a message: its content, then one line per tool call.
pub fn render_answer(content: &str, calls: &[ToolCall]) -> String {
    let mut text = content.trim().to_string();
    for c in calls {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!(
            "[tool call] {}({})",
            c.name,
            c.canonical_arguments()
        ));
    }
    text
}

/// What kind of message a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    System,
    User,
    Assistant,
    Tool,
}

/// A client's message as the conversation sees it: its kind, its role in the window,
/// and its text.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub kind: Kind,
    pub role: Role,
    pub text: String,
}

/// The text of a message's `content`: a string, or OpenAI's list of parts (text kept).
pub fn content_text(v: &Value) -> String {
    match v.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A client message (either API) as the conversation keeps it; `None` when it has no role.
pub fn render_message(v: &Value) -> Option<Rendered> {
    let role = v.get("role")?.as_str()?;
    let content = content_text(v);
    Some(match role {
        "system" | "developer" => Rendered {
            kind: Kind::System,
            role: Role::User,
            text: format!("[system] {}", content.trim()),
        },
        "assistant" => {
            let calls = tool_calls_of(v);
            Rendered {
                kind: Kind::Assistant,
                role: Role::Assistant,
                text: render_answer(&content, &calls),
            }
        }
        "tool" | "function" => {
            let name = v
                .get("tool_name")
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            Rendered {
                kind: Kind::Tool,
                role: Role::User,
                text: format!("[tool result{name}] {}", content.trim()),
            }
        }
        _ => Rendered {
            kind: Kind::User,
            role: Role::User,
            text: content.trim().to_string(),
        },
    })
}

/// The tool calls a message carries, in either API's shape.
fn tool_calls_of(v: &Value) -> Vec<ToolCall> {
    v.get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| ToolCall::from_openai(c, i))
        .collect()
}

/// A client's message in the upstream's dialect (unchanged when they are the same).
pub fn convert_message(v: &Value, from: Api, to: Api) -> Value {
    if from == to {
        return v.clone();
    }
    let role = v.get("role").and_then(Value::as_str).unwrap_or("user");
    let mut out = json!({"role": role, "content": content_text(v)});
    let calls = tool_calls_of(v);
    if !calls.is_empty() {
        out["tool_calls"] = match to {
            Api::OpenAi => calls.iter().map(ToolCall::to_openai).collect(),
            Api::Ollama => calls.iter().map(ToolCall::to_ollama).collect(),
        };
    }
    if role == "tool" {
        match to {
            Api::Ollama => {
                if let Some(n) = v.get("name").and_then(Value::as_str) {
                    out["tool_name"] = json!(n);
                }
            }
            Api::OpenAi => {
                out["tool_call_id"] = v
                    .get("tool_call_id")
                    .cloned()
                    .unwrap_or_else(|| json!("call_0"));
            }
        }
    }
    out
}

/// An error as the client's API spells it.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// OpenAI's `code`.
    pub code: &'static str,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code,
        }
    }

    pub fn upstream(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            message: message.into(),
            kind: if status < 500 {
                "invalid_request_error"
            } else {
                "server_error"
            },
            code: "upstream_error",
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong bearer token — send `Authorization: Bearer TOKEN` with \
                      the token uctx serve was started with"
                .into(),
            kind: "invalid_request_error",
            code: "invalid_api_key",
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            code: "not_found",
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            code: "internal_error",
        }
    }

    pub fn body(&self, api: Api) -> Value {
        match api {
            Api::Ollama => json!({"error": self.message}),
            Api::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }}),
        }
    }

    pub fn response(&self, api: Api) -> Response {
        (self.status, axum::Json(self.body(api))).into_response()
    }
}

/// Which API a path belongs to (for the shape of its errors).
pub fn api_of_path(path: &str) -> Api {
    if path.starts_with("/v1/") || path == "/v1" {
        Api::OpenAi
    } else {
        Api::Ollama
    }
}

/// Now as RFC 3339 with nanoseconds, UTC (Ollama's `created_at`).
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Ollama's lines for one answer.
pub struct OllamaOut {
    pub model: String,
}

impl OllamaOut {
    fn message(&self, message: Value, done: bool) -> Value {
        json!({
            "model": self.model,
            "created_at": rfc3339_now(),
            "message": message,
            "done": done,
        })
    }

    pub fn text(&self, t: &str) -> Value {
        self.message(json!({"role": "assistant", "content": t}), false)
    }

    pub fn thinking(&self, t: &str) -> Value {
        self.message(
            json!({"role": "assistant", "content": "", "thinking": t}),
            false,
        )
    }

    pub fn tool_calls(&self, calls: &[ToolCall]) -> Value {
        self.message(
            json!({"role": "assistant", "content": "", "tool_calls": calls.iter().map(ToolCall::to_ollama).collect::<Vec<_>>()}),
            false,
        )
    }

    /// The last line; `whole` is the complete message for `stream: false`.
    pub fn done(&self, f: &Finish, whole: Option<Value>) -> Value {
        let mut v = self.message(
            whole.unwrap_or_else(|| json!({"role": "assistant", "content": ""})),
            true,
        );
        v["done_reason"] = json!(f.done_reason);
        v["total_duration"] = json!(f.total_ns);
        v["load_duration"] = json!(f.load_ns);
        v["prompt_eval_count"] = json!(f.prompt_tokens);
        v["prompt_eval_duration"] = json!(f.prompt_eval_ns);
        v["eval_count"] = json!(f.completion_tokens);
        v["eval_duration"] = json!(f.eval_ns);
        v
    }
}

/// OpenAI's chunks for one answer.
pub struct OpenAiOut {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl OpenAiOut {
    pub fn new(model: &str, include_usage: bool) -> OpenAiOut {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let created = unix_now();
        OpenAiOut {
            id: format!("chatcmpl-uctx{created:x}{n:x}"),
            created,
            model: model.to_string(),
            include_usage,
        }
    }

    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "uctx",
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    pub fn usage(f: &Finish) -> Value {
        json!({
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens,
        })
    }

    /// The chunk that carries only the usage (`choices: []`), sent only when asked for.
    pub fn usage_chunk(&self, f: &Finish) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "uctx",
            "choices": [],
            "usage": OpenAiOut::usage(f),
        })
    }

    pub fn whole(&self, content: &str, calls: &[ToolCall], f: &Finish) -> Value {
        let mut message = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            message["tool_calls"] = calls
                .iter()
                .map(|c| {
                    let mut v = c.to_openai();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("index");
                    }
                    v
                })
                .collect();
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "uctx",
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(f, calls),
            }],
            "usage": OpenAiOut::usage(f),
        })
    }
}

/// OpenAI's `finish_reason`: `tool_calls` when the model called tools.
pub fn finish_reason<'a>(f: &'a Finish, calls: &[ToolCall]) -> &'a str {
    if !calls.is_empty() && f.done_reason == "stop" {
        "tool_calls"
    } else {
        &f.done_reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_735_689_599, 0), "2024-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn a_tool_call_renders_the_same_from_either_api() {
        let ollama = json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Oslo", "days": 2}}}]});
        let openai = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "weather", "arguments": "{\"days\": 2, \"city\": \"Oslo\"}"}}]});
        let a = render_message(&ollama).unwrap().text;
        let b = render_message(&openai).unwrap().text;
        assert_eq!(a, b);
        assert_eq!(a, "[tool call] weather({\"city\":\"Oslo\",\"days\":2})");
    }

    #[test]
    fn streamed_tool_call_pieces_merge_by_index() {
        let mut calls = Vec::new();
        for p in [
            json!({"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}),
            json!({"index": 0, "function": {"arguments": ": 1}"}}),
            json!({"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}),
        ] {
            ToolCall::merge_openai_piece(&mut calls, &p);
        }
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, "{\"a\": 1}");
        assert_eq!(calls[1].name, "g");
    }

    #[test]
    fn error_bodies_per_api() {
        let e = ApiError::bad_request("invalid_json", "bad");
        assert_eq!(e.body(Api::Ollama), json!({"error": "bad"}));
        assert_eq!(
            e.body(Api::OpenAi)["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(e.body(Api::OpenAi)["error"]["code"], "invalid_json");
    }
}
