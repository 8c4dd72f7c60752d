//! Encoder speed: text in, unit vector out, on one thread, against the Python `model2vec`
//! package encoding the same texts with the same model.
//!
//! The corpus is real text gathered at bench time, or the directory given: prose (the
//! license texts in `/usr/share/common-licenses` and plain-text files under `/usr/share/doc`)
//! and code (this repository's source files, then C headers under `/usr/include`), in sorted
//! path order, up to `bytes` in all, half prose and half code where both are found. Files are
//! cut into texts of about 2 KB at line boundaries, the size of a pool slice. Tokens are the
//! encoder's own.
//!
//! Three timings on one thread: a cold pass (fresh model, empty caches), then the warm passes
//! that the figure of merit uses; and `encode_batch` on every core. The Python arm (when
//! `python3` and `model2vec` are installed) loads a Model2Vec directory saved from the same
//! model and encodes the same texts with `TOKENIZERS_PARALLELISM=false` (one thread).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use uctx::encoder::{Encoder, StaticEncoder};

/// Target size of one text, in bytes.
pub const TEXT_BYTES: usize = 2048;

/// What the bench needs to run.
pub struct Args {
    pub encoder: StaticEncoder,
    /// Take the corpus from this directory (every UTF-8 text file under it) instead.
    pub corpus: Option<PathBuf>,
    /// Bytes of text to encode.
    pub bytes: usize,
    /// Timed warm passes over the corpus (the best is reported).
    pub passes: usize,
    /// The Python interpreter for the model2vec arm; `None` skips that arm.
    pub python: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PythonArm {
    pub package: String,
    pub seconds: f64,
    pub tokens_per_sec_per_core: f64,
    pub texts_per_sec: f64,
    /// Tokens per second of the thread's CPU time.
    pub tokens_per_cpu_sec: f64,
    /// Mean cosine between its vectors and ours (1.0 = the same model computed the same way).
    pub agreement: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub dim: usize,
    pub corpus: String,
    pub texts: usize,
    pub bytes: usize,
    pub tokens: usize,
    /// Warm, one thread: the figure of merit.
    pub tokens_per_sec_per_core: f64,
    pub texts_per_sec: f64,
    pub mb_per_sec: f64,
    /// Tokens per second of CPU time on the encoding thread (warm): the figure with other
    /// processes' load taken out, on a shared machine.
    pub tokens_per_cpu_sec: Option<f64>,
    /// First pass of a fresh model on one thread (word cache empty).
    pub cold_tokens_per_sec: f64,
    /// `encode_batch` over every core.
    pub batch_threads: usize,
    pub batch_tokens_per_sec: f64,
    pub python: Option<PythonArm>,
    /// Ours over Python's tokens/s, one thread each.
    pub ratio_vs_python: Option<f64>,
    pub notes: Vec<String>,
}

/// Gather the corpus: (description, texts).
pub fn corpus(args: &Args) -> anyhow::Result<(String, Vec<String>)> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let description;
    if let Some(dir) = &args.corpus {
        anyhow::ensure!(
            dir.is_dir(),
            "the corpus {} is not a directory — pass --corpus DIR with text files in it",
            dir.display()
        );
        collect(dir, args.bytes, None, &mut files);
        description = format!("{}", dir.display());
    } else {
        let half = args.bytes / 2;
        let mut prose = Vec::new();
        for dir in ["/usr/share/common-licenses", "/usr/share/doc"] {
            let have: usize = prose.iter().map(|(_, t): &(PathBuf, String)| t.len()).sum();
            collect(Path::new(dir), half.saturating_sub(have), None, &mut prose);
        }
        let prose_bytes: usize = prose.iter().map(|(_, t)| t.len()).sum();
        let mut code = Vec::new();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in [repo.as_path(), Path::new("/usr/include")] {
            let have: usize = code.iter().map(|(_, t): &(PathBuf, String)| t.len()).sum();
            let budget = (args.bytes - prose_bytes).saturating_sub(have);
            collect(dir, budget, Some(SOURCE_EXTENSIONS), &mut code);
        }
        let code_bytes: usize = code.iter().map(|(_, t)| t.len()).sum();
        description = format!(
            "{:.1} MB prose (/usr/share/common-licenses, /usr/share/doc) + {:.1} MB code (uctx sources, /usr/include)",
            prose_bytes as f64 / 1e6,
            code_bytes as f64 / 1e6
        );
        files.extend(prose);
        files.extend(code);
    }
    let mut texts = Vec::new();
    for (_, text) in files {
        let mut cur = String::new();
        for line in text.split_inclusive('\n') {
            cur.push_str(line);
            if cur.len() >= TEXT_BYTES {
                texts.push(std::mem::take(&mut cur));
            }
        }
        if !cur.trim().is_empty() {
            texts.push(cur);
        }
    }
    anyhow::ensure!(
        !texts.is_empty(),
        "found no text to encode — pass --corpus DIR with text files in it"
    );
    Ok((description, texts))
}

/// Source files taken as code (data files such as the model's own `tokenizer.json` are not).
const SOURCE_EXTENSIONS: &[&str] = &["rs", "py", "md", "toml", "sh", "c", "h", "hpp"];

/// Add UTF-8 text files under `dir` (with one of `extensions`, if given), in sorted path
/// order, until `budget` bytes.
fn collect(
    dir: &Path,
    budget: usize,
    extensions: Option<&[&str]>,
    out: &mut Vec<(PathBuf, String)>,
) {
    let mut stack = vec![dir.to_path_buf()];
    let mut left = budget;
    while let Some(d) = stack.pop() {
        if left == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        let mut subdirs = Vec::new();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name == "target" || name.starts_with("target-") {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                subdirs.push(p);
            } else if meta.is_file() && meta.len() < 4 << 20 && left > 0 {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                if extensions.is_some_and(|x| !x.contains(&ext)) {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&p) else {
                    continue;
                };
                if bytes.contains(&0) || bytes.len() < 64 {
                    continue;
                }
                if let Ok(text) = String::from_utf8(bytes) {
                    let take = text.len().min(left);
                    let mut end = take;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    left -= end;
                    out.push((p, text[..end].to_string()));
                }
            }
        }
        // Depth first, in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
}

/// Run the bench.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let (description, texts) = corpus(args)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut notes = Vec::new();

    // Cold: a fresh copy of the model has no cached words on this thread.
    let cold = args.encoder.fresh();
    let tokens: usize = refs.iter().map(|t| cold.count_tokens(t)).sum();
    let mut ours = Vec::with_capacity(texts.len());
    let cold2 = args.encoder.fresh();
    let t = Instant::now();
    for text in &refs {
        ours.push(cold2.encode(text));
    }
    let cold_secs = t.elapsed().as_secs_f64();

    let mut best = f64::INFINITY;
    let mut best_cpu: Option<f64> = None;
    for _ in 0..args.passes.max(1) {
        let c = thread_cpu_seconds();
        let t = Instant::now();
        for text in &refs {
            std::hint::black_box(args.encoder.encode(text));
        }
        best = best.min(t.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c, thread_cpu_seconds()) {
            best_cpu = Some(best_cpu.map_or(b - a, |x: f64| x.min(b - a)));
        }
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Instant::now();
    std::hint::black_box(args.encoder.encode_batch(&refs));
    let batch_secs = t.elapsed().as_secs_f64();

    let python = match &args.python {
        None => {
            notes.push("Python arm skipped (no interpreter given)".to_string());
            None
        }
        Some(py) => match python_arm(py, &args.encoder, &refs, &ours, tokens) {
            Ok(arm) => Some(arm),
            Err(e) => {
                notes.push(format!(
                    "Python arm skipped: {e:#} — install it with `pip install model2vec`"
                ));
                None
            }
        },
    };
    let tps = tokens as f64 / best;
    Ok(Report {
        model: args.encoder.fingerprint(),
        dim: args.encoder.dim(),
        corpus: description,
        texts: texts.len(),
        bytes,
        tokens,
        tokens_per_sec_per_core: tps.round(),
        texts_per_sec: (texts.len() as f64 / best).round(),
        mb_per_sec: (bytes as f64 / best / 1e6 * 10.0).round() / 10.0,
        tokens_per_cpu_sec: best_cpu.map(|c| (tokens as f64 / c).round()),
        cold_tokens_per_sec: (tokens as f64 / cold_secs).round(),
        batch_threads: threads,
        batch_tokens_per_sec: (tokens as f64 / batch_secs).round(),
        ratio_vs_python: python
            .as_ref()
            .map(|p| (tps / p.tokens_per_sec_per_core * 10.0).round() / 10.0),
        python,
        notes,
    })
}

const PYTHON_SCRIPT: &str = r#"
import json, os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np
import model2vec
from model2vec import StaticModel
model_dir, texts_path, out_path = sys.argv[1:4]
texts = json.load(open(texts_path, encoding="utf-8"))
model = StaticModel.from_pretrained(model_dir)
model.encode(texts[:50], max_length=None, use_multiprocessing=False)
best = None
best_cpu = None
for _ in range(2):
    t = time.perf_counter()
    c = time.thread_time()
    vecs = model.encode(texts, max_length=None, use_multiprocessing=False, batch_size=1024)
    s = time.perf_counter() - t
    c = time.thread_time() - c
    best = s if best is None else min(best, s)
    best_cpu = c if best_cpu is None else min(best_cpu, c)
np.save(out_path, vecs.astype(np.float32))
print(json.dumps({"seconds": best, "cpu_seconds": best_cpu, "version": model2vec.__version__}))
"#;

fn python_arm(
    python: &str,
    encoder: &StaticEncoder,
    texts: &[&str],
    ours: &[Vec<f32>],
    tokens: usize,
) -> anyhow::Result<PythonArm> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let model_dir = dir.path().join("model");
    encoder.save(&model_dir)?;
    let texts_path = dir.path().join("texts.json");
    std::fs::write(&texts_path, serde_json::to_vec(texts)?)?;
    let out_path = dir.path().join("vectors.npy");
    let output = Command::new(python)
        .arg("-c")
        .arg(PYTHON_SCRIPT)
        .arg(&model_dir)
        .arg(&texts_path)
        .arg(&out_path)
        .env("TOKENIZERS_PARALLELISM", "false")
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .with_context(|| format!("running {python}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        anyhow::bail!("{python} with model2vec failed: {last}");
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
        .context("reading the Python arm's result")?;
    let seconds = v["seconds"].as_f64().unwrap_or(f64::NAN);
    let cpu = v["cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    let theirs = read_npy_f32(&out_path, encoder.dim())?;
    let mut agree = 0.0;
    for (a, b) in ours.iter().zip(&theirs) {
        agree += uctx::encoder::dot(a, b) as f64;
    }
    Ok(PythonArm {
        package: format!("model2vec {}", v["version"].as_str().unwrap_or("?")),
        seconds: (seconds * 1000.0).round() / 1000.0,
        tokens_per_sec_per_core: (tokens as f64 / seconds).round(),
        texts_per_sec: (texts.len() as f64 / seconds).round(),
        tokens_per_cpu_sec: (tokens as f64 / cpu).round(),
        agreement: (agree / ours.len().max(1) as f64 * 1e5).round() / 1e5,
    })
}

/// CPU time of the calling thread, from Linux's `/proc/thread-self/schedstat` (nanoseconds
/// on the CPU); `None` elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Rows of a float32 `.npy` matrix with `dim` columns.
fn read_npy_f32(path: &Path, dim: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() > 10 && &bytes[1..6] == b"NUMPY",
        "not an .npy file"
    );
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data = bytes
        .get(10 + header_len..)
        .context("truncated .npy file")?;
    let floats: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(floats.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = format!(
            "encoder {} ({} dims)\ncorpus: {} — {} texts, {:.1} MB, {} tokens\n\n",
            self.model,
            self.dim,
            self.corpus,
            self.texts,
            self.bytes as f64 / 1e6,
            self.tokens
        );
        t.push_str("| arm                                | tokens/s (wall) | tokens/CPU-s    | texts/s   |\n");
        t.push_str("|------------------------------------|----------------:|----------------:|----------:|\n");
        let row = |name: &str, tps: f64, cpu: Option<f64>, texts: Option<f64>| {
            format!(
                "| {name:<34} | {:>15} | {:>15} | {:>9} |\n",
                group(tps),
                cpu.map_or("—".to_string(), group),
                texts.map_or("—".to_string(), group)
            )
        };
        t.push_str(&row(
            "uctx, 1 thread (warm)",
            self.tokens_per_sec_per_core,
            self.tokens_per_cpu_sec,
            Some(self.texts_per_sec),
        ));
        t.push_str(&row(
            "uctx, 1 thread (cold)",
            self.cold_tokens_per_sec,
            None,
            None,
        ));
        t.push_str(&row(
            &format!("uctx batch, {} threads", self.batch_threads),
            self.batch_tokens_per_sec,
            None,
            None,
        ));
        if let Some(p) = &self.python {
            t.push_str(&row(
                &format!("Python {}, 1 thread", p.package),
                p.tokens_per_sec_per_core,
                Some(p.tokens_per_cpu_sec),
                Some(p.texts_per_sec),
            ));
            t.push_str(&format!(
                "\nuctx / Python (wall, one thread each): {:.1}x; mean cosine between the two: {:.5}\n",
                self.ratio_vs_python.unwrap_or(f64::NAN),
                p.agreement
            ));
        }
        for n in &self.notes {
            t.push_str(&format!("\nnote: {n}\n"));
        }
        t
    }
}

fn group(x: f64) -> String {
    let s = format!("{}", x.round() as u64);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
