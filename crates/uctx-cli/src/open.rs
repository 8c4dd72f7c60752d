//! Opening the pool, encoder and backend from flags; the small commands.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Serialize;
use uctx::backend::{self, Backend, BackendOptions};
use uctx::encoder::{Encoder, StaticEncoder};
use uctx::memory::Memory;
use uctx::pager::PagerStats;
use uctx::pool::{PoolStats, Scope};

use crate::cli::{
    ClearArgs, DoctorArgs, Global, InitArgs, ModelArgs, PoolArgs, PoolCommand, RecallArgs,
    ServerArgs,
};

const GB: f64 = 1e9;
/// The sizes `init` offers.
const SIZES_GB: [f64; 4] = [5.0, 10.0, 15.0, 20.0];

/// The team pool's URL, when `--pool` (or `UCTX_POOL`) names one.
pub fn pool_url(g: &Global) -> Option<&str> {
    g.pool
        .as_ref()
        .and_then(|p| p.to_str())
        .filter(|s| uctx_pg::is_url(s))
}

/// What a team pool supports, for the refusal of every other command.
const TEAM_COMMANDS: &str =
    "init, ingest, recall, status, chat, run, clear, doctor, serve, mcp and pool copy";

pub fn pool_dir(g: &Global) -> anyhow::Result<PathBuf> {
    if let Some(url) = pool_url(g) {
        bail!(
            "this command needs a pool directory, and {} is a team pool — a team pool supports {TEAM_COMMANDS}; pass --pool DIR for the others",
            uctx_pg::redacted(url)
        );
    }
    match &g.pool {
        Some(p) => Ok(p.clone()),
        None => dirs::data_dir()
            .map(|d| d.join("uctx").join("pool"))
            .context("no data directory is known for this user; pass --pool DIR or set UCTX_POOL"),
    }
}

pub fn encoder(g: &Global) -> anyhow::Result<Arc<dyn Encoder>> {
    Ok(match &g.encoder {
        Some(dir) => Arc::new(StaticEncoder::load(dir)?),
        None => Arc::new(StaticEncoder::bundled()?),
    })
}

/// A directory pool with its encoder. The bundled encoder, whose identity is known before
/// it loads, loads on another thread while the pool opens.
fn dir_memory(
    g: &Global,
    dir: &std::path::Path,
    create: bool,
    read_only: bool,
    budget: Option<u64>,
) -> anyhow::Result<Memory> {
    Ok(match &g.encoder {
        Some(_) => Memory::open(dir, encoder(g)?, create, read_only, budget)?,
        None => Memory::open_loading(
            dir,
            uctx::encoder::BUNDLED_FINGERPRINT,
            uctx::encoder::BUNDLED_DIM,
            || Ok(Arc::new(StaticEncoder::bundled()?) as Arc<dyn Encoder>),
            create,
            read_only,
            budget,
        )?,
    })
}

/// Open the pool for writing, creating it (default budget) if absent.
pub fn memory_rw(g: &Global) -> anyhow::Result<Arc<Memory>> {
    if let Some(url) = pool_url(g) {
        return Ok(Arc::new(team_memory(url, encoder(g)?, false, None)?));
    }
    let dir = pool_dir(g)?;
    let memory = dir_memory(g, &dir, true, false, None)?;
    crate::repair::warn_cut(memory.pool());
    crate::repair::note_rebuilt(memory.pool());
    crate::repair::note_checkpoint(memory.pool());
    Ok(Arc::new(memory))
}

/// Open an existing pool for reading (no lock: works while a writer runs).
/// The pool directory, which must exist (for commands that only read).
fn existing_pool_dir(g: &Global) -> anyhow::Result<PathBuf> {
    let dir = pool_dir(g)?;
    if !dir.exists() {
        bail!(
            "there is no pool at {} — create one with `uctx init`, or pass --pool DIR",
            dir.display()
        );
    }
    Ok(dir)
}

/// The team pool at `url`: a writer creates it if the database has none.
pub fn team_pool(
    url: &str,
    encoder: &dyn Encoder,
    read_only: bool,
    budget_bytes: Option<u64>,
) -> anyhow::Result<Arc<uctx_pg::PgPool>> {
    let opts = Memory::pool_options(encoder, !read_only, read_only, budget_bytes);
    Ok(Arc::new(uctx_pg::PgPool::open(url, &opts)?))
}

/// A memory on the team pool at `url`.
fn team_memory(
    url: &str,
    encoder: Arc<dyn Encoder>,
    read_only: bool,
    budget_bytes: Option<u64>,
) -> anyhow::Result<Memory> {
    let pool = team_pool(url, &*encoder, read_only, budget_bytes)?;
    Ok(Memory::new(pool, encoder))
}

pub fn memory_ro(g: &Global) -> anyhow::Result<Arc<Memory>> {
    if let Some(url) = pool_url(g) {
        return Ok(Arc::new(team_memory(url, encoder(g)?, true, None)?));
    }
    let dir = existing_pool_dir(g)?;
    Ok(Arc::new(dir_memory(g, &dir, false, true, None)?))
}

/// Backend options from the flags, then the environment.
pub fn backend_options(server: &ServerArgs, ctx: Option<usize>) -> anyhow::Result<BackendOptions> {
    if server.api_key.is_some() {
        bail!(
            "--api-key is not accepted: a key on the command line is visible to every user \
             in the process list; set OPENAI_API_KEY, or put the key in a file readable only \
             by you and pass --api-key-file PATH"
        );
    }
    let key = match &server.api_key_file {
        Some(path) => Some(read_key_file(path)?),
        None => None,
    };
    Ok(BackendOptions {
        ollama_host: server.host.clone(),
        openai_base_url: server.base_url.clone(),
        openai_api_key: key,
        context_override: ctx,
        timeout: None,
        cache_reuse: server.cache_reuse,
    }
    .with_env())
}

/// The first line of a key file, trimmed; never quoted in an error.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API key file {}", path.display()))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        bail!(
            "the API key file {} is empty; put the key on its first line",
            path.display()
        );
    }
    Ok(key)
}

pub fn backend(m: &ModelArgs) -> anyhow::Result<Arc<dyn Backend>> {
    let opts = backend_options(&m.server, m.ctx)?;
    Ok(Arc::from(backend::from_spec(&m.model, &opts)?))
}

/// Bytes per token assumed before a pool has measured its own: `uctx bench
/// scale` on the Linux kernel source measured 2.41 (415M tokens per GB, every
/// file of the pool counted).
const EST_BYTES_PER_TOKEN: f64 = 2.41;

/// Tokens a budget reaches, from the pool's measured density when it has one.
pub fn reach_tokens(stats: &PoolStats) -> u64 {
    let per_token = if stats.tokens >= 100_000 {
        stats.bytes_on_disk as f64 / stats.tokens as f64
    } else {
        EST_BYTES_PER_TOKEN
    };
    (stats.budget_bytes as f64 / per_token) as u64
}

/// Free bytes on the file system holding `path` (or its nearest existing parent).
fn free_disk(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            let s = rustix::fs::statvfs(p).ok()?;
            return Some(s.f_bavail.saturating_mul(s.f_frsize));
        }
        p = p.parent()?;
    }
}

fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn init(g: &Global, a: &InitArgs) -> anyhow::Result<ExitCode> {
    if let Some(url) = pool_url(g) {
        return init_team(g, a, url);
    }
    let dir = pool_dir(g)?;
    let free = free_disk(&dir);
    let gb = pool_gb(a, free)?;
    let budget = (gb * GB) as u64;
    if let Some(free) = free {
        if budget > free {
            bail!(
                "a {gb} GB pool does not fit: {:.1} GB free at {} — choose a smaller --pool-gb, or another --pool",
                free as f64 / GB,
                dir.display()
            );
        }
        // Compaction writes the log's live records to a new file beside the old one;
        // the log is about three quarters of a full pool (the indexes are the rest).
        let headroom = budget / 4 * 3;
        if budget + headroom > free {
            eprintln!(
                "warning: {:.1} GB free at {}: a full {gb} GB pool needs about {:.1} GB more \
                 while it compacts (a second copy of its log); until then compaction fails and \
                 says so, and nothing is lost — free space, or choose a smaller --pool-gb",
                free as f64 / GB,
                dir.display(),
                headroom as f64 / GB
            );
        }
    }
    let memory = dir_memory(g, &dir, true, false, Some(budget))?;
    crate::repair::warn_cut(memory.pool());
    crate::repair::note_rebuilt(memory.pool());
    memory.pool().set_budget(budget)?;
    let stats = memory.pool().stats()?;
    if g.json {
        print_json(&serde_json::json!({
            "pool": dir,
            "budget_bytes": stats.budget_bytes,
            "reach_tokens": reach_tokens(&stats),
        }))?;
    } else {
        println!(
            "pool ready at {} — budget {:.1} GB, reach ≈ {} tokens",
            dir.display(),
            stats.budget_bytes as f64 / GB,
            human(reach_tokens(&stats))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `uctx init` on a team pool: create it (or open it) and record the budget.
fn init_team(g: &Global, a: &InitArgs, url: &str) -> anyhow::Result<ExitCode> {
    let gb = pool_gb(a, None)?;
    let budget = (gb * GB) as u64;
    let memory = team_memory(url, encoder(g)?, false, Some(budget))?;
    memory.pool().set_budget(budget)?;
    let stats = memory.pool().stats()?;
    if g.json {
        print_json(&serde_json::json!({
            "pool": memory.pool().location(),
            "budget_bytes": stats.budget_bytes,
            "reach_tokens": reach_tokens(&stats),
        }))?;
    } else {
        println!(
            "team pool ready at {} — budget {:.1} GB (recorded; the server's disk is the limit), reach ≈ {} tokens",
            memory.pool().location(),
            stats.budget_bytes as f64 / GB,
            human(reach_tokens(&stats))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The pool size in GB: `--pool-gb`, else asked at a terminal (offering sizes that fit
/// `free` bytes where it is known); a positive number.
fn pool_gb(a: &InitArgs, free: Option<u64>) -> anyhow::Result<f64> {
    let gb = match a.pool_gb {
        Some(gb) => gb,
        None if std::io::stdin().is_terminal() => ask_size(free)?,
        None => bail!("pass the pool size with --pool-gb N (for example --pool-gb 5)"),
    };
    if !(gb.is_finite() && gb > 0.0) {
        bail!("--pool-gb must be a positive number of GB, got {gb}");
    }
    Ok(gb)
}

fn ask_size(free: Option<u64>) -> anyhow::Result<f64> {
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "Choose the pool size (reach assumes {EST_BYTES_PER_TOKEN} bytes per token):"
    )?;
    for (i, gb) in SIZES_GB.iter().enumerate() {
        let reach = (gb * GB / EST_BYTES_PER_TOKEN) as u64;
        writeln!(err, "  {}) {gb:>4} GB  ≈ {} tokens", i + 1, human(reach))?;
    }
    writeln!(err, "  5) custom")?;
    if let Some(f) = free {
        writeln!(err, "Free disk here: {:.1} GB", f as f64 / GB)?;
    }
    write!(err, "> ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    match line.trim() {
        "" | "1" => Ok(SIZES_GB[0]),
        "2" => Ok(SIZES_GB[1]),
        "3" => Ok(SIZES_GB[2]),
        "4" => Ok(SIZES_GB[3]),
        "5" => {
            write!(err, "GB: ")?;
            err.flush()?;
            line.clear();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim()
                .parse()
                .with_context(|| format!("{:?} is not a number of GB", line.trim()))
        }
        other => bail!("{other:?} is not one of the choices 1-5"),
    }
}

pub fn doctor(g: &Global, a: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut failures = 0;
    let mut report = |ok: bool, what: String| {
        if !ok {
            failures += 1;
        }
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
    };
    match backend(&a.model) {
        Err(e) => report(false, format!("model {}: {e}", a.model.model)),
        Ok(b) => match b.health() {
            Err(e) => report(false, format!("backend: {e}")),
            Ok(h) => {
                report(true, format!("backend reachable at {}", h.endpoint));
                report(
                    h.model_present,
                    if h.model_present {
                        format!("model {} is present", a.model.model)
                    } else {
                        format!(
                            "model {} is missing (the server has: {}) — pull it (`ollama pull NAME`) or pick one of those",
                            a.model.model,
                            h.models.join(", ")
                        )
                    },
                );
                match b.context_length() {
                    Ok(n) => report(true, format!("context window: {n} tokens")),
                    Err(e) => report(false, format!("context window: {e}")),
                }
            }
        },
    }
    match encoder(g) {
        Ok(e) => report(
            true,
            format!("encoder {} ({} dims)", e.fingerprint(), e.dim()),
        ),
        Err(e) => report(false, format!("encoder: {e}")),
    }
    if let Some(url) = pool_url(g) {
        match memory_ro(g).and_then(|m| Ok((m.pool().location(), m.pool().stats()?))) {
            Ok((loc, s)) => report(
                true,
                format!(
                    "team pool at {loc}: {} slices, {:.2} GB on the server",
                    s.slices,
                    s.bytes_on_disk as f64 / GB
                ),
            ),
            Err(e) => report(
                false,
                format!("team pool at {}: {e}", uctx_pg::redacted(url)),
            ),
        }
    }
    let dir = match pool_url(g) {
        Some(_) => None,
        None => Some(pool_dir(g)?),
    };
    match dir {
        // A team pool: checked above.
        None => {}
        Some(dir) if dir.exists() => {
            match memory_ro(g).and_then(|m| Ok(m.pool().stats()?)) {
                Ok(s) => {
                    report(
                        true,
                        format!(
                            "pool at {}: {} slices, {:.2} GB of {:.1} GB",
                            dir.display(),
                            s.slices,
                            s.bytes_on_disk as f64 / GB,
                            s.budget_bytes as f64 / GB
                        ),
                    );
                    if let Some(free) = free_disk(&dir) {
                        let need = s.budget_bytes.saturating_sub(s.bytes_on_disk);
                        report(
                            free >= need,
                            format!(
                                "disk: {:.1} GB free, the pool may still grow {:.1} GB{}",
                                free as f64 / GB,
                                need as f64 / GB,
                                if free >= need {
                                    ""
                                } else {
                                    " — free space or lower the budget with `uctx init --pool-gb N`"
                                }
                            ),
                        );
                    }
                }
                Err(e) => report(false, format!("pool: {e}")),
            }
            if a.verify {
                match uctx::pool::Pool::verify(&dir) {
                    Err(e) => report(false, format!("verify: {e}")),
                    Ok(v) => crate::repair::report_verified(&dir, &v, &mut report),
                }
            }
        }
        Some(dir) => report(
            true,
            format!(
                "no pool yet at {} (created on first use, or `uctx init`)",
                dir.display()
            ),
        ),
    }
    if let Some(mem) = available_memory() {
        let ok = mem >= 512 << 20;
        report(
            ok,
            format!(
                "memory: {:.1} GB available{}",
                mem as f64 / GB,
                if ok {
                    ""
                } else {
                    " — close other programs; uctx needs about 0.5 GB"
                }
            ),
        );
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
struct RecallHit {
    id: String,
    score: f32,
    text: String,
    source: String,
    namespace: String,
    seq: u64,
}

pub fn recall(g: &Global, a: &RecallArgs) -> anyhow::Result<ExitCode> {
    let memory = memory_ro(g)?;
    let scope = match &a.namespace {
        Some(ns) => Scope::Namespace(ns),
        None => Scope::All,
    };
    let hits = memory.recall(&a.query, a.k, scope)?;
    crate::repair::note_unsealed(memory.pool());
    let out: Vec<RecallHit> = hits
        .into_iter()
        .map(|r| RecallHit {
            id: r
                .slice
                .meta
                .ext_id
                .clone()
                .unwrap_or_else(|| r.slice.meta.id.to_string()),
            score: r.score,
            source: r.slice.meta.source.to_string(),
            namespace: r.slice.meta.namespace.clone(),
            seq: r.slice.meta.id,
            text: r.slice.text,
        })
        .collect();
    if g.json {
        print_json(&out)?;
    } else if out.is_empty() {
        println!("no slices match (the pool may be empty: see `uctx status`)");
    } else {
        let mut stdout = std::io::stdout().lock();
        for h in &out {
            writeln!(
                stdout,
                "── {:.3}  {}  [{} · {} · seq {}]",
                h.score, h.id, h.namespace, h.source, h.seq
            )?;
            writeln!(stdout, "{}\n", h.text.trim_end())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where sessions leave their pager counters, for `status`: beside a pool
/// directory (a team pool keeps none).
pub fn pager_stats_path(g: &Global) -> anyhow::Result<Option<PathBuf>> {
    if pool_url(g).is_some() {
        return Ok(None);
    }
    Ok(Some(pool_dir(g)?.join("pager-stats.json")))
}

/// Add a session's pager counters to the pool's running totals.
pub fn save_pager_stats(g: &Global, s: &PagerStats) -> anyhow::Result<()> {
    let Some(path) = pager_stats_path(g)? else {
        return Ok(());
    };
    let (mut hits, mut misses) = load_pager_totals(&path);
    hits += s.hits;
    misses += s.misses;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::json!({"hits": hits, "misses": misses}).to_string(),
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn load_pager_totals(path: &Path) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (0, 0);
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (
        v["hits"].as_u64().unwrap_or(0),
        v["misses"].as_u64().unwrap_or(0),
    )
}

/// `uctx status` on a team pool: what the server holds.
fn status_team(g: &Global, url: &str) -> anyhow::Result<ExitCode> {
    let (fingerprint, dim) = uctx_pg::PgPool::inspect(url)?;
    let pool = uctx_pg::PgPool::open(
        url,
        &uctx::pool::PoolOptions {
            create: false,
            read_only: true,
            budget_bytes: None,
            encoder_fingerprint: fingerprint,
            dim,
        },
    )?;
    let pool: &dyn uctx::pool::Store = &pool;
    let s = pool.stats()?;
    let namespaces = pool.namespaces()?;
    if g.json {
        print_json(&serde_json::json!({
            "pool": pool.location(),
            "slices": s.slices,
            "tokens": s.tokens,
            "bytes_on_disk": s.bytes_on_disk,
            "budget_bytes": s.budget_bytes,
            "reach_tokens": reach_tokens(&s),
            "namespaces": namespaces.iter().map(|(n, c)| serde_json::json!({"namespace": n, "slices": c})).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "pool      {} (team pool, schema {})",
        pool.location(),
        uctx_pg::SCHEMA_VERSION
    );
    println!("encoder   {}", pool.encoder_fingerprint());
    println!("slices    {}", s.slices);
    println!("tokens    {}", human(s.tokens));
    println!(
        "server    {:.3} GB (table, text and indexes); budget {:.1} GB",
        s.bytes_on_disk as f64 / GB,
        s.budget_bytes as f64 / GB
    );
    for (ns, n) in namespaces {
        println!("  {ns:<24} {n} slices");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(g: &Global) -> anyhow::Result<ExitCode> {
    if let Some(url) = pool_url(g) {
        return status_team(g, url);
    }
    // The pool as its header describes it: status reads no vector and needs no encoder
    // (loading one would be most of its time).
    let dir = existing_pool_dir(g)?;
    let (fingerprint, dim) = uctx::pool::Pool::inspect(&dir)?;
    let pool = &uctx::pool::Pool::open(
        &dir,
        uctx::pool::PoolOptions {
            create: false,
            read_only: true,
            budget_bytes: None,
            encoder_fingerprint: fingerprint,
            dim,
        },
    )?;
    let s = pool.stats();
    let index = pool.index_stats();
    let (hits, misses) = pager_stats_path(g)?.map_or((0, 0), |p| load_pager_totals(&p));
    let hit_rate = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
    if g.json {
        print_json(&serde_json::json!({
            "slices": s.slices,
            "tokens": s.tokens,
            "bytes_on_disk": s.bytes_on_disk,
            "budget_bytes": s.budget_bytes,
            "reach_tokens": reach_tokens(&s),
            "hit_rate": hit_rate,
            "index": index,
            "namespaces": pool.namespaces().into_iter().map(|(n, c)| serde_json::json!({"namespace": n, "slices": c})).collect::<Vec<_>>(),
            "opened": pool.checkpoint_use(),
            "damaged": pool.damage(),
            "torn_tail": pool.torn_tail(),
            "damaged_logs": pool.damaged_logs(),
            "serve_sessions": crate::serve::sessions(pool.dir()),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("pool      {}", pool.dir().display());
    println!("encoder   {}", pool.encoder_fingerprint());
    println!("slices    {}", s.slices);
    println!("tokens    {}", human(s.tokens));
    println!(
        "disk      {:.3} GB of {:.1} GB budget ({:.1}%)",
        s.bytes_on_disk as f64 / GB,
        s.budget_bytes as f64 / GB,
        100.0 * s.bytes_on_disk as f64 / s.budget_bytes.max(1) as f64
    );
    println!("reach     ≈ {} tokens", human(reach_tokens(&s)));
    println!(
        "index     {} segments ({} rows, {:.3} GB), {} newest rows searched exactly",
        index.segments,
        index.segment_rows,
        index.bytes as f64 / GB,
        index.tail_rows
    );
    match hit_rate {
        Some(r) => println!("hit rate  {:.1}% ({hits} of {})", 100.0 * r, hits + misses),
        None => println!("hit rate  — (no slice paged in yet)"),
    }
    crate::repair::print_status(pool);
    for (ns, n) in pool.namespaces() {
        println!("  {ns:<24} {n} slices");
    }
    crate::serve::print_sessions(pool.dir());
    Ok(ExitCode::SUCCESS)
}

pub fn clear(g: &Global, a: &ClearArgs) -> anyhow::Result<ExitCode> {
    let what = match (&a.namespace, a.all) {
        (Some(ns), false) => format!("namespace {ns:?}"),
        (None, true) => "every slice in the pool".to_string(),
        _ => bail!("say what to delete: --namespace NS, or --all"),
    };
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to delete {what} without confirmation — pass --yes");
        }
        eprint!("Delete {what}? [y/N] ");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing deleted");
            return Ok(ExitCode::from(1));
        }
    }
    let memory = memory_rw(g)?;
    let n = match &a.namespace {
        Some(ns) => memory.pool().delete_namespace(ns)?,
        None => memory.pool().clear()?,
    };
    if g.json {
        print_json(&serde_json::json!({ "deleted": n }))?;
    } else {
        println!("deleted {n} slices ({what})");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn reembed(g: &Global) -> anyhow::Result<ExitCode> {
    let dir = pool_dir(g)?;
    let enc = encoder(g)?;
    let (current, _) = uctx::pool::Pool::inspect(&dir)?;
    if current == enc.fingerprint() {
        println!(
            "the pool at {} is already encoded with {current}; nothing to do",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bar = if g.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let done = uctx::memory::reembed(
        &dir,
        enc,
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
        &cancel,
    )?;
    bar.finish_and_clear();
    if g.json {
        print_json(&done)?;
    } else {
        println!(
            "re-encoded {} slices: {} → {}",
            done.slices, done.from, done.to
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A pool named by a directory or a `postgres://` URL: a reader (which must
/// exist) or a writer (created if absent).
fn open_store(
    spec: &str,
    encoder: &dyn Encoder,
    writer: bool,
) -> anyhow::Result<Arc<dyn uctx::pool::Store>> {
    let opts = Memory::pool_options(encoder, writer, !writer, None);
    Ok(if uctx_pg::is_url(spec) {
        Arc::new(uctx_pg::PgPool::open(spec, &opts)?)
    } else {
        Arc::new(uctx::pool::Pool::open(Path::new(spec), opts)?)
    })
}

pub fn pool(g: &Global, a: &PoolArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        PoolCommand::Copy { src, dst } => {
            let enc = encoder(g)?;
            let from = open_store(src, &*enc, false)?;
            let to = open_store(dst, &*enc, true)?;
            let bar = if g.json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(0)
            };
            let done = uctx_pg::copy(&*from, &*to, &*enc, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            if g.json {
                print_json(&serde_json::json!({
                    "slices": done.slices,
                    "pinned": done.pinned,
                    "uses": done.uses,
                    "kept_ids": done.kept_ids,
                    "resumed": done.resumed,
                    "from": from.location(),
                    "to": to.location(),
                }))?;
            } else {
                if done.resumed > 0 {
                    println!(
                        "resumed an interrupted copy: {} slices were already there",
                        done.resumed
                    );
                }
                println!(
                    "copied {} slices ({} pinned, {} uses) from {} to {}{}",
                    done.slices,
                    done.pinned,
                    done.uses,
                    from.location(),
                    to.location(),
                    if done.kept_ids {
                        ", keeping their ids"
                    } else {
                        " (ids are its own, in the same order)"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
