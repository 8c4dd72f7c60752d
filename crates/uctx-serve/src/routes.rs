//! The routes, declared in one place (Ollama's `server/routes.go` is the list matched),
//! and their handlers.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::chat::ChatJob;
use crate::upstream::{Event, Finish, UpstreamSpec};
use crate::wire::{api_of_path, Api, ApiError, OllamaOut, OpenAiOut, ToolCall};
use crate::State;

type St = AxState<Arc<State>>;

pub fn router(state: Arc<State>) -> Router {
    let api = Router::new()
        .route("/", get(root).head(root))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(ollama_chat))
        .route("/api/uctx/status", get(status))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(models));
    Router::new()
        .nest("/s/{session}", api.clone())
        .merge(api)
        .nest_service("/mcp", crate::mcp::http_service(Arc::clone(&state.memory)))
        .fallback(passthrough)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), auth))
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .with_state(state)
}

/// `/s/{id}/rest` → (`Some(id)`, `/rest`).
fn strip_session(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/s/") {
        let (id, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !id.is_empty() {
            return (Some(id), if tail.is_empty() { "/" } else { tail });
        }
    }
    (None, path)
}

/// `Authorization: Bearer TOKEN` on every route when the server has a token; the
/// digests are compared in constant time.
async fn auth(AxState(st): St, req: Request, next: Next) -> Response {
    if let Some(expected) = &st.token_digest {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| crate::token_digest(t.trim()));
        let ok = sent.is_some_and(|d| bool::from(d.ct_eq(expected)));
        if !ok {
            let (_, path) = strip_session(req.uri().path());
            return ApiError::unauthorized().response(api_of_path(path));
        }
    }
    next.run(req).await
}

async fn root() -> &'static str {
    "Ollama is running"
}

async fn version(st: St, uri: OriginalUri) -> Response {
    match st.upstream.spec {
        UpstreamSpec::Ollama(_) => forward_get(&st, &uri).await,
        _ => Json(json!({"version": crate::OLLAMA_API_VERSION})).into_response(),
    }
}

fn model_details(family: &str) -> Value {
    json!({
        "parent_model": "",
        "format": "uctx",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    })
}

fn tag(name: &str, family: &str) -> Value {
    json!({
        "name": name,
        "model": name,
        "modified_at": crate::wire::rfc3339_now(),
        "size": 0,
        "digest": "",
        "details": model_details(family),
    })
}

/// The upstream's model names, for the routes that list them in another API's shape.
async fn model_names(st: &Arc<State>) -> Result<Vec<String>, ApiError> {
    let UpstreamSpec::OpenAi(base) = &st.upstream.spec else {
        return Ok(vec!["reader".to_string()]);
    };
    let url = format!("{base}/models");
    let st2 = Arc::clone(st);
    let v = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let mut r = st2.upstream.agent().get(&url);
        if let Some(k) = st2.upstream.api_key() {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = r.call().map_err(|e| e.to_string())?;
        let text = resp.into_string().map_err(|e| e.to_string())?;
        serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::upstream(502, format!("listing the upstream's models: {e}")))?;
    Ok(v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect())
}

async fn tags(st: St, uri: OriginalUri) -> Response {
    if matches!(st.upstream.spec, UpstreamSpec::Ollama(_)) {
        return forward_get(&st, &uri).await;
    }
    match model_names(&st).await {
        Ok(names) => {
            Json(json!({"models": names.iter().map(|n| tag(n, "uctx")).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => e.response(Api::Ollama),
    }
}

async fn ps(st: St, uri: OriginalUri) -> Response {
    if matches!(st.upstream.spec, UpstreamSpec::Ollama(_)) {
        return forward_get(&st, &uri).await;
    }
    let models: std::collections::BTreeSet<String> = st
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(|l| l.try_lock().ok().map(|l| l.model.clone()))
        .filter(|m| !m.is_empty())
        .collect();
    let list: Vec<Value> = models
        .iter()
        .map(|m| {
            let mut v = tag(m, "uctx");
            v["expires_at"] = json!(crate::wire::rfc3339_now());
            v["size_vram"] = json!(0);
            v
        })
        .collect();
    Json(json!({"models": list})).into_response()
}

/// `num_ctx N` in a Modelfile `parameters` text, replacing any it has.
fn with_num_ctx(parameters: &str, n: usize) -> String {
    let mut lines: Vec<String> = parameters
        .lines()
        .filter(|l| l.split_whitespace().next() != Some("num_ctx"))
        .map(str::to_string)
        .collect();
    lines.push(format!("num_ctx                        {n}"));
    lines.join("\n")
}

async fn show(st: St, uri: OriginalUri, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match json_body(body) {
        Ok(v) => v,
        Err(e) => return e.response(Api::Ollama),
    };
    let advertised = st.cfg.advertised_context;
    if let UpstreamSpec::Ollama(_) = st.upstream.spec {
        // The model's own template, capabilities and model_info pass through unchanged;
        // only the context a client may send is uctx's.
        let (_, path) = strip_session(uri.path());
        let url = st.upstream.passthrough_url(path).unwrap_or_default();
        let st2 = Arc::clone(&st);
        let res = tokio::task::spawn_blocking(move || -> Result<Value, (u16, String)> {
            let resp = st2
                .upstream
                .agent()
                .post(&url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string());
            match resp {
                Ok(resp) => resp
                    .into_string()
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
                    .map_err(|e| (502, e)),
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    Err((code, msg))
                }
                Err(e) => Err((502, e.to_string())),
            }
        })
        .await;
        return match res {
            Ok(Ok(mut v)) => {
                let p = v["parameters"].as_str().unwrap_or("").to_string();
                v["parameters"] = json!(with_num_ctx(&p, advertised));
                Json(v).into_response()
            }
            Ok(Err((code, msg))) => ApiError::upstream(code, msg).response(Api::Ollama),
            Err(e) => ApiError::internal(e.to_string()).response(Api::Ollama),
        };
    }
    let model = body["model"]
        .as_str()
        .or_else(|| body["name"].as_str())
        .unwrap_or("reader")
        .to_string();
    let mut capabilities = vec!["completion"];
    if matches!(st.upstream.spec, UpstreamSpec::OpenAi(_)) {
        capabilities.push("tools");
    }
    Json(json!({
        "modelfile": format!("FROM {model}\nPARAMETER num_ctx {advertised}\n"),
        "parameters": with_num_ctx("", advertised),
        "template": "",
        "details": model_details("uctx"),
        "model_info": {
            "general.architecture": "uctx",
            "uctx.context_length": advertised,
        },
        "capabilities": capabilities,
        "modified_at": crate::wire::rfc3339_now(),
    }))
    .into_response()
}

async fn models(st: St, uri: OriginalUri) -> Response {
    if !st.upstream.is_reader() {
        return forward_get(&st, &uri).await;
    }
    Json(json!({"object": "list", "data": [{
        "id": "reader", "object": "model", "created": 0, "owned_by": "uctx",
    }]}))
    .into_response()
}

async fn status(st: St) -> Response {
    let st2 = Arc::clone(&st);
    match tokio::task::spawn_blocking(move || st2.status()).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::internal(e.to_string()).response(Api::Ollama),
    }
}

/// The body as a JSON object, or the API's own error.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rej| ApiError {
        status: rej.status(),
        message: if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than this server accepts (--max-body-mb)".to_string()
        } else {
            rej.body_text()
        },
        kind: "invalid_request_error",
        code: "invalid_body",
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

/// The conversation's key, in order: `/s/{id}/`, `X-Uctx-Session`,
/// `X-OpenWebUI-Chat-Id`, the body's `user`.
fn session_key(uri: &Uri, headers: &HeaderMap, body: &Value) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let key = strip_session(uri.path())
        .0
        .map(str::to_string)
        .or_else(|| header("x-uctx-session"))
        .or_else(|| header("x-openwebui-chat-id"))
        .or_else(|| {
            body.get("user")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
        })?;
    // A key names a namespace: keep it printable and bounded.
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    Some(clean)
}

async fn ollama_chat(
    st: St,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    chat(st.0, Api::Ollama, uri.0, headers, body).await
}

async fn openai_chat(
    st: St,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    chat(st.0, Api::OpenAi, uri.0, headers, body).await
}

async fn chat(
    st: Arc<State>,
    api: Api,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(v) => v,
        Err(e) => return e.response(api),
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .map(str::to_string)
    else {
        return ApiError::bad_request("missing_model", "the request names no `model`")
            .response(api);
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return ApiError::bad_request("invalid_messages", "`messages` must be a list")
            .response(api);
    }
    // Ollama's clients load a model with an empty chat: nothing to answer or store.
    if api == Api::Ollama && body["messages"].as_array().is_some_and(Vec::is_empty) {
        if matches!(st.upstream.spec, UpstreamSpec::Ollama(_)) {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return forward(
                &st,
                Method::POST,
                uri,
                headers,
                Bytes::from(body.to_string()),
            )
            .await;
        }
        return Json(json!({
            "model": model, "created_at": crate::wire::rfc3339_now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": "load", "done": true,
        }))
        .into_response();
    }
    let stream = body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(api == Api::Ollama);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let job = ChatJob {
        api,
        key: session_key(&uri, &headers, &body),
        model: model.clone(),
        body,
    };
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let st2 = Arc::clone(&st);
    // Turns in flight at once are bounded; the rest wait their turn here.
    let permit = match Arc::clone(&st.turns).acquire_owned().await {
        Ok(p) => p,
        Err(_) => return ApiError::internal("the server is shutting down").response(api),
    };
    tokio::task::spawn_blocking(move || {
        crate::chat::run(&st2, job, tx);
        drop(permit);
    });
    let mut enc = Encoder::new(api, &model, include_usage);
    // Nothing is sent before the first event: an error before the answer starts gets
    // a proper status.
    let first = match rx.recv().await {
        Some(Event::Error { status, message }) => {
            return ApiError::upstream(status, message).response(api)
        }
        Some(e) => e,
        None => return ApiError::internal("the answer ended before it began").response(api),
    };
    if !stream {
        let mut events = vec![first];
        while let Some(e) = rx.recv().await {
            if let Event::Error { status, message } = e {
                return ApiError::upstream(status, message).response(api);
            }
            events.push(e);
        }
        return Json(enc.whole(events)).into_response();
    }
    let body = tokio_stream::once(first)
        .chain(ReceiverStream::new(rx))
        .map(move |e| Ok::<_, std::convert::Infallible>(enc.encode(e)));
    let content_type = match api {
        Api::Ollama => "application/x-ndjson",
        Api::OpenAi => "text/event-stream",
    };
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Events into the client's wire format.
struct Encoder {
    api: Api,
    ollama: OllamaOut,
    openai: OpenAiOut,
    started: bool,
    called_tools: Vec<ToolCall>,
}

impl Encoder {
    fn new(api: Api, model: &str, include_usage: bool) -> Encoder {
        Encoder {
            api,
            ollama: OllamaOut {
                model: model.to_string(),
            },
            openai: OpenAiOut::new(model, include_usage),
            started: false,
            called_tools: Vec::new(),
        }
    }

    fn line(v: Value) -> Bytes {
        let mut s = v.to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn frame(v: &Value, out: &mut String) {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    }

    fn encode(&mut self, e: Event) -> Bytes {
        match self.api {
            Api::Ollama => Encoder::line(match e {
                Event::Text(t) => self.ollama.text(&t),
                Event::Thinking(t) => self.ollama.thinking(&t),
                Event::ToolCalls(c) => self.ollama.tool_calls(&c),
                Event::Done(f) => self.ollama.done(&f, None),
                Event::Error { message, .. } => json!({"error": message}),
            }),
            Api::OpenAi => {
                let mut out = String::new();
                if !self.started && !matches!(e, Event::Error { .. }) {
                    self.started = true;
                    let first = self
                        .openai
                        .chunk(json!({"role": "assistant", "content": ""}), None);
                    Encoder::frame(&first, &mut out);
                }
                match e {
                    Event::Text(t) => {
                        Encoder::frame(&self.openai.chunk(json!({"content": t}), None), &mut out)
                    }
                    Event::Thinking(t) => Encoder::frame(
                        &self.openai.chunk(json!({"reasoning_content": t}), None),
                        &mut out,
                    ),
                    Event::ToolCalls(calls) => {
                        // Each call whole in one piece, `index` on every piece.
                        let pieces: Vec<Value> = calls.iter().map(ToolCall::to_openai).collect();
                        self.called_tools.extend(calls);
                        Encoder::frame(
                            &self.openai.chunk(json!({"tool_calls": pieces}), None),
                            &mut out,
                        );
                    }
                    Event::Done(f) => {
                        let reason = crate::wire::finish_reason(&f, &self.called_tools);
                        Encoder::frame(&self.openai.chunk(json!({}), Some(reason)), &mut out);
                        if self.openai.include_usage {
                            Encoder::frame(&self.openai.usage_chunk(&f), &mut out);
                        }
                        out.push_str("data: [DONE]\n\n");
                    }
                    Event::Error { status, message } => {
                        let e = ApiError::upstream(status, message);
                        Encoder::frame(&e.body(Api::OpenAi), &mut out);
                    }
                }
                Bytes::from(out)
            }
        }
    }

    /// The whole answer as one JSON body (`stream: false`).
    fn whole(&mut self, events: Vec<Event>) -> Value {
        let mut text = String::new();
        let mut thinking = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut finish = Finish::default();
        for e in events {
            match e {
                Event::Text(t) => text.push_str(&t),
                Event::Thinking(t) => thinking.push_str(&t),
                Event::ToolCalls(c) => calls.extend(c),
                Event::Done(f) => finish = f,
                Event::Error { .. } => {}
            }
        }
        match self.api {
            Api::Ollama => {
                let mut message = json!({"role": "assistant", "content": text});
                if !thinking.is_empty() {
                    message["thinking"] = json!(thinking);
                }
                if !calls.is_empty() {
                    message["tool_calls"] = calls.iter().map(ToolCall::to_ollama).collect();
                }
                self.ollama.done(&finish, Some(message))
            }
            Api::OpenAi => self.openai.whole(&text, &calls, &finish),
        }
    }
}

async fn forward_get(st: &Arc<State>, uri: &OriginalUri) -> Response {
    forward(
        st,
        Method::GET,
        uri.0.clone(),
        HeaderMap::new(),
        Bytes::new(),
    )
    .await
}

/// Anything else goes to the upstream unchanged, streamed both ways.
async fn passthrough(st: St, uri: OriginalUri, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (_, path) = strip_session(uri.0.path());
    let api = api_of_path(path);
    let bytes = match axum::body::to_bytes(body, st.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: "the request body is larger than this server accepts (--max-body-mb)"
                    .into(),
                kind: "invalid_request_error",
                code: "invalid_body",
            }
            .response(api)
        }
    };
    forward(&st, parts.method, uri.0, parts.headers, bytes).await
}

/// Request headers passed on to the upstream.
const FORWARDED: &[header::HeaderName] =
    &[header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

async fn forward(
    st: &Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, path) = strip_session(uri.path());
    let api = api_of_path(path);
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let Some(url) = st.upstream.passthrough_url(&path_and_query) else {
        return ApiError::not_found(format!(
            "{path} is not served with the reader upstream: it answers POST /api/chat and \
             /v1/chat/completions (pass --upstream ollama:URL or openai:URL for the rest)"
        ))
        .response(api);
    };
    let mut out_headers: Vec<(String, String)> = FORWARDED
        .iter()
        .filter_map(|h| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    // The upstream's key goes upstream; the client's own credentials only when this
    // server has no token of its own (they are then meant for the upstream).
    if let Some(k) = st.upstream.api_key() {
        out_headers.push(("Authorization".into(), format!("Bearer {k}")));
    } else if st.cfg.token.is_none() {
        if let Some(a) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            out_headers.push(("Authorization".into(), a.to_string()));
        }
    }
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    let st2 = Arc::clone(st);
    tokio::task::spawn_blocking(move || {
        let mut r = st2.upstream.agent().request(method.as_str(), &url);
        for (k, v) in &out_headers {
            r = r.set(k, v);
        }
        let res = if body.is_empty() && (method == Method::GET || method == Method::HEAD) {
            r.call()
        } else {
            r.send_bytes(&body)
        };
        let resp = match res {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => {
                let _ = head_tx.send(Err(e.to_string()));
                return;
            }
        };
        let content_type = resp.header("content-type").map(str::to_string);
        let _ = head_tx.send(Ok((resp.status(), content_type)));
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if chunk_tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = chunk_tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    match head_rx.await {
        Ok(Ok((status, content_type))) => {
            let mut resp = Response::new(Body::from_stream(ReceiverStream::new(chunk_rx)));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp
        }
        Ok(Err(e)) => {
            ApiError::upstream(502, format!("the upstream is unreachable: {e}")).response(api)
        }
        Err(_) => ApiError::internal("the upstream call ended early").response(api),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_prefix_is_stripped() {
        assert_eq!(strip_session("/s/abc/api/chat"), (Some("abc"), "/api/chat"));
        assert_eq!(strip_session("/s/abc"), (Some("abc"), "/"));
        assert_eq!(strip_session("/api/chat"), (None, "/api/chat"));
        assert_eq!(strip_session("/s//x"), (None, "/s//x"));
    }

    #[test]
    fn num_ctx_is_replaced() {
        let p = "stop \"<eot>\"\nnum_ctx 2048";
        let out = with_num_ctx(p, 131072);
        assert!(out.contains("stop"));
        assert!(out.contains("131072"));
        assert!(!out.contains("2048"));
    }
}
