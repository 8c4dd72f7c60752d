//! Power loss, simulated: a pool written through [`CrashDir`] is stopped at a random
//! mutation (during ingest, witness events, eviction, compaction, index seal or
//! merge), the disk is taken as it would come back (synced bytes, and a random
//! prefix of what followed), and the pool must open from it holding every slice it
//! acknowledged, each whole, and must take writes again. And single-byte damage:
//! every flip of the log or of an index segment ends in every undamaged slice
//! readable, or in a refusal that names the offset — never in silent loss.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use uctx::pool::storage::{CrashDir, Dir, MemDir};
use uctx::pool::{
    CheckpointUse, Pool, PoolOptions, Scope, WitnessEvent, CHECKPOINT_FILE, LOG_FILE,
};
use uctx::Error;

use crate::pool::{opts, slice, text_of};

const PATH: &str = "crash-pool";

/// Slices acknowledged (id → the number its text was made from), and pins acknowledged.
#[derive(Default)]
struct Acked {
    slices: HashMap<u64, u64>,
    pinned: Vec<u64>,
}

fn tuning() -> uctx::pool::ann::Tuning {
    uctx::pool::ann::Tuning {
        seal_rows: 30,
        list_rows: 8,
        ..Default::default()
    }
}

fn open(dir: Arc<dyn Dir>, budget: Option<u64>) -> uctx::Result<Pool> {
    let pool = Pool::open_with(
        dir,
        Path::new(PATH),
        PoolOptions {
            budget_bytes: budget,
            ..opts()
        },
    )?;
    pool.set_index_tuning(tuning());
    Ok(pool)
}

/// A fixed mix of appends, witness events, pins and explicit compactions; stops at
/// the first error (the machine has stopped).
fn workload(pool: &Pool, acked: &mut Acked) {
    let mut n = 0u64;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for step in 0..90u64 {
        let size = 1 + next() % 6;
        let batch: Vec<_> = (n..n + size).map(|k| slice("c", k)).collect();
        match pool.append(&batch) {
            Ok(ids) => acked.slices.extend(ids.into_iter().zip(n..n + size)),
            Err(_) => return,
        }
        // The maintenance thread's pass (eviction, compaction, seals) runs
        // here, so that the stop points fall at the same mutations each run.
        pool.settle();
        n += size;
        // Witness events for slices the pool still holds (evicted ones have none).
        let mut ids: Vec<u64> = pool.metas(Scope::All).iter().map(|m| m.id).collect();
        ids.retain(|id| acked.slices.contains_key(id));
        if step % 5 == 4 && !ids.is_empty() {
            let used = ids[(next() % ids.len() as u64) as usize];
            if pool.record(&[WitnessEvent::Used(used)]).is_err() {
                return;
            }
            pool.settle();
        }
        if step % 17 == 3 && !ids.is_empty() {
            let pin = ids[(next() % ids.len() as u64) as usize];
            if pool.record(&[WitnessEvent::Pin(pin)]).is_err() {
                return;
            }
            pool.settle();
            acked.pinned.push(pin);
        }
        if step % 29 == 28 && pool.compact().is_err() {
            return;
        }
    }
}

/// Every slice the pool holds is whole: its text is exactly what was written.
fn check_whole(pool: &Pool, what: &str) {
    for m in pool.metas(Scope::All) {
        let s = pool
            .get(m.id)
            .unwrap_or_else(|e| panic!("{what}: slice {} unreadable: {e}", m.id))
            .unwrap_or_else(|| panic!("{what}: slice {} listed but absent", m.id));
        let k: u64 = m
            .ext_id
            .as_deref()
            .and_then(|e| e.strip_prefix("ext-"))
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("{what}: slice {} has a torn ext id", m.id));
        assert_eq!(s.text, text_of(k), "{what}: slice {} is not whole", m.id);
    }
}

fn reader(dir: &MemDir) -> Pool {
    Pool::open_with(
        Arc::new(dir.clone()),
        Path::new(PATH),
        PoolOptions {
            create: false,
            read_only: true,
            ..opts()
        },
    )
    .unwrap()
}

/// A reader's state from the checkpoint (where it is used) is the state of a
/// full replay of the log.
fn check_checkpoint(dir: &MemDir, what: &str) -> bool {
    let with = reader(dir);
    let whole = MemDir::new();
    for f in dir.list().unwrap() {
        if f != CHECKPOINT_FILE {
            whole.set_bytes(&f, dir.bytes(&f).unwrap());
        }
    }
    let whole = reader(&whole);
    assert_eq!(with.state_digest(), whole.state_digest(), "{what}");
    !with.checkpoint_use().replayed_whole()
}

/// Run the workload to a random stop `trials` times; `budget` drives eviction and
/// compaction. With a budget, unpinned slices may be evicted, so only pins must stay.
fn crash_trials(trials: u64, budget: Option<u64>) {
    // The whole workload's mutations, to choose stop points among them.
    let total = {
        let dir = CrashDir::new();
        let pool = open(Arc::new(dir.clone()), budget).unwrap();
        let start = dir.ops();
        workload(&pool, &mut Acked::default());
        dir.ops() - start
    };
    assert!(
        total > 200,
        "the workload does too little: {total} mutations"
    );
    let mut opened_with_index = 0;
    // Stops that left a checkpoint behind the log (the machine stopped after
    // writes that followed it, or while a newer one was being written: names
    // reach the disk only through the rename that installs it).
    let (mut from_checkpoint, mut behind) = (0, 0);
    for trial in 0..trials {
        let dir = CrashDir::new();
        let pool = open(Arc::new(dir.clone()), budget).unwrap();
        let stop = (trial.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % (total + 1);
        dir.crash_after(stop);
        let mut acked = Acked::default();
        workload(&pool, &mut acked);
        drop(pool);
        let what = format!("trial {trial}, stop after {stop} of {total} mutations");
        let image = dir.image(trial);
        // What the crash left, loaded from its checkpoint, is what a full replay gives.
        check_checkpoint(&image, &what);
        let pool = open(Arc::new(image.clone()), budget)
            .unwrap_or_else(|e| panic!("{what}: the pool does not open: {e}"));
        if let CheckpointUse::Loaded { replayed, .. } = pool.checkpoint_use() {
            from_checkpoint += 1;
            behind += usize::from(replayed > 0);
        }
        check_whole(&pool, &what);
        if budget.is_none() {
            for (&id, &k) in &acked.slices {
                let s = pool.get(id).unwrap().map(|s| s.text);
                assert_eq!(s, Some(text_of(k)), "{what}: acknowledged slice {id} lost");
            }
        }
        for &id in &acked.pinned {
            let m = pool.metas(Scope::All).into_iter().find(|m| m.id == id);
            assert!(
                m.is_some_and(|m| m.pinned),
                "{what}: acknowledged pin {id} lost"
            );
        }
        // Search finds what the pool holds, segments or not.
        if let Some(m) = pool.metas(Scope::All).first() {
            let k: u64 = m.ext_id.as_deref().unwrap()[4..].parse().unwrap();
            let hits = pool
                .search_exact(&crate::pool::unit(k), 1, Scope::All)
                .unwrap();
            assert_eq!(hits[0].meta.id, m.id, "{what}");
        }
        if pool.index_stats().segments > 0 {
            opened_with_index += 1;
        }
        // And it takes writes again, and opens after them.
        let id = pool
            .append(&[slice("c", 900_000)])
            .unwrap_or_else(|e| panic!("{what}: no write after reopening: {e}"))[0];
        drop(pool);
        let pool = open(Arc::new(image.clone()), budget).unwrap();
        assert_eq!(pool.get(id).unwrap().unwrap().text, text_of(900_000));
        drop(pool);
        assert!(
            check_checkpoint(&image, &what),
            "{what}: no checkpoint after a writer"
        );
    }
    eprintln!(
        "power loss: {trials} stops (budget {budget:?}); {opened_with_index} reopened with index segments, {from_checkpoint} from a checkpoint, {behind} of them behind the log"
    );
    assert!(
        from_checkpoint > trials / 4,
        "too few stops after a checkpoint: {from_checkpoint}"
    );
    assert!(behind > 0, "no stop left a checkpoint behind the log");
    assert!(
        opened_with_index > trials / 4,
        "too few stops after an index seal: {opened_with_index}"
    );
}

#[test]
fn power_loss_at_600_points_of_ingest_witness_seal_merge_and_compaction() {
    crash_trials(600, None);
}

#[test]
fn power_loss_at_400_points_under_a_budget_keeps_pins_and_whole_slices() {
    crash_trials(400, Some(24_000));
}

/// A healthy pool with index segments, on an in-memory disk.
fn built() -> (MemDir, HashMap<u64, u64>) {
    let mem = MemDir::new();
    let pool = open(Arc::new(mem.clone()), None).unwrap();
    let mut acked = Acked::default();
    workload(&pool, &mut acked);
    assert!(pool.index_stats().segments > 0);
    drop(pool);
    (mem, acked.slices)
}

#[test]
fn a_thousand_single_byte_flips_never_lose_silently() {
    let (mem, acked) = built();
    let mut files: Vec<String> = mem.list().unwrap();
    files.sort();
    let segments: Vec<String> = files
        .iter()
        .filter(|f| f.starts_with("seg-"))
        .cloned()
        .collect();
    assert!(!segments.is_empty());
    let mut refused = 0;
    let mut cut_losses = 0;
    let (mut verified, mut noticed_on_read) = (0, 0);
    // Whether the checkpoint `pool` loaded covers byte `at` of the log.
    let covered = |pool: &Pool, target: &str, at: usize| {
        target == LOG_FILE
            && matches!(pool.checkpoint_use(), CheckpointUse::Loaded { from, .. } if (at as u64) < from)
    };
    for flip in 0..1000u64 {
        let copy = MemDir::new();
        for f in &files {
            copy.set_bytes(f, mem.bytes(f).unwrap());
        }
        // Four flips in six hit the log, one an index segment, one the checkpoint.
        let target = match flip % 6 {
            0..=3 => LOG_FILE.to_string(),
            4 => segments[(flip as usize / 6) % segments.len()].clone(),
            _ => CHECKPOINT_FILE.to_string(),
        };
        let mut bytes = copy.bytes(&target).unwrap();
        let at = (flip.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7) as usize % bytes.len();
        bytes[at] ^= 1 << (flip % 8);
        copy.set_bytes(&target, bytes);
        let what = format!("flip {flip}: bit {} of byte {at} of {target}", flip % 8);
        match open(Arc::new(copy.clone()), None) {
            Ok(pool) if covered(&pool, &target, at) => {
                // The checkpoint covers the flip: the open did not read it. Every
                // read checks its record, so a slice reads whole or not at all,
                // and a verification finds the damage.
                for (&id, &k) in &acked {
                    match pool.get(id) {
                        Ok(Some(s)) => assert_eq!(s.text, text_of(k), "{what}"),
                        Ok(None) => panic!("{what}: slice {id} lost silently"),
                        Err(e) => {
                            assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
                            noticed_on_read += 1;
                        }
                    }
                }
                drop(pool);
                let v = Pool::verify_with(Arc::new(copy.clone()), Path::new(PATH)).unwrap();
                assert!(!v.whole(), "{what}: verify found nothing: {v:?}");
                verified += 1;
            }
            Ok(pool) => {
                if target == CHECKPOINT_FILE {
                    assert!(
                        matches!(pool.checkpoint_use(), CheckpointUse::Rejected { .. }),
                        "{what}: {:?}",
                        pool.checkpoint_use()
                    );
                }
                check_whole(&pool, &what);
                // Opened for writing: nothing is missing but what lay in a damaged
                // last record, which the writer cut and reports.
                let held: Vec<u64> = pool.metas(Scope::All).iter().map(|m| m.id).collect();
                let newest = held.iter().copied().max().unwrap_or(0);
                for (&id, &k) in &acked {
                    match pool.get(id).unwrap() {
                        Some(s) => assert_eq!(s.text, text_of(k), "{what}"),
                        None => {
                            let cut = pool.tail_cut();
                            cut_losses += 1;
                            assert!(
                                cut.is_some() && id > newest,
                                "{what}: slice {id} lost silently (cut: {cut:?})"
                            );
                            assert!(
                                at as u64 >= cut.unwrap().offset,
                                "{what}: cut before the flip"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                refused += 1;
                let msg = e.to_string();
                assert_eq!(target, LOG_FILE, "{what}: a damaged segment refused: {msg}");
                match &e {
                    Error::Damaged { offset, .. } => {
                        assert!(*offset <= at as u64, "{what}: {msg}");
                        assert!(
                            msg.contains("byte") && msg.contains("uctx repair"),
                            "{what}: {msg}"
                        );
                    }
                    // The header: its version, dimension, or encoder no longer match, or
                    // it does not check.
                    Error::Corrupt { .. }
                    | Error::Version { .. }
                    | Error::DimMismatch { .. }
                    | Error::EncoderMismatch { .. } => {}
                    _ => panic!("{what}: an unclear refusal: {msg}"),
                }
                // A reader still reads every slice the damage did not touch.
                let reader = Pool::open_with(
                    Arc::new(copy.clone()),
                    Path::new(PATH),
                    PoolOptions {
                        create: false,
                        read_only: true,
                        ..opts()
                    },
                );
                if let (Ok(reader), Error::Damaged { .. }) = (reader, &e) {
                    check_whole(&reader, &what);
                    let held = reader.metas(Scope::All).len();
                    assert!(
                        held + 6 >= acked.len(),
                        "{what}: a reader holds {held} of {} slices; damage {:?}; {msg}",
                        acked.len(),
                        reader.damage()
                    );
                }
            }
        }
    }
    eprintln!(
        "byte flips: 1000; refused with the offset: {refused}; opened: {}; slices lost with a cut last record: {cut_losses}; under the checkpoint, found by verify: {verified} (reads refused: {noticed_on_read})",
        1000 - refused
    );
    assert!(refused > 0, "no flip was ever noticed");
    assert!(verified > 0, "no flip fell under the checkpoint");
}
