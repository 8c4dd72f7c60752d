//! Model servers behind one small trait. Only this module speaks HTTP.

use std::time::Duration;

/// A chat role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One call to the model.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// The context size the server must use for this call (Ollama's `num_ctx`).
    pub num_ctx: usize,
    /// Upper bound on generated tokens (the room reserved for the answer).
    pub max_tokens: usize,
    pub temperature: Option<f32>,
    /// Set (by a Ctrl-C handler, say) to stop the answer where it is: the backend
    /// stops reading, closes the stream and returns what came so far, with the done
    /// reason [`INTERRUPTED`].
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// The done reason of an answer stopped by [`ChatRequest::cancel`].
pub const INTERRUPTED: &str = "interrupted";

impl ChatRequest {
    /// Whether the caller asked to stop the answer.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What the model said, with the server's own token accounting when it reports one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    /// Ollama `prompt_eval_count`, OpenAI `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// Ollama `eval_count`, OpenAI `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// Why generation stopped, as the server said it (`stop`, `length`, ...).
    pub done_reason: Option<String>,
    /// Prompt tokens the server served from its prefix cache instead of evaluating them
    /// (llama.cpp `timings.cache_n`, OpenAI `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: Option<u64>,
    /// Prompt tokens the server evaluated for this call (llama.cpp `timings.prompt_n`).
    pub evaluated_tokens: Option<u64>,
    /// The server's own prompt evaluation time in ms (llama.cpp `timings.prompt_ms`,
    /// Ollama `prompt_eval_duration`).
    pub prompt_eval_ms: Option<f64>,
    /// Time from sending the request to the first piece of the answer, in ms, measured
    /// by the client (what a user waits before text appears).
    pub ttft_ms: Option<f64>,
}

impl ChatResponse {
    /// Prompt tokens served from the server's cache, as a count, when the server
    /// reports either the cached or the evaluated part of the prompt.
    pub fn cache_hits(&self) -> Option<u64> {
        self.cached_tokens.or_else(|| {
            let (p, e) = (self.prompt_tokens?, self.evaluated_tokens?);
            Some(p.saturating_sub(e))
        })
    }
}

/// What `uctx doctor` learns about a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// Where the server is (base URL), or "built-in".
    pub endpoint: String,
    /// Models the server offers (empty when it cannot list them).
    pub models: Vec<String>,
    /// Whether the requested model is among them (true when the server cannot list).
    pub model_present: bool,
    /// The context length the server reports for the model, if any.
    pub context_length: Option<usize>,
}

/// Errors a user can meet when talking to a model server; each says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach {what} at {url} ({detail}) — {fix}")]
    Unreachable {
        what: String,
        url: String,
        detail: String,
        fix: String,
    },
    #[error("model {model:?} is not available on {url} — {fix}")]
    ModelMissing {
        model: String,
        url: String,
        fix: String,
    },
    #[error("{url} refused the API key (HTTP {status}) — {fix}")]
    Auth {
        url: String,
        status: u16,
        fix: String,
    },
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "the stream from {url} ended early: {detail} — check the server's log; retry the turn"
    )]
    StreamBroken { url: String, detail: String },
    #[error("{url} sent something uctx cannot read: {detail}")]
    Protocol { url: String, detail: String },
    #[error("unknown model spec {spec:?} — use `ollama/MODEL`, `openai/MODEL` or `reader`")]
    BadSpec { spec: String },
    #[error("{url} reported an error: {message} — {fix}")]
    Server {
        url: String,
        message: String,
        fix: String,
    },
    #[error("{url} answered HTTP {status} for {path} — {fix}")]
    Endpoint {
        url: String,
        path: String,
        status: u16,
        fix: String,
    },
    #[error(
        "{url} refused the prompt as larger than its context ({detail}) — start the server with \
         a larger context (llama-server -c N, Ollama num_ctx) or pass a smaller --ctx"
    )]
    ContextExceeded {
        url: String,
        detail: String,
        /// The prompt size the server counted, when it says.
        prompt_tokens: Option<u64>,
        /// The server's context size, when it says.
        window: Option<u64>,
    },
    #[error("{url} does not report the context length of model {model:?} — {fix}")]
    NoContextLength {
        url: String,
        model: String,
        fix: String,
    },
}

/// A model server. The rest of the engine never knows which one it talks to.
pub trait Backend: Send + Sync {
    /// The model spec this backend was made from (`ollama/qwen2.5`, `reader`, ...).
    fn spec(&self) -> String;

    /// The model's context length in tokens, as the server reports it.
    fn context_length(&self) -> Result<usize, BackendError>;

    /// Reachability and model presence, for `uctx doctor`.
    fn health(&self) -> Result<Health, BackendError>;

    /// The exact prompt size of `messages` by the server's own chat template and
    /// tokenizer, when the server can say (llama.cpp's `/apply-template` and
    /// `/tokenize`); `None` when it cannot, and the caller estimates.
    fn count_prompt(&self, _messages: &[Message]) -> Option<usize> {
        None
    }

    /// Run one chat turn, streaming: `on_text` receives each piece of text as it arrives.
    fn chat(
        &self,
        req: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatResponse, BackendError>;
}

/// How to reach servers, from flags and the environment.
#[derive(Clone, Default)]
pub struct BackendOptions {
    /// Ollama host (`OLLAMA_HOST`), e.g. `127.0.0.1:11434` or `http://host:port`.
    pub ollama_host: Option<String>,
    /// OpenAI-compatible base URL (`OPENAI_BASE_URL`), e.g. `http://127.0.0.1:8080/v1`.
    pub openai_base_url: Option<String>,
    /// API key (`OPENAI_API_KEY`).
    pub openai_api_key: Option<String>,
    /// Context length to assume when a server does not report one (and for `reader`).
    pub context_override: Option<usize>,
    /// Network timeout for connecting and between streamed chunks.
    pub timeout: Option<Duration>,
    /// The smallest run of tokens, in tokens, that llama.cpp's server may take from its
    /// cache at a new position by shifting it (its `n_cache_reuse`), so dropping the
    /// oldest turns does not re-evaluate the turns kept after them
    /// (default [`DEFAULT_CACHE_REUSE`]; 0 turns it off). Sent only
    /// to a server that has shown it is llama.cpp's.
    pub cache_reuse: Option<usize>,
}

/// The default of [`BackendOptions::cache_reuse`]: long enough that a chunk is never a
/// chat template's few tokens matched by chance, short enough to take one kept turn.
pub const DEFAULT_CACHE_REUSE: usize = 64;

mod http;
pub mod ollama;
pub mod openai;
pub mod reader;

pub use http::LineReader;

/// Where Ollama listens when `OLLAMA_HOST` is not set.
pub const DEFAULT_OLLAMA_HOST: &str = "127.0.0.1:11434";
/// Where an OpenAI-compatible server is assumed when `OPENAI_BASE_URL` is not set
/// (llama.cpp's `llama-server` listens here by default).
pub const DEFAULT_OPENAI_BASE_URL: &str = "http://127.0.0.1:8080/v1";

/// The key is never printed.
impl std::fmt::Debug for BackendOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendOptions")
            .field("ollama_host", &self.ollama_host)
            .field("openai_base_url", &self.openai_base_url)
            .field(
                "openai_api_key",
                &self.openai_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("context_override", &self.context_override)
            .field("timeout", &self.timeout)
            .field("cache_reuse", &self.cache_reuse)
            .finish()
    }
}

impl BackendOptions {
    /// Options read from the environment only (`OLLAMA_HOST`, `OPENAI_BASE_URL`,
    /// `OPENAI_API_KEY`).
    pub fn from_env() -> BackendOptions {
        BackendOptions::default().with_env()
    }

    /// Fill every field that is still unset from the environment; flags win over the
    /// environment. Empty variables count as unset.
    pub fn with_env(self) -> BackendOptions {
        self.with_env_from(|name| std::env::var(name).ok())
    }

    /// As [`BackendOptions::with_env`], reading variables through `get` (testable without
    /// touching the process environment).
    pub fn with_env_from(mut self, get: impl Fn(&str) -> Option<String>) -> BackendOptions {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if self.ollama_host.is_none() {
            self.ollama_host = var("OLLAMA_HOST");
        }
        if self.openai_base_url.is_none() {
            self.openai_base_url = var("OPENAI_BASE_URL");
        }
        if self.openai_api_key.is_none() {
            self.openai_api_key = var("OPENAI_API_KEY");
        }
        self
    }
}

/// Make a backend from a model spec: `ollama/MODEL` (e.g. `ollama/qwen2.5:7b`),
/// `openai/MODEL`, or `reader`. Nothing is contacted here; the first call does that.
pub fn from_spec(spec: &str, opts: &BackendOptions) -> Result<Box<dyn Backend>, BackendError> {
    let bad = || BackendError::BadSpec {
        spec: spec.to_string(),
    };
    let spec = spec.trim();
    if spec == "reader" {
        return Ok(Box::new(reader::ReaderBackend::new(opts)));
    }
    let (kind, model) = spec.split_once('/').ok_or_else(bad)?;
    let model = model.trim();
    if model.is_empty() {
        return Err(bad());
    }
    match kind {
        "ollama" => Ok(Box::new(ollama::OllamaBackend::new(model, opts))),
        "openai" => Ok(Box::new(openai::OpenAiBackend::new(model, opts))),
        _ => Err(bad()),
    }
}
