//! `uctx bench scale`: the pool at scale, on real text (see `uctx::pool::bench`).
//!
//! The default corpus is the Linux kernel source from the Debian package
//! `linux-source-6.1` (about 1.3 GB of C and documentation, GPL-2.0), fetched
//! with `apt-get download` and unpacked into a cache directory the first time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context};
use uctx::encoder::Encoder;
use uctx::pool::bench::{build_scale, Latency, Probe, Processes, ScaleOptions, ScaleReport};
use uctx::pool::CheckpointUse;

/// The Debian package the default corpus comes from.
pub const CORPUS_PACKAGE: &str = "linux-source-6.1";

pub struct Args {
    pub encoder: Arc<dyn Encoder>,
    /// A directory of text; `None` takes the kernel source from `cache`.
    pub corpus: Option<PathBuf>,
    /// Where the default corpus is (or will be) unpacked.
    pub cache: PathBuf,
    /// Where the pool is built (emptied first).
    pub pool_dir: PathBuf,
    /// Bytes of pool to build.
    pub target_bytes: u64,
    /// Search queries timed per scope.
    pub queries: usize,
}

/// The kernel source under `cache`, fetched and unpacked when missing.
pub fn ensure_corpus(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(CORPUS_PACKAGE);
    if dir.join("Makefile").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let fix = "or pass --corpus DIR with a directory of text files";
    eprintln!(
        "fetching {CORPUS_PACKAGE} into {} (once) ...",
        cache.display()
    );
    let status = Command::new("apt-get")
        .args(["download", CORPUS_PACKAGE])
        .current_dir(cache)
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running apt-get (is this a Debian system?) — {fix}"))?;
    if !status.success() {
        bail!("`apt-get download {CORPUS_PACKAGE}` failed (try `apt-get update` first) — {fix}");
    }
    let deb = std::fs::read_dir(cache)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(CORPUS_PACKAGE) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get left no {CORPUS_PACKAGE} .deb in {}",
                cache.display()
            )
        })?;
    let extract = cache.join("deb");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract))?;
    let tarball = std::fs::read_dir(extract.join("usr/src"))
        .context("the package holds no usr/src")?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(".tar"))
        .context("the package holds no source tarball")?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(cache))?;
    let _ = std::fs::remove_dir_all(&extract);
    let _ = std::fs::remove_file(&deb);
    if !dir.exists() {
        bail!("unpacking left no {} — {fix}", dir.display());
    }
    Ok(dir)
}

/// Run a helper program; what it prints goes to standard error, so that standard output
/// holds only the bench's table or JSON.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Build the pool and measure ingest and size; the caller measures search
/// and memory (`uctx::pool::bench::probe_pool`), in a process of its own.
pub fn run_bench(
    args: &Args,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> anyhow::Result<ScaleReport> {
    let corpus = match &args.corpus {
        Some(c) => c.clone(),
        None => ensure_corpus(&args.cache)?,
    };
    let mut report = build_scale(
        Arc::clone(&args.encoder),
        &ScaleOptions {
            corpus,
            pool_dir: args.pool_dir.clone(),
            target_bytes: args.target_bytes,
            max_slices: 0,
            queries: args.queries,
            progress,
            cancel: None,
        },
    )?;
    if args.corpus.is_none() {
        // Named by its package, not by where this machine keeps it.
        report.corpus = CORPUS_PACKAGE.to_string();
    }
    Ok(report)
}

/// How `uctx` is started for one timed process.
pub struct Spawn<'a> {
    /// The `uctx` binary.
    pub exe: &'a Path,
    pub pool: &'a Path,
    pub encoder: Option<&'a Path>,
}

impl Spawn<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.exe);
        cmd.arg("--pool").arg(self.pool);
        if let Some(e) = self.encoder {
            cmd.arg("--encoder").arg(e);
        }
        cmd.args(args);
        cmd
    }

    /// Wall time of one run of `uctx ARGS`, process start included, in ms.
    fn wall_ms(&self, args: &[&str]) -> anyhow::Result<f64> {
        let mut cmd = self.command(args);
        let t = std::time::Instant::now();
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(ms)
    }

    /// Seconds `Pool::open` takes in a process of its own (a probe of one query).
    fn open_s(&self) -> anyhow::Result<f64> {
        let mut cmd = Command::new(self.exe);
        if let Some(e) = self.encoder {
            cmd.arg("--encoder").arg(e);
        }
        cmd.args(["bench", "scale", "--json", "--queries", "1", "--probe"])
            .arg(self.pool);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let p: Probe = serde_json::from_slice(&out.stdout)?;
        Ok(p.open_seconds)
    }
}

/// Drop the page cache (written-back first), so that the next process reads
/// the pool from the disk. `Err` says why it could not.
fn drop_page_cache() -> Result<(), String> {
    let synced = Command::new("sync").status().map_err(|e| e.to_string())?;
    if !synced.success() {
        return Err("sync failed".into());
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches ({e}; it needs root)"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Time whole processes on the pool: `Pool::open`, `uctx status` and
/// `uctx recall QUERY`, warm (median of `runs`, after one to warm the page
/// cache) and cold (after dropping the page cache, where permitted).
pub fn time_processes(s: &Spawn<'_>, query: &str, runs: usize) -> anyhow::Result<Processes> {
    let runs = runs.max(1);
    let status = ["status"];
    let recall = ["recall", query];
    let mut p = Processes {
        recall_query: query.to_string(),
        warm_runs: runs,
        ..Processes::default()
    };
    match drop_page_cache() {
        Ok(()) => {
            p.open_cold_s = Some(s.open_s()?);
            drop_page_cache().map_err(anyhow::Error::msg)?;
            p.status_cold_ms = Some(s.wall_ms(&status)?);
            drop_page_cache().map_err(anyhow::Error::msg)?;
            p.recall_cold_ms = Some(s.wall_ms(&recall)?);
        }
        Err(why) => p.cold_note = Some(format!("cold not measured: {why}")),
    }
    s.wall_ms(&status)?;
    s.wall_ms(&recall)?;
    let mut open = Vec::new();
    let (mut st, mut rc) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        open.push(s.open_s()?);
        st.push(s.wall_ms(&status)?);
        rc.push(s.wall_ms(&recall)?);
    }
    p.open_warm_s = median(open);
    p.status_warm_ms = median(st);
    p.recall_warm_ms = median(rc);
    Ok(p)
}

/// The rows of whole-process timings.
fn process_rows(p: &Processes) -> Vec<(&'static str, String)> {
    let cold = |c: Option<f64>, unit: &str, scale: f64| {
        c.map_or("not measured".to_string(), |c| {
            format!("{:.0} {unit}", c * scale)
        })
    };
    let mut rows = vec![
        (
            "open, own process (cold / warm)",
            format!(
                "{} / {:.0} ms",
                cold(p.open_cold_s, "ms", 1e3),
                p.open_warm_s * 1e3
            ),
        ),
        (
            "`uctx status` wall (cold / warm)",
            format!(
                "{} / {:.0} ms",
                cold(p.status_cold_ms, "ms", 1.0),
                p.status_warm_ms
            ),
        ),
        (
            "`uctx recall` wall (cold / warm)",
            format!(
                "{} / {:.0} ms",
                cold(p.recall_cold_ms, "ms", 1.0),
                p.recall_warm_ms
            ),
        ),
    ];
    if let Some(n) = &p.cold_note {
        rows.push(("cold", n.clone()));
    }
    rows
}

/// A latency as the table shows it: p50 / p99.
fn ms(l: &Latency) -> String {
    format!("{:.2} / {:.2} ms", l.p50_ms, l.p99_ms)
}

/// Bytes as megabytes with one decimal (the scale and churn tables).
pub(crate) fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// The rows a probe measured.
fn probe_rows(p: &Probe) -> Vec<(&'static str, String)> {
    vec![
        (
            "index segments / tail rows / bytes",
            format!(
                "{} / {} / {}",
                p.index_stats.segments,
                p.index_stats.tail_rows,
                mb(p.index_stats.bytes)
            ),
        ),
        ("time to open", format!("{:.3} s", p.open_seconds)),
        (
            "opened",
            match &p.checkpoint {
                Some(CheckpointUse::Loaded { replayed, .. }) => {
                    format!("checkpoint + {replayed} B of log")
                }
                Some(CheckpointUse::Missing) => "full replay (no checkpoint)".into(),
                Some(CheckpointUse::Rejected { .. }) => "full replay (checkpoint not used)".into(),
                None => "—".into(),
            },
        ),
        ("top-10 search, all (p50 / p99)", ms(&p.search_all)),
        ("top-10 search, one namespace", ms(&p.search_namespace)),
        (
            "rows scored per search (all)",
            format!("{:.0}", p.rows_scanned_per_search),
        ),
        (
            "recall@10 vs exact",
            format!("{:.3} ({} queries)", p.recall_at_10, p.recall_queries),
        ),
        (
            "lexical segments / tail / bytes",
            format!(
                "{} / {} / {}",
                p.lexical.segments,
                p.lexical.tail_docs,
                mb(p.lexical.bytes)
            ),
        ),
        ("BM25 top-10, all (p50 / p99)", ms(&p.lexical_search_all)),
        (
            "BM25 top-10, one namespace",
            ms(&p.lexical_search_namespace),
        ),
        ("hybrid top-10, all (p50 / p99)", ms(&p.hybrid_search_all)),
        (
            "hybrid top-10, one namespace",
            ms(&p.hybrid_search_namespace),
        ),
        (
            "memory after open (private / file)",
            format!(
                "{} / {}",
                mb(p.memory_after_open.private_bytes),
                mb(p.memory_after_open.file_bytes)
            ),
        ),
        (
            "memory searching (private / file)",
            format!(
                "{} / {}",
                mb(p.memory_searching.private_bytes),
                mb(p.memory_searching.file_bytes)
            ),
        ),
    ]
}

fn render(rows: Vec<(&str, String)>) -> String {
    let mut t = String::new();
    t.push_str("| measure                              | value                    |\n");
    t.push_str("|--------------------------------------|--------------------------|\n");
    for (k, v) in rows {
        t.push_str(&format!("| {k:<36} | {v:<24} |\n"));
    }
    t
}

/// A probe of an existing pool as a table.
pub fn probe_table(dir: &Path, p: &Probe) -> String {
    format!(
        "probe of {} (read-only, this process)\n\n{}",
        dir.display(),
        render(probe_rows(p))
    )
}

/// The report as a table.
pub fn table(r: &ScaleReport) -> String {
    let head = format!(
        "scale: {} files of {} ingested {} time(s) into {} namespaces; encoder {}; tokens by {}\n\n",
        r.files, r.corpus, r.passes, r.namespaces, r.encoder, r.tokenizer
    );
    let mut rows = vec![
        ("slices", r.slices.to_string()),
        ("tokens", r.tokens.to_string()),
        ("bytes on disk (all files)", mb(r.bytes_on_disk)),
        ("bytes per slice", format!("{:.0}", r.bytes_per_slice)),
        ("tokens per slice", format!("{:.0}", r.tokens_per_slice)),
        ("tokens per GB", format!("{:.1}M", r.tokens_per_gb / 1e6)),
        (
            "ingest tokens/s",
            format!("{:.2}M", r.ingest_tokens_per_sec / 1e6),
        ),
        ("index", r.index.clone()),
        (
            "lexical bytes per token",
            format!(
                "{:.3}",
                r.probe.lexical.bytes as f64 / r.tokens.max(1) as f64
            ),
        ),
        (
            "lexical index rebuilt from the log",
            format!("{:.1} s", r.lexical_rebuild_seconds),
        ),
        ("measured in", r.probed_in.clone()),
    ];
    rows.extend(probe_rows(&r.probe));
    rows.extend(process_rows(&r.processes));
    head + &render(rows)
}
