//! Ollama: streaming `/api/chat` (NDJSON), `/api/show` for the context length,
//! `/api/tags` for health. `num_ctx` is always sent, so the server never cuts a prompt
//! to its own default window without saying so.

use serde_json::{json, Value};

use super::http::{self, Failure, LineReader};
use super::{
    Backend, BackendError, BackendOptions, ChatRequest, ChatResponse, Health, DEFAULT_OLLAMA_HOST,
};

const FIX_START: &str = "start it with `ollama serve`, or set OLLAMA_HOST";

/// A model served by Ollama.
pub struct OllamaBackend {
    model: String,
    base: String,
    agent: ureq::Agent,
    context_override: Option<usize>,
}

impl OllamaBackend {
    /// `model` as Ollama names it (`qwen2.5:7b`); the host comes from `opts.ollama_host`,
    /// else [`DEFAULT_OLLAMA_HOST`].
    pub fn new(model: &str, opts: &BackendOptions) -> OllamaBackend {
        OllamaBackend {
            model: model.to_string(),
            base: normalize_host(opts.ollama_host.as_deref().unwrap_or(DEFAULT_OLLAMA_HOST)),
            agent: http::agent(opts),
            context_override: opts.context_override,
        }
    }

    /// The server's base URL (`http://127.0.0.1:11434`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn fail(&self, f: Failure, path: &str) -> BackendError {
        match f {
            Failure::Transport { detail } => BackendError::Unreachable {
                what: "Ollama".to_string(),
                url: self.base.clone(),
                detail,
                fix: FIX_START.to_string(),
            },
            Failure::Status { status, body } => {
                let message = http::error_message(&body);
                if status == 404 && (path != "/api/chat" || mentions_missing_model(&message)) {
                    if path == "/api/tags" {
                        return BackendError::Endpoint {
                            url: self.base.clone(),
                            path: path.to_string(),
                            status,
                            fix: "this server does not speak Ollama's API; check OLLAMA_HOST"
                                .to_string(),
                        };
                    }
                    return self.missing();
                }
                if mentions_missing_model(&message) {
                    return self.missing();
                }
                match status {
                    401 | 403 => BackendError::Auth {
                        url: self.base.clone(),
                        status,
                        fix: "check the credentials of the proxy in front of OLLAMA_HOST"
                            .to_string(),
                    },
                    404 => BackendError::Endpoint {
                        url: self.base.clone(),
                        path: path.to_string(),
                        status,
                        fix: "this server does not speak Ollama's API; check OLLAMA_HOST"
                            .to_string(),
                    },
                    _ => BackendError::Http {
                        url: self.url(path),
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
            fix: format!("run `ollama pull {}`", self.model),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<ureq::Response, BackendError> {
        self.agent
            .post(&self.url(path))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .map_err(|e| self.fail(e.into(), path))
    }

    fn get(&self, path: &str) -> Result<ureq::Response, BackendError> {
        self.agent
            .get(&self.url(path))
            .call()
            .map_err(|e| self.fail(e.into(), path))
    }

    /// The names of the models the server has pulled.
    pub fn list_models(&self) -> Result<Vec<String>, BackendError> {
        let v = http::read_json(self.get("/api/tags")?, &self.url("/api/tags"))?;
        let models = v
            .get("models")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.get("name").or_else(|| m.get("model")))
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(models)
    }
}

/// `OLLAMA_HOST` as a base URL: `host:port`, `host`, or a URL; the port defaults to 11434.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    let (scheme, rest) = match host.split_once("://") {
        Some((s, r)) => (s.to_string(), r.to_string()),
        None => ("http".to_string(), host.to_string()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest, String::new()),
    };
    let authority = if authority.is_empty() || authority.starts_with(':') {
        format!("127.0.0.1{authority}")
    } else {
        authority
    };
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority
    } else if scheme == "https" {
        format!("{authority}:443")
    } else {
        format!("{authority}:11434")
    };
    format!("{scheme}://{authority}{path}")
}

fn mentions_missing_model(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("model") && (m.contains("not found") || m.contains("pull"))
}

/// `num_ctx` from the `parameters` text of `/api/show` (`num_ctx    8192` lines).
fn num_ctx_parameter(parameters: &str) -> Option<usize> {
    parameters.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "num_ctx")
            .then(|| words.next()?.trim_matches('"').parse().ok())
            .flatten()
    })
}

/// The context length from `/api/show`: the model's `num_ctx` parameter when its
/// Modelfile sets one, else `model_info["<arch>.context_length"]`.
pub fn context_length_from_show(show: &Value) -> Option<usize> {
    if let Some(n) = show
        .get("parameters")
        .and_then(Value::as_str)
        .and_then(num_ctx_parameter)
    {
        return Some(n);
    }
    let info = show.get("model_info")?.as_object()?;
    let arch_key = info
        .get("general.architecture")
        .and_then(Value::as_str)
        .map(|a| format!("{a}.context_length"));
    let value = arch_key.and_then(|k| info.get(&k)).or_else(|| {
        info.iter()
            .find(|(k, _)| k.ends_with(".context_length"))
            .map(|(_, v)| v)
    })?;
    value.as_u64().and_then(|n| usize::try_from(n).ok())
}

impl Backend for OllamaBackend {
    fn spec(&self) -> String {
        format!("ollama/{}", self.model)
    }

    fn context_length(&self) -> Result<usize, BackendError> {
        let show = http::read_json(
            self.post(
                "/api/show",
                &json!({ "model": self.model, "name": self.model }),
            )?,
            &self.url("/api/show"),
        )?;
        context_length_from_show(&show)
            .filter(|&n| n > 0)
            .or(self.context_override)
            .ok_or_else(|| BackendError::NoContextLength {
                url: self.base.clone(),
                model: self.model.clone(),
                fix: "pass --ctx N with the window to use".to_string(),
            })
    }

    fn health(&self) -> Result<Health, BackendError> {
        let models = self.list_models()?;
        let wanted = with_tag(&self.model);
        let model_present = models.iter().any(|m| with_tag(m) == wanted);
        let context_length = if model_present {
            self.context_length().ok()
        } else {
            None
        };
        Ok(Health {
            endpoint: self.base.clone(),
            models,
            model_present,
            context_length,
        })
    }

    fn chat(
        &self,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError> {
        let mut options = serde_json::Map::new();
        if req.num_ctx > 0 {
            options.insert("num_ctx".into(), json!(req.num_ctx));
        }
        if req.max_tokens > 0 {
            options.insert("num_predict".into(), json!(req.max_tokens));
        }
        if let Some(t) = req.temperature {
            options.insert("temperature".into(), json!(t));
        }
        let body = json!({
            "model": self.model,
            "messages": req.messages,
            "stream": true,
            "options": options,
        });
        let started = std::time::Instant::now();
        let resp = self.post("/api/chat", &body)?;
        let url = self.url("/api/chat");
        let broken = |detail: String| BackendError::StreamBroken {
            url: url.clone(),
            detail,
        };
        let mut lines = LineReader::new(resp.into_reader());
        let mut out = ChatResponse::default();
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    return Err(broken(
                        "the stream ended before Ollama's final `done` message".to_string(),
                    ))
                }
                Err(e) => return Err(broken(e.to_string())),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line).map_err(|e| BackendError::Protocol {
                url: url.clone(),
                detail: format!("a streamed line is not JSON: {e}"),
            })?;
            if let Some(message) = http::json_error(&v) {
                if mentions_missing_model(&message) {
                    return Err(self.missing());
                }
                return Err(BackendError::Server {
                    url: url.clone(),
                    message,
                    fix:
                        "check Ollama's log (`journalctl -u ollama` or the `ollama serve` terminal)"
                            .to_string(),
                });
            }
            if let Some(text) = v.pointer("/message/content").and_then(Value::as_str) {
                if !text.is_empty() {
                    out.ttft_ms
                        .get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                    on_text(text);
                    out.text.push_str(text);
                }
            }
            if req.cancelled() {
                // Dropping the response closes the connection; Ollama stops generating.
                out.done_reason = Some(super::INTERRUPTED.to_string());
                return Ok(out);
            }
            if v.get("done").and_then(Value::as_bool) == Some(true) {
                // Ollama counts the whole prompt here, cached or not; its evaluation time
                // (ns) is what shows how much it re-evaluated.
                out.prompt_eval_ms = v
                    .get("prompt_eval_duration")
                    .and_then(Value::as_f64)
                    .map(|ns| ns / 1e6);
                out.prompt_tokens = v.get("prompt_eval_count").and_then(Value::as_u64);
                // Newer servers say how much of the prompt came from the cache.
                out.cached_tokens = v.get("prompt_eval_cached_count").and_then(Value::as_u64);
                out.completion_tokens = v.get("eval_count").and_then(Value::as_u64);
                out.done_reason = v
                    .get("done_reason")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                return Ok(out);
            }
        }
    }
}

/// A model name with Ollama's implicit `:latest` tag made explicit.
fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_become_base_urls() {
        assert_eq!(normalize_host("127.0.0.1:11434"), "http://127.0.0.1:11434");
        assert_eq!(normalize_host("gpu-box"), "http://gpu-box:11434");
        assert_eq!(normalize_host("http://h:1234/"), "http://h:1234");
        assert_eq!(normalize_host("https://h"), "https://h:443");
        assert_eq!(normalize_host("[::1]"), "http://[::1]:11434");
        assert_eq!(normalize_host("[::1]:99"), "http://[::1]:99");
        assert_eq!(normalize_host(":11500"), "http://127.0.0.1:11500");
    }

    #[test]
    fn context_length_prefers_the_num_ctx_parameter() {
        let show = json!({
            "parameters": "stop \"<|im_end|>\"\nnum_ctx                        8192",
            "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768}
        });
        assert_eq!(context_length_from_show(&show), Some(8192));
        let show = json!({
            "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768}
        });
        assert_eq!(context_length_from_show(&show), Some(32768));
        assert_eq!(context_length_from_show(&json!({})), None);
    }

    #[test]
    fn untagged_names_mean_latest() {
        assert_eq!(with_tag("llama3"), "llama3:latest");
        assert_eq!(with_tag("qwen2.5:7b"), "qwen2.5:7b");
        assert_eq!(with_tag("host:5000/ns/m"), "host:5000/ns/m:latest");
    }
}
