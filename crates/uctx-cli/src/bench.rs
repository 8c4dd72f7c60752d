//! `uctx bench …`: run a benchmark, print its table or its JSON.

use std::io::IsTerminal;
use std::process::ExitCode;

use uctx::encoder::StaticEncoder;
use uctx_bench::{drift, encoder, locomo};

use crate::cli::{BenchArgs, BenchCommand, DriftArgs, EncoderBenchArgs, Global, LocomoArgs};
use crate::open;

pub fn bench(g: &Global, a: &BenchArgs) -> anyhow::Result<ExitCode> {
    match &a.which {
        BenchCommand::Drift(d) => bench_drift(g, d),
        BenchCommand::Encoder(e) => bench_encoder(g, e),
        BenchCommand::Locomo(l) => bench_locomo(g, l),
    }
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

fn bench_locomo(g: &Global, a: &LocomoArgs) -> anyhow::Result<ExitCode> {
    let report = locomo::run(&locomo::Args {
        data: a.data.clone(),
        encoder: open::encoder(g)?,
        reference: a.reference.clone(),
    })?;
    emit(g, &report, report.table())
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
    let backend = open::backend_options(&a.server, Some(a.window));
    let show_progress = !g.json && std::io::stderr().is_terminal();
    let report = drift::run(&drift::Args {
        model: a.model.clone(),
        window: a.window,
        stages: a.stages,
        backend,
        encoder: open::encoder(g)?,
        dir: a.keep.clone(),
        trace: a.trace,
        progress: show_progress.then(|| {
            Box::new(|arm: &str, i: usize, n: usize| eprint!("\rengine {arm}: turn {i}/{n}   "))
                as drift::Progress
        }),
    })?;
    if show_progress {
        eprintln!();
    }
    emit(g, &report, report.table())
}
