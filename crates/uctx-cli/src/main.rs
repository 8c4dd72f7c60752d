//! `uctx`: the command line. Thin: parsing, printing and exit codes; the work is in the engine.

mod bench;
mod chat;
mod cli;
mod ingest;
mod open;
mod repair;
mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!("\n  caused by: {c}"));
                }
            }
            let _ = writeln!(std::io::stderr(), "{msg}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    // Recorded in the pool's LOCK, so that a second writer learns who holds it.
    uctx::pool::set_purpose(cli.command.name());
    match &cli.command {
        Command::Init(a) => open::init(g, a),
        Command::Doctor(a) => open::doctor(g, a),
        Command::Chat(a) => chat::chat(g, a),
        Command::Run(a) => chat::run(g, a),
        Command::Ingest(a) => ingest::ingest(g, a),
        Command::Recall(a) => open::recall(g, a),
        Command::Status => open::status(g),
        Command::Clear(a) => open::clear(g, a),
        Command::Reembed => open::reembed(g),
        Command::Repair => repair::repair(g),
        Command::Bench(a) => bench::bench(g, a),
        Command::Serve(a) => serve::serve(g, a),
        Command::Mcp => serve::mcp(g),
        Command::Pool(a) => open::pool(g, a),
    }
}
