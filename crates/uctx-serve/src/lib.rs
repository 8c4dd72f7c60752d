//! `uctx serve`: a server that speaks the Ollama and OpenAI APIs in front of a model
//! server, so any existing client gets paged memory by changing its base URL.
//!
//! Each chat request is matched to a conversation ([`convo`]); the messages the
//! conversation does not hold yet are played into the pool through the conversation's
//! [`uctx::session::Session`], which then assembles the window (the client's system
//! prompt first, byte for byte; what does not fit replaced by paged memory) and calls the
//! upstream through [`upstream::ProxyBackend`], streaming the answer back in the client's
//! own wire format ([`wire`]). Every other route is passed through unchanged.
//!
//! One pool, one writer: the process holds the pool's lock and every conversation
//! writes through the same [`uctx::memory::Memory`]. On a team pool several servers
//! (behind one load balancer) share the pool and the conversations' [`Journal`] in
//! its database: each reads what the others added before it plans a request.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use sha2::{Digest as _, Sha256};
use uctx::memory::Memory;

pub mod bench;
pub mod chat;
pub mod convo;
pub mod mcp;
mod routes;
pub mod upstream;
pub mod wire;

pub use upstream::UpstreamSpec;

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:11435";
/// The Ollama API version reported when the upstream is not Ollama itself.
pub const OLLAMA_API_VERSION: &str = "0.9.0";
/// The journal beside the pool where the server keeps its conversations (to match
/// resent histories after a restart): one JSON object a line, appended to as they grow.
pub const SESSIONS_FILE: &str = "serve-sessions.jsonl";
/// The conversations' figures, rewritten after every turn, for `uctx status`.
pub const STATUS_FILE: &str = "serve-status.json";

/// How the server runs.
#[derive(Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub upstream: UpstreamSpec,
    /// The upstream's API key (OpenAI-compatible servers); never logged or echoed.
    pub upstream_api_key: Option<String>,
    /// Clients must send `Authorization: Bearer TOKEN`; required off loopback.
    pub token: Option<String>,
    /// The window served, in tokens (else what the upstream reports, capped).
    pub ctx: Option<usize>,
    /// Tokens reserved for each answer (else a quarter of the window, at most 1024).
    pub answer_tokens: Option<usize>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Sessions kept open at once; the least recently used beyond it are closed (they
    /// resume from the pool).
    pub max_sessions: usize,
    /// The context length advertised to clients in `/api/show` (what a client may send:
    /// uctx pages what does not fit).
    pub advertised_context: usize,
    /// Namespaces of documents every conversation also searches (read only).
    pub docs: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            upstream: UpstreamSpec::Reader,
            upstream_api_key: None,
            token: None,
            ctx: None,
            answer_tokens: None,
            max_body_bytes: 32 << 20,
            max_sessions: 64,
            advertised_context: 131_072,
            docs: vec![uctx::session::DOCS_NAMESPACE.to_string()],
        }
    }
}

/// Secrets are never printed.
impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field(
                "upstream_api_key",
                &self.upstream_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ctx", &self.ctx)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Errors that keep the server from starting; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without a token: anyone who can reach it could read \
         the pool — pass --token TOKEN (or set UCTX_TOKEN), or listen on 127.0.0.1"
    )]
    NoToken { addr: SocketAddr },
    #[error("the token is empty — pass a non-empty --token (or UCTX_TOKEN)")]
    EmptyToken,
    #[error(
        "cannot listen on {addr}: {source} — is another server on that port? pass --listen ADDR"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the pool is read-only; uctx serve must be the pool's writer")]
    ReadOnly,
    #[error(
        "uctx serve keeps its conversations beside a pool directory, and {0} has none — \
         serve from a directory pool (--pool DIR), or start it with `uctx serve --pool URL`, \
         which keeps them in the team pool's database"
    )]
    TeamPool(String),
    #[error("cannot read the conversations' journal: {0}")]
    Journal(String),
}

/// Where the server keeps its conversations ([`convo::Index`]'s changes, one JSON
/// object a line), to match resent histories after a restart, and, when several
/// servers share it, a history that another server began.
pub trait Journal: Send + Sync {
    /// The lines after `cursor` (0: from the start) and the cursor after them.
    fn read_after(&self, cursor: u64) -> Result<(Vec<serde_json::Value>, u64), String>;
    /// Append lines.
    fn append(&self, lines: &[serde_json::Value]) -> Result<(), String>;
    /// Replace the whole journal by `lines` (the index as it was read), where that is
    /// this server's to do.
    fn compact(&self, _lines: &[serde_json::Value]) {}
    /// For a journal other servers write too: a number none of them holds, which
    /// makes this server's conversation ids and namespaces its own.
    fn shared_instance(&self) -> Result<Option<u64>, String> {
        Ok(None)
    }
    /// The directory the status file for `uctx status` goes to, if any.
    fn status_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// The journal of a directory pool: [`SESSIONS_FILE`] beside its log, this
/// process's alone (the pool has one writer).
pub struct FileJournal {
    dir: PathBuf,
}

impl FileJournal {
    pub fn new(dir: &std::path::Path) -> FileJournal {
        FileJournal {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(SESSIONS_FILE)
    }
}

impl Journal for FileJournal {
    fn read_after(&self, cursor: u64) -> Result<(Vec<serde_json::Value>, u64), String> {
        if cursor > 0 {
            // Nobody else writes it: nothing new after the first read.
            return Ok((Vec::new(), cursor));
        }
        let text = std::fs::read_to_string(self.path()).unwrap_or_default();
        // A line that does not read (a torn last line after a kill) is skipped.
        let lines = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok((lines, 1))
    }

    fn append(&self, lines: &[serde_json::Value]) -> Result<(), String> {
        use std::io::Write;
        let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path())
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", self.path().display()))
    }

    fn compact(&self, lines: &[serde_json::Value]) {
        // What was read, one snapshot, replacing the file atomically.
        let path = self.path();
        let tmp = path.with_extension("jsonl.tmp");
        let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    fn status_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }
}

/// Off loopback, only with a token.
pub fn check_listen(cfg: &ServeConfig) -> Result<(), ServeError> {
    if cfg.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(ServeError::EmptyToken);
    }
    if !cfg.listen.ip().is_loopback() && cfg.token.is_none() {
        return Err(ServeError::NoToken { addr: cfg.listen });
    }
    Ok(())
}

/// What every request shares.
pub struct State {
    pub memory: Arc<Memory>,
    pub upstream: Arc<upstream::Upstream>,
    pub cfg: ServeConfig,
    pub index: Mutex<convo::Index>,
    pub live: Mutex<convo::LiveMap>,
    housekeeping: AtomicU64,
    token_digest: Option<[u8; 32]>,
    journal: Arc<dyn Journal>,
    /// How far this server has read the journal.
    cursor: Mutex<u64>,
    /// Whether other servers write the journal too (then it is read before each request).
    shared: bool,
    persist_lock: Mutex<()>,
    /// Bounds the turns in flight at once (each holds a blocking thread).
    pub(crate) turns: Arc<tokio::sync::Semaphore>,
}

/// Turns answered at once; more wait for a free slot.
pub const MAX_TURNS_IN_FLIGHT: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token's digest: compared in constant time, and of one length whatever was sent.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl State {
    /// The state for a directory pool: the journal beside its log.
    pub fn new(memory: Arc<Memory>, cfg: ServeConfig) -> Result<State, ServeError> {
        let journal = match memory.pool().as_dir() {
            Some(pool) => Arc::new(FileJournal::new(pool.dir())),
            None => return Err(ServeError::TeamPool(memory.pool().location())),
        };
        State::with_journal(memory, cfg, journal)
    }

    /// The state with the conversations kept in `journal`. Blocks (reads it).
    pub fn with_journal(
        memory: Arc<Memory>,
        cfg: ServeConfig,
        journal: Arc<dyn Journal>,
    ) -> Result<State, ServeError> {
        let upstream = Arc::new(upstream::Upstream::new(
            cfg.upstream.clone(),
            cfg.upstream_api_key.clone(),
            cfg.ctx,
        ));
        let instance = journal.shared_instance().map_err(ServeError::Journal)?;
        let mut index = match instance {
            Some(i) => convo::Index::for_instance(i),
            None => convo::Index::new(),
        };
        let (lines, cursor) = journal.read_after(0).map_err(ServeError::Journal)?;
        for line in &lines {
            index.apply(line);
        }
        journal.compact(&index.snapshot());
        Ok(State {
            token_digest: cfg.token.as_deref().map(token_digest),
            memory,
            upstream,
            cfg,
            index: Mutex::new(index),
            live: Mutex::new(convo::LiveMap::new()),
            housekeeping: AtomicU64::new(0),
            journal,
            cursor: Mutex::new(cursor),
            shared: instance.is_some(),
            persist_lock: Mutex::new(()),
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_TURNS_IN_FLIGHT)),
        })
    }

    pub(crate) fn count_housekeeping(&self) {
        self.housekeeping.fetch_add(1, Ordering::Relaxed);
    }

    /// Close the least recently used idle sessions beyond `max_sessions`.
    pub(crate) fn close_idle_sessions(&self) {
        let live: Vec<_> = lock(&self.live).values().cloned().collect();
        let mut open: Vec<(std::time::Instant, Arc<Mutex<convo::Live>>)> = live
            .into_iter()
            .filter_map(|l| {
                let t = l.try_lock().ok()?;
                t.session.is_some().then(|| (t.last_used, Arc::clone(&l)))
            })
            .collect();
        if open.len() <= self.cfg.max_sessions {
            return;
        }
        open.sort_by_key(|(t, _)| *t);
        let excess = open.len() - self.cfg.max_sessions;
        for (_, l) in open.into_iter().take(excess) {
            if let Ok(mut t) = l.try_lock() {
                if let Some(s) = t.session.take() {
                    t.stats = s.stats();
                }
                t.backend = None;
            }
        }
    }

    /// Everything `uctx status` and `/api/uctx/status` show about the conversations.
    pub fn status(&self) -> serde_json::Value {
        let sessions = self.sessions_json(&lock(&self.index));
        let s = self.memory.pool().stats().unwrap_or_default();
        serde_json::json!({
            "upstream": self.upstream.spec.to_string(),
            "pool": {
                "dir": self.memory.pool().location(),
                "slices": s.slices,
                "tokens": s.tokens,
                "bytes_on_disk": s.bytes_on_disk,
                "budget_bytes": s.budget_bytes,
            },
            "housekeeping_requests": self.housekeeping.load(Ordering::Relaxed),
            "sessions": sessions,
        })
    }

    /// One entry per conversation: turns, slices, paged-in counts, cache reuse.
    fn sessions_json(&self, ix: &convo::Index) -> Vec<serde_json::Value> {
        let slices: std::collections::HashMap<String, u64> = self
            .memory
            .pool()
            .namespaces()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let live = lock(&self.live).clone();
        let mut sessions: Vec<serde_json::Value> = ix
            .entries()
            .map(|(id, e)| {
                let mut v = serde_json::json!({
                    "id": id,
                    "namespace": e.namespace,
                    "key": e.key,
                    "messages": e.msgs.len(),
                    "slices": slices.get(&e.namespace).copied().unwrap_or(0),
                    "forked_from": e.forked_from,
                });
                match live.get(&id).map(|l| l.try_lock()) {
                    Some(Ok(l)) => {
                        let stats = l
                            .session
                            .as_ref()
                            .map_or_else(|| l.stats.clone(), |s| s.stats());
                        v["model"] = serde_json::json!(l.model);
                        v["open"] = serde_json::json!(l.session.is_some());
                        v["requests"] = serde_json::json!(l.requests);
                        v["turns"] = serde_json::json!(stats.turns);
                        v["paged_in"] = serde_json::json!(stats.paged_slices);
                        v["paged_in_last"] = serde_json::json!(l.last_paged);
                        v["used"] = serde_json::json!(stats.used_slices);
                        v["cache_reuse"] = serde_json::json!(stats.cache_reuse());
                        v["overflows"] = serde_json::json!(stats.overflows);
                    }
                    Some(Err(_)) => v["busy"] = serde_json::json!(true),
                    None => {}
                }
                v
            })
            .collect();
        sessions.sort_by_key(|v| v["id"].as_u64());
        sessions
    }

    /// On a shared journal, apply what other servers added since the last look, and
    /// close this server's idle session of each conversation they extended (it resumes
    /// from the pool, which holds their turns). Blocks.
    pub(crate) fn catch_up(&self) {
        if !self.shared {
            return;
        }
        let mut cursor = lock(&self.cursor);
        let (lines, next) = match self.journal.read_after(*cursor) {
            Ok(r) => r,
            Err(e) => {
                // The request goes on as a new conversation would; the pool is the same.
                eprintln!("uctx serve: {e}");
                return;
            }
        };
        *cursor = next;
        let grown: Vec<u64> = {
            let mut ix = lock(&self.index);
            lines.iter().filter_map(|l| ix.apply(l)).collect()
        };
        drop(cursor);
        let live = lock(&self.live);
        for id in grown {
            if let Some(Ok(mut l)) = live.get(&id).map(|l| l.try_lock()) {
                if let Some(s) = l.session.take() {
                    l.stats = s.stats();
                }
                l.backend = None;
            }
        }
    }

    /// Append what changed to the journal, and rewrite the status file (one entry per
    /// conversation, whatever their length). Blocks.
    pub(crate) fn persist(&self) {
        let _one_at_a_time = lock(&self.persist_lock);
        let lines = lock(&self.index).take_journal();
        if !lines.is_empty() {
            if let Err(e) = self.journal.append(&lines) {
                eprintln!("uctx serve: cannot write the conversations' journal: {e}");
            }
        }
        self.write_status();
    }

    /// The conversations' figures for `uctx status` (atomically: a temporary file renamed).
    fn write_status(&self) {
        let Some(dir) = self.journal.status_dir() else {
            return;
        };
        let doc = serde_json::json!({"sessions": self.sessions_json(&lock(&self.index))});
        let path = dir.join(STATUS_FILE);
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, doc.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
    state: Arc<State>,
}

/// Check the address, bind it, and build the routes.
pub async fn bind(memory: Arc<Memory>, cfg: ServeConfig) -> Result<Server, ServeError> {
    let journal: Arc<dyn Journal> = match memory.pool().as_dir() {
        Some(pool) => Arc::new(FileJournal::new(pool.dir())),
        None => return Err(ServeError::TeamPool(memory.pool().location())),
    };
    bind_with_journal(memory, cfg, journal).await
}

/// [`bind`] with the conversations kept in `journal` (a team pool's, in its database).
pub async fn bind_with_journal(
    memory: Arc<Memory>,
    cfg: ServeConfig,
    journal: Arc<dyn Journal>,
) -> Result<Server, ServeError> {
    check_listen(&cfg)?;
    if memory.pool().is_read_only() {
        return Err(ServeError::ReadOnly);
    }
    let addr = cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    // Reading the journal blocks (a team pool's client does): off the async threads.
    let state = tokio::task::spawn_blocking(move || State::with_journal(memory, cfg, journal))
        .await
        .map_err(|e| ServeError::Journal(e.to_string()))??;
    let state = Arc::new(state);
    let app = routes::router(Arc::clone(&state));
    Ok(Server {
        listener,
        app,
        state,
    })
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serve until `shutdown` completes; requests in flight finish first.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let served = axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = tokio::task::spawn_blocking(move || state.persist()).await;
        served
    }
}
