//! `uctx bench …`: run a benchmark, print its table or its JSON.

use std::io::IsTerminal;
use std::process::ExitCode;

use uctx::encoder::StaticEncoder;
use uctx_bench::{beir, churn, drift, encoder, locomo, locomo_qa, scale};

use crate::cli::{
    BeirArgs, BenchArgs, BenchCommand, ChurnArgs, DriftArgs, EncoderBenchArgs, Global, LocomoArgs,
    LocomoQaArgs, ScaleArgs,
};
use crate::open;

pub fn bench(g: &Global, a: &BenchArgs) -> anyhow::Result<ExitCode> {
    match &a.which {
        BenchCommand::Beir(b) => bench_beir(g, b),
        BenchCommand::Churn(c) => bench_churn(g, c),
        BenchCommand::Drift(d) => bench_drift(g, d),
        BenchCommand::Encoder(e) => bench_encoder(g, e),
        BenchCommand::Locomo(l) => bench_locomo(g, l),
        BenchCommand::LocomoQa(q) => bench_locomo_qa(g, q),
        BenchCommand::Scale(s) => bench_scale(g, s),
        BenchCommand::Serve(s) => crate::serve::bench(g, s),
    }
}

fn bench_churn(g: &Global, a: &ChurnArgs) -> anyhow::Result<ExitCode> {
    if !(a.mb.is_finite() && a.mb >= 1.0) {
        anyhow::bail!("--mb must be at least 1 (MB), got {}", a.mb);
    }
    if !(a.factor.is_finite() && a.factor > 0.0) {
        anyhow::bail!("--factor must be a positive number, got {}", a.factor);
    }
    if a.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let pool_dir = match &a.dir {
        Some(d) => d.clone(),
        None => dirs::data_dir()
            .map(|d| d.join("uctx").join("bench-churn-pool"))
            .ok_or_else(|| {
                anyhow::anyhow!("no data directory is known for this user; pass --dir")
            })?,
    };
    // Emptied first: never a directory that holds anything but a pool.
    check_bench_dir(&pool_dir)?;
    let report = churn::run(&churn::Args {
        pool_dir,
        budget: (a.mb * 1e6) as u64,
        factor: a.factor,
        batch: a.batch,
    })?;
    emit(g, &report, churn::table(&report))
}

/// A bench's pool directory is emptied first: it must be new, empty or a pool, never a
/// directory that holds anything else.
fn check_bench_dir(pool_dir: &std::path::Path) -> anyhow::Result<()> {
    let is_pool_or_empty = std::fs::read_dir(pool_dir).map_or(true, |mut entries| {
        pool_dir.join(uctx::pool::LOG_FILE).exists() || entries.next().is_none()
    });
    if !is_pool_or_empty {
        anyhow::bail!(
            "{} holds files that are not a pool; pass --dir with a new or empty directory",
            pool_dir.display()
        );
    }
    Ok(())
}

fn bench_scale(g: &Global, a: &ScaleArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &a.probe {
        let probe =
            uctx::pool::bench::probe_pool(open::encoder(g)?, dir, a.queries, a.probe_fraction)?;
        return emit(g, &probe, scale::probe_table(dir, &probe));
    }
    if !(a.gb.is_finite() && a.gb > 0.0) {
        anyhow::bail!("--gb must be a positive number of GB, got {}", a.gb);
    }
    let data = dirs::data_dir().map(|d| d.join("uctx")).ok_or_else(|| {
        anyhow::anyhow!("no data directory is known for this user; pass --corpus and --pool")
    })?;
    // Never the user's pool (--pool / UCTX_POOL): this directory is emptied first.
    let pool_dir = a
        .dir
        .clone()
        .unwrap_or_else(|| data.join("bench-scale-pool"));
    check_bench_dir(&pool_dir)?;
    let show = !g.json && std::io::stderr().is_terminal();
    let progress = |done: u64, target: u64| {
        if show {
            eprint!(
                "\rbuilding the pool: {:.2} of {:.2} GB   ",
                done as f64 / 1e9,
                target as f64 / 1e9
            );
        }
    };
    let mut report = scale::run_bench(
        &scale::Args {
            encoder: open::encoder(g)?,
            corpus: a.corpus.clone(),
            cache: data.join("corpus"),
            pool_dir: pool_dir.clone(),
            target_bytes: (a.gb * 1e9) as u64,
            queries: a.queries,
        },
        Some(&progress),
    )?;
    if show {
        eprintln!();
    }
    // Open and search from a fresh process, as another reader would: the
    // builder's heap would otherwise count as the reader's memory.
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "scale", "--json", "--queries"])
        .arg(a.queries.to_string())
        .arg("--probe")
        .arg(&pool_dir);
    if let Some(e) = &g.encoder {
        cmd.arg("--encoder").arg(e);
    }
    if let Some(p) = a.probe_fraction {
        cmd.arg("--probe-fraction").arg(p.to_string());
    }
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "measuring the pool from a second process failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    report.probe = serde_json::from_slice(&out.stdout)?;
    report.probed_in = "a separate read-only process".into();
    // Whole commands as a user runs them, each a process of its own.
    let exe = std::env::current_exe()?;
    report.processes = scale::time_processes(
        &scale::Spawn {
            exe: &exe,
            pool: &pool_dir,
            encoder: g.encoder.as_deref(),
        },
        "how does the kernel flush dirty pages to disk",
        a.process_runs,
    )?;
    emit(g, &report, scale::table(&report))
}

/// Print a report as JSON or as its table.
fn emit<T: serde::Serialize>(g: &Global, report: &T, table: String) -> anyhow::Result<ExitCode> {
    if g.json {
        open::print_json(report)?;
    } else {
        print!("{table}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_encoder(g: &Global, a: &EncoderBenchArgs) -> anyhow::Result<ExitCode> {
    if !(a.mb.is_finite() && a.mb > 0.0) {
        anyhow::bail!("--mb must be a positive number of megabytes, got {}", a.mb);
    }
    let model = match &g.encoder {
        Some(dir) => StaticEncoder::load(dir)?,
        None => StaticEncoder::bundled()?,
    };
    let report = encoder::run(&encoder::Args {
        encoder: model,
        corpus: a.corpus.clone(),
        bytes: (a.mb * 1e6) as usize,
        passes: a.passes,
        python: (!a.no_python).then(|| a.python.clone()),
    })?;
    emit(g, &report, report.table())
}

fn bench_beir(g: &Global, a: &BeirArgs) -> anyhow::Result<ExitCode> {
    let report = beir::run(&beir::Args {
        data: a.data.clone(),
        encoder: open::encoder(g)?,
        sweep: a.sweep,
    })?;
    emit(g, &report, report.table())
}

fn bench_locomo(g: &Global, a: &LocomoArgs) -> anyhow::Result<ExitCode> {
    let report = locomo::run(&locomo::Args {
        data: a.data.clone(),
        encoder: open::encoder(g)?,
        reference: a.reference.clone(),
        sweep: a.sweep,
    })?;
    emit(g, &report, report.table())
}

fn bench_locomo_qa(g: &Global, a: &LocomoQaArgs) -> anyhow::Result<ExitCode> {
    let show_progress = !g.json && std::io::stderr().is_terminal();
    let report = locomo_qa::run(&locomo_qa::Args {
        data: a.data.clone(),
        model: a.model.clone(),
        backend: open::backend_options(&a.server, Some(a.window))?,
        encoder: open::encoder(g)?,
        window: a.window,
        full_window: a.full_window,
        arms: a.arms.clone(),
        questions: a.questions,
        conversations: a.conversations,
        trace: a.trace,
        progress: show_progress.then(|| {
            Box::new(|arm: &str, i: usize, n: usize| eprint!("\rengine {arm}: question {i}/{n}   "))
                as locomo_qa::Progress
        }),
    })?;
    if show_progress {
        eprintln!();
    }
    let code = emit(g, &report, report.table())?;
    if !g.json {
        // Wall times vary from run to run; the table does not.
        eprint!("{}", report.timing());
    }
    Ok(code)
}

fn bench_drift(g: &Global, a: &DriftArgs) -> anyhow::Result<ExitCode> {
    if let Some(k) = &a.keep {
        if k.exists() {
            anyhow::bail!(
                "{} already exists; --keep needs a new directory",
                k.display()
            );
        }
    }
    if a.stages < 20 {
        anyhow::bail!("--stages must be at least 20 (got {})", a.stages);
    }
    let backend = open::backend_options(&a.server, Some(a.window))?;
    let show_progress = !g.json && std::io::stderr().is_terminal();
    let report = drift::run(&drift::Args {
        model: a.model.clone(),
        window: a.window,
        stages: a.stages,
        backend,
        encoder: open::encoder(g)?,
        dir: a.keep.clone(),
        trace: a.trace,
        layouts: a.layouts.clone(),
        answer_tokens: a.answer_tokens,
        full_window: a.full_window,
        haystack: a.haystack.clone(),
        haystack_docs: a.haystack_docs,
        progress: show_progress.then(|| {
            Box::new(|arm: &str, i: usize, n: usize| eprint!("\rarm {arm}: turn {i}/{n}   "))
                as drift::Progress
        }),
    })?;
    if show_progress {
        eprintln!();
    }
    emit(g, &report, report.table())
}
