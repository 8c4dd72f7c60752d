//! `uctx repair`, and what other commands say about a damaged or torn log.

use std::process::ExitCode;

use uctx::pool::{Pool, LOG_FILE};

use crate::cli::Global;
use crate::open::{pool_dir, print_json};

pub fn repair(g: &Global) -> anyhow::Result<ExitCode> {
    let dir = pool_dir(g)?;
    let r = Pool::repair(&dir)?;
    if g.json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !r.rewritten {
        println!(
            "{} is whole ({} records, {} of them slices): nothing to repair",
            r.log.display(),
            r.kept_records,
            r.kept_slices
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "repaired  {}: kept {} records ({} of them slices), {} bytes",
        r.log.display(),
        r.kept_records,
        r.kept_slices,
        r.kept_bytes
    );
    for d in &r.lost {
        println!("lost      {d}");
    }
    if let Some(t) = r.torn_tail {
        println!("cut       {t} (a write that never completed)");
    }
    if let Some(copy) = &r.damaged_copy {
        println!(
            "kept      the damaged log as {} — delete it once the pool looks right",
            dir.join(copy).display()
        );
    }
    if r.segments_removed > 0 {
        println!(
            "index     removed {} segment files; the next writer rebuilds them from the log",
            r.segments_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Say so on standard error when opening `pool` cut a torn tail.
pub fn warn_cut(pool: &Pool) {
    if let Some(t) = pool.tail_cut() {
        eprintln!(
            "warning: cut {t} of {} (a write that never completed)",
            pool.dir().join(LOG_FILE).display()
        );
    }
}

/// Say what a writer's open rebuilt of the lexical index from the log.
pub fn note_rebuilt(pool: &Pool) {
    if let Some(r) = pool.lexical_rebuilt() {
        let dropped = match r.dropped {
            0 => String::new(),
            n => format!("; dropped {n} damaged, stale or superseded segment file(s)"),
        };
        eprintln!(
            "note: built the lexical index of {} slices from the log of {} (it was missing, damaged, or from an older uctx){dropped}",
            r.slices,
            pool.dir().display()
        );
    }
}

/// Say when a reader searched many slices lexically that no segment holds.
pub fn note_unsealed(pool: &Pool) {
    let n = pool.lexical_unsealed();
    if n > 2 * uctx::pool::lex::SEAL_DOCS as u64 {
        eprintln!(
            "note: {n} slices of {} are in no lexical segment (an older pool, or a lost segment) and were indexed from the log for this search; the next command that writes to the pool (ingest, chat, serve) builds the segments",
            pool.dir().display()
        );
    }
}

/// `status`'s lines on damage, a torn tail, and damaged logs a repair kept.
pub fn print_status(pool: &Pool) {
    for d in pool.damage() {
        println!(
            "damaged   {d}, {} records after it — writers refuse the pool: run `uctx repair --pool {}`",
            d.records_after,
            pool.dir().display()
        );
    }
    if let Some(t) = pool.torn_tail() {
        println!("torn      {t} (the next writer cuts it)");
    }
    for name in pool.damaged_logs() {
        println!(
            "repaired  the damaged log is kept as {name}; delete it once the pool looks right"
        );
    }
}
