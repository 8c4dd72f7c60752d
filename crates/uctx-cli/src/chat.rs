//! `uctx chat` and `uctx run`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use uctx::session::{self, Session, SessionConfig, TurnReport};

use crate::cli::{ChatArgs, Global, RunArgs, SessionArgs};
use crate::open;

const HELP: &str = "\
/status          what the session and the pool hold, and the pager's hit rate
/pin TEXT        keep TEXT in every window from now on
/recall QUERY    search this session's memory
/clear           forget this session's turns and pins (asks first; documents stay)
/export FILE     write the conversation so far to FILE (markdown)
/help            this list
/quit            leave (also Ctrl-D)";

fn open_session(g: &Global, a: &SessionArgs) -> anyhow::Result<Session> {
    let memory = open::memory_rw(g)?;
    let backend = open::backend(&a.model)?;
    let mut cfg = SessionConfig {
        namespace: a.namespace.clone(),
        window: a.model.ctx,
        answer_tokens: a.answer_tokens,
        paging: !a.no_memory,
        shared: a.shared,
        docs: a.docs.clone(),
        resume: !a.fresh,
        ..SessionConfig::default()
    };
    if let Some(s) = &a.system {
        cfg.system_prompt = s.clone();
    }
    Ok(Session::open(memory, backend, cfg)?)
}

fn finish(g: &Global, session: &Session) -> anyhow::Result<()> {
    if let Some(p) = session.pager_stats() {
        open::save_pager_stats(g, &p)?;
    }
    Ok(())
}

fn stream_to_stdout() -> impl FnMut(&str) {
    let mut out = std::io::stdout();
    move |t: &str| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    }
}

pub fn chat(g: &Global, a: &ChatArgs) -> anyhow::Result<ExitCode> {
    let mut session = open_session(g, &a.session)?;
    let interactive = std::io::stdin().is_terminal();
    // Ctrl-C during an answer stops it and keeps what streamed (marked); between
    // turns it quits, as in any shell tool. Every turn is already synced.
    let in_turn = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(AtomicBool::new(false));
    session.set_interrupt(Arc::clone(&interrupt));
    {
        let (in_turn, interrupt) = (Arc::clone(&in_turn), Arc::clone(&interrupt));
        let handler = ctrlc::set_handler(move || {
            if in_turn.load(Ordering::SeqCst) {
                interrupt.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        });
        if let Err(e) = handler {
            eprintln!("note: Ctrl-C will end the chat, not just the answer ({e})");
        }
    }
    if interactive {
        eprintln!(
            "uctx chat — {} · window {} tokens · namespace {:?} · /help for commands",
            a.session.model.model,
            session.window_size(),
            session.namespace()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut on_text = stream_to_stdout();
    let result = loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let line = match lines.next() {
            None => break Ok(()),
            Some(l) => l.context("reading standard input")?,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
            match command(&mut session, name, arg.trim()) {
                Ok(true) => continue,
                Ok(false) => break Ok(()),
                Err(e) => {
                    eprintln!("error: {e}");
                    continue;
                }
            }
        }
        in_turn.store(true, Ordering::SeqCst);
        let turn = session.turn(line, &mut on_text);
        in_turn.store(false, Ordering::SeqCst);
        match turn {
            Ok(r) => {
                println!();
                if r.interrupted {
                    eprintln!("[interrupted: the answer so far is kept, marked as cut]");
                }
                if interactive {
                    eprintln!("{}", turn_footer(&r));
                }
            }
            // A failed turn is reported; nothing of it is kept, so it can be asked again.
            Err(e) if interactive => eprintln!("\nerror: {e}"),
            Err(e) => break Err(e.into()),
        }
    };
    finish(g, &session)?;
    result.map(|()| ExitCode::SUCCESS)
}

fn turn_footer(r: &TurnReport) -> String {
    format!(
        "[turn {} · {} tokens sent{} · {} paged in · {} recent turns]",
        r.turn,
        r.prompt_tokens_reported
            .map_or(format!("≈{}", r.window.est_tokens), |n| n.to_string()),
        if r.window.input_cut {
            " · input cut"
        } else {
            ""
        },
        r.window.memory.len(),
        r.window.recent_turns
    )
}

/// Run a slash command; `Ok(false)` means quit.
fn command(session: &mut Session, name: &str, arg: &str) -> anyhow::Result<bool> {
    match name {
        "quit" | "exit" | "q" => return Ok(false),
        "help" | "h" | "?" => println!("{HELP}"),
        "status" => {
            let s = session.stats();
            let pool = session.memory().pool().stats()?;
            println!(
                "namespace {:?} · window {} · {} turns · {} prompt tokens sent ({} counted by the server) · token scale {:.2}",
                session.namespace(),
                session.window_size(),
                s.turns,
                s.prompt_tokens_est,
                s.prompt_tokens_reported,
                s.token_scale
            );
            println!(
                "paged in {} slices, {} used by the model · pool {} slices, {} tokens, {:.1} MB",
                s.paged_slices,
                s.used_slices,
                pool.slices,
                pool.tokens,
                pool.bytes_on_disk as f64 / 1e6
            );
            if let Some(p) = session.pager_stats() {
                match p.hit_rate() {
                    Some(r) => println!(
                        "pager: hit rate {:.1}% ({} hits, {} misses; {} predicted from the streamed answer), {} searches, {} warm",
                        100.0 * r,
                        p.hits,
                        p.misses,
                        p.predicted,
                        p.searches,
                        p.cached
                    ),
                    None => println!("pager: nothing paged in yet ({} searches)", p.searches),
                }
            }
        }
        "pin" => {
            let id = session.pin(arg)?;
            println!("pinned as memory {id}");
        }
        "recall" => {
            if arg.is_empty() {
                anyhow::bail!("usage: /recall QUERY");
            }
            for r in session.recall(arg, 5)? {
                println!(
                    "── {:.3}  {}",
                    r.score,
                    session::memory_block(&r.slice, &r.slice.text)
                );
            }
        }
        "clear" => {
            let ns = session.namespace().to_string();
            if arg != "yes" {
                let n = session
                    .memory()
                    .pool()
                    .namespaces()?
                    .into_iter()
                    .find(|(name, _)| *name == ns)
                    .map_or(0, |(_, n)| n);
                println!(
                    "/clear deletes this session's {n} slices (namespace {ns:?}); documents in \
                     other namespaces are kept. Type /clear yes to confirm."
                );
            } else {
                let n = session.clear()?;
                println!("forgot {n} slices of namespace {ns:?}");
            }
        }
        "export" => {
            if arg.is_empty() {
                anyhow::bail!("usage: /export FILE");
            }
            let mut text = String::new();
            for t in session.transcript()? {
                text.push_str(&format!(
                    "## {} (turn {})\n\n{}\n\n",
                    t.role.as_str(),
                    t.turn,
                    t.text
                ));
            }
            std::fs::write(arg, text).with_context(|| format!("writing {arg}"))?;
            println!("wrote {arg}");
        }
        other => anyhow::bail!("unknown command /{other}; /help lists them"),
    }
    Ok(true)
}

pub fn run(g: &Global, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut session = open_session(g, &a.session)?;
    let mut on_text = stream_to_stdout();
    let json = g.json;
    let mut steps = Vec::new();
    let result = session::run_task(
        &mut session,
        &a.task,
        a.max_steps,
        &mut |t| {
            if !json {
                on_text(t)
            }
        },
        &mut |step, r| {
            if json {
                steps.push(serde_json::json!({
                    "step": step,
                    "answer": r.answer,
                    "paged": r.window.memory.len(),
                    "prompt_tokens": r.prompt_tokens_reported,
                }));
            } else {
                println!();
                eprintln!("{}", turn_footer(r));
            }
        },
    );
    finish(g, &session)?;
    let (n, done) = result?;
    if json {
        open::print_json(&serde_json::json!({"steps": steps, "finished": done}))?;
    } else if done {
        eprintln!("done after {n} steps");
    } else {
        eprintln!("stopped after {n} steps without DONE (raise --max-steps to go on)");
    }
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
