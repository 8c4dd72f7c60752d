//! `uctx bench …`: run a benchmark, print its table or its JSON.

use std::io::IsTerminal;
use std::process::ExitCode;

use uctx::backend::BackendOptions;
use uctx_bench::drift;

use crate::cli::{BenchArgs, BenchCommand, DriftArgs, Global};
use crate::open;

pub fn bench(g: &Global, a: &BenchArgs) -> anyhow::Result<ExitCode> {
    match &a.which {
        BenchCommand::Drift(d) => bench_drift(g, d),
    }
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
    let backend = BackendOptions {
        ollama_host: a.host.clone(),
        openai_base_url: a.base_url.clone(),
        openai_api_key: a.api_key.clone(),
        context_override: Some(a.window),
        timeout: None,
    }
    .with_env();
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
                as Box<dyn Fn(&str, usize, usize)>
        }),
    })?;
    if show_progress {
        eprintln!();
    }
    if g.json {
        open::print_json(&report)?;
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}
