//! `uctx serve`: the Ollama- and OpenAI-compatible server with paged memory.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use uctx::memory::Memory;
use uctx_serve::{ServeConfig, UpstreamSpec};

use crate::cli::Global;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where to listen. Off loopback only with --token.
    #[arg(long, default_value = uctx_serve::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: String,
    /// The model server: `ollama:URL`, `openai:URL` (base URL with /v1) or `reader` (built in).
    #[arg(
        long,
        default_value = "ollama:http://127.0.0.1:11434",
        value_name = "UPSTREAM"
    )]
    pub upstream: String,
    /// The window served, in tokens [default: what the upstream reports for the model, at most 8192].
    #[arg(long, value_name = "TOKENS")]
    pub ctx: Option<usize>,
    /// Clients must send `Authorization: Bearer TOKEN` (required off loopback).
    #[arg(long, env = "UCTX_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the upstream's API key (its first line) [default: the OPENAI_API_KEY environment variable].
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Tokens reserved for each answer [default: a quarter of the window, at most 1024].
    #[arg(long, value_name = "TOKENS")]
    pub answer_tokens: Option<usize>,
    /// Largest request body accepted, in MB.
    #[arg(long, default_value_t = 32, value_name = "MB")]
    pub max_body_mb: usize,
    /// Sessions kept open at once (the least recently used beyond it resume from the pool).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_sessions: usize,
    /// The context length advertised to clients in /api/show: how much history a client may send.
    #[arg(long, default_value_t = 131_072, value_name = "TOKENS")]
    pub advertise_ctx: usize,
    /// Namespaces of documents every conversation also searches (repeat for more; an
    /// empty name for none).
    #[arg(long, value_name = "NS", default_value = uctx::session::DOCS_NAMESPACE)]
    pub docs: Vec<String>,
}

fn listen_addr(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| {
            format!("--listen {s:?} is not an address (use HOST:PORT, e.g. 127.0.0.1:11435)")
        })
}

fn upstream_key(a: &ServeArgs) -> anyhow::Result<Option<String>> {
    match &a.api_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key from {}", path.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                bail!("{} holds no API key on its first line", path.display());
            }
            Ok(Some(key))
        }
        None => Ok(std::env::var("OPENAI_API_KEY")
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())),
    }
}

pub fn serve(g: &Global, a: &ServeArgs) -> anyhow::Result<ExitCode> {
    let upstream: UpstreamSpec = a.upstream.parse().map_err(anyhow::Error::msg)?;
    let cfg = ServeConfig {
        listen: listen_addr(&a.listen)?,
        upstream,
        upstream_api_key: upstream_key(a)?,
        token: a.token.clone(),
        ctx: a.ctx,
        answer_tokens: a.answer_tokens,
        max_body_bytes: a.max_body_mb.max(1) << 20,
        max_sessions: a.max_sessions.max(1),
        advertised_context: a.advertise_ctx,
        docs: a.docs.clone(),
    };
    // Refuse an unsafe address before touching the pool.
    uctx_serve::check_listen(&cfg)?;
    // A team pool keeps the conversations in its database, shared by every server on it.
    let (memory, journal): (Arc<Memory>, Arc<dyn uctx_serve::Journal>) =
        match crate::open::pool_url(g) {
            Some(url) => {
                let encoder = crate::open::encoder(g)?;
                let pool = crate::open::team_pool(url, &*encoder, false, None)?;
                let memory = Arc::new(Memory::new(Arc::clone(&pool) as _, encoder));
                (memory, Arc::new(TeamJournal(pool)))
            }
            None => {
                let memory = crate::open::memory_rw(g)?;
                let dir = memory.pool().as_dir().map(|p| p.dir().to_path_buf());
                let dir = dir.context("a directory pool has a directory")?;
                (memory, Arc::new(uctx_serve::FileJournal::new(&dir)))
            }
        };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async move {
        let upstream = cfg.upstream.clone();
        let server = uctx_serve::bind_with_journal(memory, cfg, journal).await?;
        let addr = server.local_addr();
        eprintln!(
            "uctx serve: listening on http://{addr} (Ollama API at /, OpenAI API at /v1), upstream {upstream}, pool {}",
            server.state().memory.pool().location()
        );
        server.run(shutdown_signal()).await?;
        eprintln!("uctx serve: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The conversations of every server on a team pool, in its database.
struct TeamJournal(Arc<uctx_pg::PgPool>);

impl uctx_serve::Journal for TeamJournal {
    fn read_after(&self, cursor: u64) -> Result<(Vec<serde_json::Value>, u64), String> {
        let (lines, next) = self.0.journal_after(cursor).map_err(|e| e.to_string())?;
        // A row that does not read is skipped, as a torn line of a journal file is.
        let lines = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok((lines, next))
    }

    fn append(&self, lines: &[serde_json::Value]) -> Result<(), String> {
        let lines: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
        self.0.journal_append(&lines).map_err(|e| e.to_string())
    }

    fn shared_instance(&self) -> Result<Option<u64>, String> {
        self.0.serve_instance().map(Some).map_err(|e| e.to_string())
    }
}

/// Ctrl-C or SIGTERM: stop accepting, let turns in flight finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The conversations `uctx serve` keeps beside the pool in `dir` (as it last wrote them).
pub fn sessions(dir: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(uctx_serve::STATUS_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v.get("sessions")?.clone())
}

/// `uctx status`'s lines for the server's conversations, when there are any.
pub fn print_sessions(dir: &std::path::Path) {
    let Some(list) = sessions(dir) else { return };
    let Some(list) = list.as_array().filter(|l| !l.is_empty()) else {
        return;
    };
    println!("served    {} conversations (uctx serve)", list.len());
    for s in list {
        let n = |k: &str| s[k].as_u64().map_or("—".to_string(), |v| v.to_string());
        let reuse = s["cache_reuse"]
            .as_f64()
            .map_or("—".to_string(), |r| format!("{:.1}%", 100.0 * r));
        println!(
            "  {:<32} {} turns, {} messages, {} slices, {} paged in ({} last turn), cache reuse {}",
            s["namespace"].as_str().unwrap_or("?"),
            n("turns"),
            n("messages"),
            n("slices"),
            n("paged_in"),
            n("paged_in_last"),
            reuse
        );
    }
}

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// Paired requests (direct, then through the proxy) for the added latency.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Turns per conversation before a new one starts.
    #[arg(long, default_value_t = 25)]
    pub turns: usize,
    /// Concurrent clients for the throughput run (against the reader).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// The window the proxy serves, in tokens.
    #[arg(long, default_value_t = 4096)]
    pub window: usize,
    /// Bench against the pool at DIR (e.g. one built by `uctx bench scale`; the bench's
    /// conversations are written into it) [default: a new pool in a temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Namespaces of documents the conversations search beside their own (e.g. a
    /// namespace of a pool built by `uctx bench scale`, to search all of it each turn).
    #[arg(long, value_name = "NS", default_value = uctx::session::DOCS_NAMESPACE)]
    pub docs: Vec<String>,
}

pub fn bench(g: &Global, a: &BenchServeArgs) -> anyhow::Result<ExitCode> {
    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("uctx-bench-serve-{}", std::process::id())),
            true,
        ),
    };
    let memory = std::sync::Arc::new(uctx::memory::Memory::open(
        &dir,
        crate::open::encoder(g)?,
        true,
        false,
        None,
    )?);
    let cfg = uctx_serve::bench::BenchConfig {
        requests: a.requests.max(1),
        turns: a.turns.max(1),
        clients: a.clients.max(1),
        duration: std::time::Duration::from_secs_f64(a.seconds.max(0.1)),
        window: a.window,
        docs: a.docs.clone(),
    };
    let report = uctx_serve::bench::run(memory, &cfg).map_err(anyhow::Error::msg);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = report?;
    if g.json {
        crate::open::print_json(&report)?;
    } else {
        print!("{}", uctx_serve::bench::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `uctx mcp`: the pool's tools over stdio. It reads the pool as a follower and takes
/// the writer's lock only for the length of a `remember` or `forget`, so it runs for
/// as long as its host does beside any other command on the same pool.
pub fn mcp(g: &Global) -> anyhow::Result<ExitCode> {
    let tools = if crate::open::pool_url(g).is_some() {
        // Many writers share a team pool: one handle reads and writes.
        uctx_serve::mcp::MemoryTools::new(crate::open::memory_rw(g)?)
    } else {
        let dir = crate::open::pool_dir(g)?;
        if !dir.exists() {
            // There is no pool yet: its writer makes one, opened and closed at once.
            drop(crate::open::memory_rw(g)?);
        }
        let reader = crate::open::memory_ro(g)?;
        let encoder = Arc::clone(reader.encoder());
        let open_writer: uctx_serve::mcp::OpenWriter = Arc::new(move || {
            let memory = Memory::open(&dir, Arc::clone(&encoder), false, false, None)?;
            crate::repair::warn_cut(memory.pool());
            Ok(Arc::new(memory))
        });
        uctx_serve::mcp::MemoryTools::follower(reader, open_writer)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the MCP server's runtime")?;
    runtime
        .block_on(uctx_serve::mcp::serve_stdio(tools))
        .map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}
