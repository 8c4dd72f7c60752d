//! Fake Ollama and OpenAI-compatible servers on loopback that answer like the `reader`
//! model (only from the messages they are sent) and record every request, so a test can
//! assert exactly what prompt a model received.
//!
//! Each connection carries one request (`Connection: close`); streamed answers use chunked
//! transfer encoding, as the real servers do. Knobs in [`FakeConfig`] make the server
//! refuse a model, require a key, cut a stream, split a UTF-8 character across two TCP
//! writes, or report a given context length.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use uctx::backend::{reader, BackendOptions, Message, Role};

/// How a fake server behaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Models the server has; a request for any other is refused (404). Empty: any model.
    pub models: Vec<String>,
    /// When set, requests without `Authorization: Bearer KEY` get 401 (OpenAI only).
    pub api_key: Option<String>,
    /// Ollama: `model_info["llama.context_length"]`; OpenAI: `meta.n_ctx_train` in `/v1/models`.
    pub context_length: Option<usize>,
    /// Ollama: a `num_ctx` line in `/api/show`'s `parameters`.
    pub num_ctx_parameter: Option<usize>,
    /// OpenAI: `/props` answers `default_generation_settings.n_ctx` (else `/props` is 404).
    pub props_n_ctx: Option<usize>,
    /// Close the connection after this many text pieces, before the final message.
    pub cut_after: Option<usize>,
    /// After this many text pieces, send an error in the stream instead of more text.
    pub stream_error: Option<(usize, String)>,
    /// Write each piece that holds a multi-byte character in two TCP writes split inside it.
    pub split_utf8: bool,
    /// Answer this text instead of the reader's answer.
    pub reply: Option<String>,
    /// Pause between streamed pieces.
    pub delay: Duration,
    /// Stream these bytes as the whole body instead of a well-formed answer.
    pub raw_stream: Option<String>,
    /// Answer with one JSON completion even when a stream is asked for (OpenAI only).
    pub ignore_stream: bool,
    /// The server's context in tokens: a longer prompt is refused with HTTP 400
    /// `exceed_context_size_error` (OpenAI, as llama-server does) or cut to its latest
    /// messages without a word, the count reporting what was kept (Ollama).
    pub n_ctx: Option<usize>,
    /// The server's tokenizer counts this many tokens per token of the reader's count.
    pub token_scale: f64,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            models: vec!["m".to_string()],
            api_key: None,
            context_length: Some(4096),
            num_ctx_parameter: None,
            props_n_ctx: None,
            cut_after: None,
            stream_error: None,
            split_utf8: false,
            reply: None,
            delay: Duration::ZERO,
            raw_stream: None,
            ignore_stream: false,
            n_ctx: None,
            token_scale: 1.0,
        }
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty; a string when it was not JSON).
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Ollama,
    OpenAi,
}

/// A running fake server; it stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    flavor: Flavor,
    log: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// A fake Ollama: `/api/chat` (NDJSON stream), `/api/show`, `/api/tags`.
    pub fn ollama(cfg: FakeConfig) -> FakeServer {
        FakeServer::start(Flavor::Ollama, cfg)
    }

    /// A fake OpenAI-compatible server: `/v1/chat/completions` (SSE), `/v1/models`, `/props`.
    pub fn openai(cfg: FakeConfig) -> FakeServer {
        FakeServer::start(Flavor::OpenAi, cfg)
    }

    fn start(flavor: Flavor, cfg: FakeConfig) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = Arc::new(cfg);
        let accept = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (log, cfg) = (log.clone(), cfg.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, flavor, &cfg, &log);
                    });
                }
            })
        };
        FakeServer {
            addr,
            flavor,
            log,
            stop,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The base URL a client is configured with: `http://127.0.0.1:PORT` for Ollama,
    /// `http://127.0.0.1:PORT/v1` for OpenAI.
    pub fn url(&self) -> String {
        match self.flavor {
            Flavor::Ollama => format!("http://{}", self.addr),
            Flavor::OpenAi => format!("http://{}/v1", self.addr),
        }
    }

    /// Backend options pointing at this server.
    pub fn options(&self) -> BackendOptions {
        let mut opts = BackendOptions {
            timeout: Some(Duration::from_secs(10)),
            ..BackendOptions::default()
        };
        match self.flavor {
            Flavor::Ollama => opts.ollama_host = Some(self.url()),
            Flavor::OpenAi => opts.openai_base_url = Some(self.url()),
        }
        opts
    }

    /// The bodies of the chat requests received, in order (`/api/chat`,
    /// `/v1/chat/completions`): what the model was sent.
    pub fn requests(&self) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|r| r.path.ends_with("/chat") || r.path.ends_with("/chat/completions"))
            .map(|r| r.body)
            .collect()
    }

    /// The messages of each chat request.
    pub fn prompts(&self) -> Vec<Vec<Message>> {
        self.requests()
            .into_iter()
            .map(|b| serde_json::from_value(b["messages"].clone()).unwrap_or_default())
            .collect()
    }

    /// Every request received, chat or not.
    pub fn log(&self) -> Vec<Recorded> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    flavor: Flavor,
    cfg: &FakeConfig,
    log: &Mutex<Vec<Recorded>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut raw = vec![0; len];
    reader.read_exact(&mut raw)?;
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
    };
    let req = Recorded {
        method,
        path,
        headers,
        body,
    };
    if let Ok(mut l) = log.lock() {
        l.push(req.clone());
    }
    let mut out = conn;
    match flavor {
        Flavor::Ollama => ollama(&mut out, cfg, &req),
        Flavor::OpenAi => openai(&mut out, cfg, &req),
    }
}

/// Whether the server has `model`; like Ollama, an untagged name means `:latest`.
fn has_model(cfg: &FakeConfig, model: &str) -> bool {
    let latest = format!("{model}:latest");
    cfg.models.is_empty() || cfg.models.iter().any(|m| m == model || *m == latest)
}

/// The request's messages; a tool's result (a role the engine's messages do not have)
/// is read as a user message, and a missing content as empty, as both servers take them.
fn messages(body: &Value) -> Option<Vec<Message>> {
    body.get("messages")?
        .as_array()?
        .iter()
        .map(|m| {
            let role = match m.get("role")?.as_str()? {
                "tool" => Role::User,
                r => serde_json::from_value(json!(r)).ok()?,
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(c) => c.as_str()?.to_string(),
            };
            Some(Message::new(role, content))
        })
        .collect()
}

/// The prompt's size by this server's tokenizer.
fn count(cfg: &FakeConfig, msgs: &[Message]) -> u64 {
    (reader::prompt_tokens(msgs) as f64 * cfg.token_scale).ceil() as u64
}

/// What Ollama does past `num_ctx`: keeps the system message and the latest messages
/// that fit, and says nothing.
fn truncate(cfg: &FakeConfig, msgs: Vec<Message>) -> Vec<Message> {
    let Some(n_ctx) = cfg.n_ctx else { return msgs };
    let mut msgs = msgs;
    while count(cfg, &msgs) > n_ctx as u64 && msgs.len() > 2 {
        msgs.remove(1);
    }
    msgs
}

/// The answer's pieces, word by word, as a model streams them.
fn pieces(cfg: &FakeConfig, msgs: &[Message]) -> Vec<String> {
    let text = cfg.reply.clone().unwrap_or_else(|| reader::answer(msgs));
    text.split_inclusive([' ', '\n'])
        .map(str::to_string)
        .collect()
}

fn ollama(out: &mut TcpStream, cfg: &FakeConfig, req: &Recorded) -> std::io::Result<()> {
    let model = req
        .body
        .get("model")
        .or_else(|| req.body.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/tags") => {
            let models: Vec<Value> = cfg
                .models
                .iter()
                .map(|m| json!({"name": m, "model": m, "size": 1}))
                .collect();
            respond(out, 200, &json!({ "models": models }))
        }
        ("POST", "/api/show") => {
            if !has_model(cfg, model) {
                return respond(
                    out,
                    404,
                    &json!({"error": format!("model '{model}' not found")}),
                );
            }
            let mut show = json!({"model_info": {"general.architecture": "llama"}});
            if let Some(n) = cfg.context_length {
                show["model_info"]["llama.context_length"] = json!(n);
            }
            if let Some(n) = cfg.num_ctx_parameter {
                show["parameters"] = json!(format!("stop \"<|end|>\"\nnum_ctx {n}"));
            }
            respond(out, 200, &show)
        }
        ("POST", "/api/chat") => {
            if !has_model(cfg, model) {
                let error = format!("model \"{model}\" not found, try pulling it first");
                return respond(out, 404, &json!({ "error": error }));
            }
            let Some(msgs) = messages(&req.body) else {
                return respond(out, 400, &json!({"error": "invalid messages"}));
            };
            let msgs = truncate(cfg, msgs);
            let pieces = pieces(cfg, &msgs);
            let prompt_eval_count = count(cfg, &msgs);
            let eval_count = reader::approx_tokens(&pieces.concat());
            let mut s = Stream::start(out, "application/x-ndjson", cfg)?;
            if let Some(raw) = &cfg.raw_stream {
                s.send(raw)?;
                return s.finish();
            }
            for (i, p) in pieces.iter().enumerate() {
                if s.interrupted(i, |e| json!({ "error": e }).to_string() + "\n")? {
                    return Ok(());
                }
                let line = json!({
                    "model": model,
                    "created_at": "2024-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": p},
                    "done": false,
                });
                s.send(&(line.to_string() + "\n"))?;
            }
            if s.interrupted(pieces.len(), |e| json!({ "error": e }).to_string() + "\n")? {
                return Ok(());
            }
            let done = json!({
                "model": model,
                "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": ""},
                "done": true,
                "done_reason": "stop",
                "prompt_eval_count": prompt_eval_count,
                "eval_count": eval_count,
            });
            s.send(&(done.to_string() + "\n"))?;
            s.finish()
        }
        _ => respond_text(out, 404, "404 page not found"),
    }
}

fn openai(out: &mut TcpStream, cfg: &FakeConfig, req: &Recorded) -> std::io::Result<()> {
    if let Some(key) = &cfg.api_key {
        if req.header("authorization") != Some(format!("Bearer {key}").as_str()) {
            let error = json!({"error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }});
            return respond(out, 401, &error);
        }
    }
    let model = req
        .body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => {
            let data: Vec<Value> = cfg
                .models
                .iter()
                .map(|m| {
                    let mut e = json!({"id": m, "object": "model", "owned_by": "fake"});
                    if let Some(n) = cfg.context_length {
                        e["meta"] = json!({ "n_ctx_train": n });
                    }
                    e
                })
                .collect();
            respond(out, 200, &json!({"object": "list", "data": data}))
        }
        ("GET", "/props") => match cfg.props_n_ctx {
            Some(n) => respond(
                out,
                200,
                &json!({"default_generation_settings": {"n_ctx": n}}),
            ),
            None => respond_text(out, 404, "Not Found"),
        },
        ("POST", "/v1/chat/completions") => {
            if !has_model(cfg, model) {
                let error = json!({"error": {
                    "message": format!("The model `{model}` does not exist"),
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }});
                return respond(out, 404, &error);
            }
            let Some(msgs) = messages(&req.body) else {
                return respond(out, 400, &json!({"error": {"message": "invalid messages"}}));
            };
            let n_prompt = count(cfg, &msgs);
            if let Some(n_ctx) = cfg.n_ctx.filter(|&n| n_prompt > n as u64) {
                let error = json!({"error": {
                    "code": 400,
                    "message": format!("request ({n_prompt} tokens) exceeds the available \
                                        context size ({n_ctx} tokens), try increasing it"),
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": n_prompt,
                    "n_ctx": n_ctx,
                }});
                return respond(out, 400, &error);
            }
            let pieces = pieces(cfg, &msgs);
            let usage = json!({
                "prompt_tokens": n_prompt,
                "completion_tokens": reader::approx_tokens(&pieces.concat()),
            });
            if cfg.ignore_stream || req.body.get("stream").and_then(Value::as_bool) != Some(true) {
                let whole = json!({
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": pieces.concat()}}],
                    "usage": usage,
                });
                return respond(out, 200, &whole);
            }
            let event = |v: Value| format!("data: {v}\n\n");
            let error_event =
                |e: &str| event(json!({"error": {"message": e, "type": "server_error"}}));
            let mut s = Stream::start(out, "text/event-stream", cfg)?;
            if let Some(raw) = &cfg.raw_stream {
                s.send(raw)?;
                return s.finish();
            }
            for (i, p) in pieces.iter().enumerate() {
                if s.interrupted(i, error_event)? {
                    return Ok(());
                }
                s.send(&event(json!({
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}],
                })))?;
            }
            if s.interrupted(pieces.len(), error_event)? {
                return Ok(());
            }
            s.send(&event(json!({
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            })))?;
            if req.body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
                s.send(&event(
                    json!({"id": "chatcmpl-1", "choices": [], "usage": usage}),
                ))?;
            }
            s.send("data: [DONE]\n\n")?;
            s.finish()
        }
        _ => respond_text(out, 404, "Not Found"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    }
}

fn respond(out: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    out.flush()
}

fn respond_text(out: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    out.flush()
}

/// A chunked streaming response.
struct Stream<'a> {
    out: &'a mut TcpStream,
    cfg: &'a FakeConfig,
}

impl<'a> Stream<'a> {
    fn start(
        out: &'a mut TcpStream,
        content_type: &str,
        cfg: &'a FakeConfig,
    ) -> std::io::Result<Self> {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        )?;
        out.flush()?;
        Ok(Stream { out, cfg })
    }

    /// Whether the stream stops before piece `i`: cut (the connection just closes) or an
    /// error event is sent.
    fn interrupted(&mut self, i: usize, error: impl Fn(&str) -> String) -> std::io::Result<bool> {
        if self.cfg.cut_after == Some(i) {
            self.out.flush()?;
            self.out.shutdown(std::net::Shutdown::Both)?;
            return Ok(true);
        }
        if let Some((at, message)) = &self.cfg.stream_error {
            if *at == i {
                self.send(&error(message))?;
                self.finish()?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One chunk; with `split_utf8`, written in two TCP writes cut inside a character.
    fn send(&mut self, data: &str) -> std::io::Result<()> {
        if !self.cfg.delay.is_zero() {
            std::thread::sleep(self.cfg.delay);
        }
        let bytes = data.as_bytes();
        write!(self.out, "{:x}\r\n", bytes.len())?;
        let cut = (1..bytes.len()).find(|&i| !data.is_char_boundary(i));
        match cut {
            Some(cut) if self.cfg.split_utf8 => {
                self.out.write_all(&bytes[..cut])?;
                self.out.flush()?;
                std::thread::sleep(Duration::from_millis(15));
                self.out.write_all(&bytes[cut..])?;
            }
            _ => self.out.write_all(bytes)?,
        }
        self.out.write_all(b"\r\n")?;
        self.out.flush()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}
