//! `uctx ingest`: files, directories (honouring .gitignore) and JSONL records.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use uctx::memory::{Memory, Unit};
use uctx::Source;

use crate::cli::{Global, IngestArgs};
use crate::open;

/// Units are written in batches of about this many bytes of text (one sync per batch).
const BATCH_BYTES: usize = 4 << 20;
/// Files with a NUL byte in their first this many bytes are taken for binary.
const SNIFF_BYTES: usize = 8192;

struct Pending {
    ext_id: String,
    source: Source,
    text: String,
}

struct Ingest<'a> {
    memory: &'a Memory,
    namespace: &'a str,
    batch: Vec<Pending>,
    batch_bytes: usize,
    slices: u64,
    tokens: u64,
    bytes: u64,
    skipped: Vec<String>,
    bar: ProgressBar,
}

impl Ingest<'_> {
    fn push(&mut self, p: Pending) -> anyhow::Result<()> {
        self.batch_bytes += p.text.len();
        self.batch.push(p);
        if self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let units: Vec<Unit<'_>> = self
            .batch
            .iter()
            .map(|p| Unit {
                namespace: self.namespace,
                source: p.source,
                text: &p.text,
                turn: 0,
                ext_id: Some(&p.ext_id),
            })
            .collect();
        let ids = self.memory.write(&units)?;
        self.slices += ids.len() as u64;
        let pool = self.memory.pool();
        self.tokens += ids
            .iter()
            .map(|id| pool.meta(*id))
            .collect::<uctx::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .map(|m| u64::from(m.tokens))
            .sum::<u64>();
        self.bytes += self.batch_bytes as u64;
        self.bar.inc(self.batch_bytes as u64);
        self.batch.clear();
        self.batch_bytes = 0;
        Ok(())
    }

    fn skip(&mut self, path: &Path, why: &str) {
        let note = format!("skipped {}: {why}", path.display());
        self.bar.suspend(|| eprintln!("{note}"));
        self.skipped.push(note);
    }
}

/// Read a file as UTF-8 text, or say why it is skipped.
fn read_text(path: &Path) -> anyhow::Result<Result<String, String>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes[..bytes.len().min(SNIFF_BYTES)].contains(&0) {
        return Ok(Err("binary file".into()));
    }
    match String::from_utf8(bytes) {
        Ok(s) if s.trim().is_empty() => Ok(Err("empty".into())),
        Ok(s) => Ok(Ok(s)),
        Err(e) => Ok(Err(format!(
            "not UTF-8 text (invalid byte at offset {}); convert it with `iconv -t UTF-8`",
            e.utf8_error().valid_up_to()
        ))),
    }
}

fn collect_files(paths: &[PathBuf], no_ignore: bool) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for p in paths {
        let meta =
            std::fs::metadata(p).with_context(|| format!("{} — check the path", p.display()))?;
        if meta.is_file() {
            files.push((p.clone(), meta.len()));
            continue;
        }
        let walk = ignore::WalkBuilder::new(p)
            .standard_filters(!no_ignore)
            .sort_by_file_path(|a, b| a.cmp(b))
            .build();
        for entry in walk {
            let entry = entry.with_context(|| format!("walking {}", p.display()))?;
            if entry.file_type().is_some_and(|t| t.is_file()) {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push((entry.into_path(), len));
            }
        }
    }
    Ok(files)
}

#[derive(serde::Deserialize)]
struct Record {
    text: String,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    source: Option<String>,
}

pub fn ingest(g: &Global, a: &IngestArgs) -> anyhow::Result<ExitCode> {
    if a.paths.is_empty() && a.jsonl.is_none() {
        bail!("nothing to ingest: pass files or directories, or --jsonl FILE");
    }
    let files = collect_files(&a.paths, a.no_ignore)?;
    let jsonl_len = match &a.jsonl {
        Some(p) => std::fs::metadata(p)
            .with_context(|| format!("{} — check the path", p.display()))?
            .len(),
        None => 0,
    };
    let total: u64 = files.iter().map(|(_, n)| n).sum::<u64>() + jsonl_len;
    let memory = open::memory_rw(g)?;
    let bar = if a.quiet || g.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let start = Instant::now();
    let mut ing = Ingest {
        memory: &memory,
        namespace: &a.namespace,
        batch: Vec::new(),
        batch_bytes: 0,
        slices: 0,
        tokens: 0,
        bytes: 0,
        skipped: Vec::new(),
        bar,
    };
    for (path, len) in &files {
        match read_text(path)? {
            Ok(text) => ing.push(Pending {
                ext_id: path.display().to_string(),
                source: Source::Document,
                text,
            })?,
            Err(why) => {
                ing.bar.inc(*len);
                ing.skip(path, &why);
            }
        }
    }
    if let Some(path) = &a.jsonl {
        ingest_jsonl(&mut ing, path)?;
    }
    ing.flush()?;
    ing.bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    // The budget is kept by the pool's maintenance thread: the totals below
    // are the pool's once it is done.
    if let Some(pool) = memory.pool().as_dir() {
        pool.settle();
        if let Some(e) = pool.maintenance_error() {
            eprintln!("warning: pool maintenance failed (nothing acknowledged is lost): {e}");
        }
    }
    let stats = memory.pool().stats()?;
    let tokens = ing.tokens;
    if g.json {
        open::print_json(&serde_json::json!({
            "slices": ing.slices,
            "tokens": tokens,
            "bytes": ing.bytes,
            "seconds": seconds,
            "skipped": ing.skipped,
        }))?;
    } else {
        println!(
            "ingested {} slices, {} tokens, {:.1} MB in {:.2}s into namespace {:?}; pool now {} slices, {:.1} MB{}",
            ing.slices,
            tokens,
            ing.bytes as f64 / 1e6,
            seconds,
            a.namespace,
            stats.slices,
            stats.bytes_on_disk as f64 / 1e6,
            if ing.skipped.is_empty() {
                String::new()
            } else {
                format!("; {} skipped", ing.skipped.len())
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ingest_jsonl(ing: &mut Ingest<'_>, path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(f);
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        ing.bar.inc(read as u64);
        let where_ = PathBuf::from(format!("{}:{n}", path.display()));
        let Ok(text) = std::str::from_utf8(&line) else {
            ing.skip(&where_, "not UTF-8 text");
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let rec: Record = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                ing.skip(
                    &where_,
                    &format!("not a JSON object with a \"text\" string ({e})"),
                );
                continue;
            }
        };
        if rec.text.trim().is_empty() {
            ing.skip(&where_, "empty \"text\"");
            continue;
        }
        let source = match rec.source.as_deref() {
            None => Source::Document,
            Some(s) => match s.parse::<Source>() {
                Ok(src) => src,
                Err(e) => {
                    ing.skip(&where_, &e.to_string());
                    continue;
                }
            },
        };
        let ext_id = match rec.id {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => format!("{}:{n}", path.display()),
        };
        ing.push(Pending {
            ext_id,
            source,
            text: rec.text,
        })?;
    }
    Ok(())
}
