//! `uctx repair`, and what other commands say about a damaged or torn log.

use std::process::ExitCode;

use std::path::Path;

use uctx::pool::{CheckpointUse, Pool, Store, Verified, LOG_FILE};

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
    if r.checkpoint_removed {
        println!("checkpoint removed; the next open replays the whole log once");
    }
    Ok(ExitCode::SUCCESS)
}

/// `doctor --verify`'s lines.
pub fn report_verified(dir: &Path, v: &Verified, report: &mut dyn FnMut(bool, String)) {
    let fix = format!("run `uctx repair --pool {}`", dir.display());
    report(
        v.damage.is_empty() && v.torn_tail.is_none(),
        format!(
            "log: {} records, {} bytes{}",
            v.records,
            v.log_bytes,
            match (v.damage.len(), v.torn_tail) {
                (0, None) => String::new(),
                (0, Some(t)) => format!(" — {t} (the next writer cuts it)"),
                (n, _) => format!(
                    " — {n} damaged stretch(es), the first {}: {fix}",
                    v.damage[0]
                ),
            }
        ),
    );
    report(
        v.bad_segments.is_empty(),
        if v.bad_segments.is_empty() {
            format!("index: {} segment files check", v.segments)
        } else {
            let names: Vec<&str> = v.bad_segments.iter().map(|b| b.0.as_str()).collect();
            format!(
                "index: {} of {} segment files fail their checksum ({}) — {fix}; the next writer rebuilds them from the log",
                v.bad_segments.len(),
                v.segments,
                names.join(", ")
            )
        },
    );
    let (ok, line) = match (&v.checkpoint, v.checkpoint_agrees) {
        (CheckpointUse::Loaded { from, .. }, Some(true)) => (
            true,
            format!("checkpoint: covers the log to byte {from} and agrees with a full replay"),
        ),
        (CheckpointUse::Loaded { .. }, _) => (
            false,
            format!("checkpoint: disagrees with a full replay of the log — {fix}"),
        ),
        (CheckpointUse::Missing, _) => (
            true,
            "checkpoint: none yet (the next writer writes one)".to_string(),
        ),
        (CheckpointUse::Rejected { why }, _) => (
            true,
            format!("checkpoint: not used ({why}); opens replay the whole log until the next writer writes a new one"),
        ),
    };
    report(ok, line);
}

/// Say so on standard error when a writer's open could not use the
/// checkpoint and replayed the whole log.
pub fn note_checkpoint(pool: &dyn Store) {
    let Some(pool) = pool.as_dir() else {
        return;
    };
    if let CheckpointUse::Rejected { why } = pool.checkpoint_use() {
        eprintln!(
            "note: the checkpoint of {} was not used ({why}); the log was replayed whole, and a new checkpoint written",
            pool.dir().display()
        );
    }
}

/// Say so on standard error when opening `pool` cut a torn tail.
pub fn warn_cut(pool: &dyn Store) {
    let Some(pool) = pool.as_dir() else {
        return;
    };
    if let Some(t) = pool.tail_cut() {
        eprintln!(
            "warning: cut {t} of {} (a write that never completed)",
            pool.dir().join(LOG_FILE).display()
        );
    }
}

/// Say what a writer's open rebuilt of the lexical index from the log.
pub fn note_rebuilt(pool: &dyn Store) {
    let Some(pool) = pool.as_dir() else {
        return;
    };
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
pub fn note_unsealed(pool: &dyn Store) {
    let Some(pool) = pool.as_dir() else {
        return;
    };
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
    match pool.checkpoint_use() {
        CheckpointUse::Loaded { from, replayed } => {
            println!("opened    from the checkpoint (to byte {from}), then {replayed} bytes of log")
        }
        CheckpointUse::Missing => {
            println!("opened    by replaying the whole log (no checkpoint yet)")
        }
        CheckpointUse::Rejected { why } => {
            println!("opened    by replaying the whole log (checkpoint not used: {why})")
        }
    }
    for name in pool.damaged_logs() {
        println!(
            "repaired  the damaged log is kept as {name}; delete it once the pool looks right"
        );
    }
}
