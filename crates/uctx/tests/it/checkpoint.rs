//! The checkpoint: an open that loads it and replays the log after it holds
//! exactly the state a full replay gives (slices, namespaces, pins, deletes,
//! witness state, next id, budget, both indexes' tombstones and tails); a
//! missing, damaged, truncated, swapped or stale checkpoint means a full
//! replay, said so, and the same state.

use std::path::Path;
use std::sync::Arc;

use uctx::pool::format::Header;
use uctx::pool::storage::{Dir, MemDir};
use uctx::pool::{
    CheckpointUse, Pool, PoolOptions, Scope, WitnessEvent, CHECKPOINT_FILE, LOG_FILE,
};

use crate::pool::{opts, ro, slice, small_index, text_of, unit};

const PATH: &str = "ckpt-pool";

fn writer(dir: &MemDir) -> Pool {
    let pool = Pool::open_with(Arc::new(dir.clone()), Path::new(PATH), opts()).unwrap();
    pool.set_index_tuning(small_index());
    pool.set_lexical_tuning(uctx::pool::lex::Tuning { seal_docs: 16 });
    pool
}

fn reader(dir: &MemDir) -> Pool {
    Pool::open_with(Arc::new(dir.clone()), Path::new(PATH), ro()).unwrap()
}

fn copy(dir: &MemDir) -> MemDir {
    let c = MemDir::new();
    for f in dir.list().unwrap() {
        c.set_bytes(&f, dir.bytes(&f).unwrap());
    }
    c
}

/// The state of `dir` by a full replay of its log (the checkpoint left out).
fn full_replay(dir: &MemDir) -> String {
    let c = copy(dir);
    c.remove(CHECKPOINT_FILE).unwrap();
    let r = reader(&c);
    assert_eq!(r.checkpoint_use(), CheckpointUse::Missing);
    r.state_digest()
}

/// What a user sees: every slice's metadata and text, searches, namespaces.
fn visible(pool: &Pool) -> String {
    // Bytes on disk aside: one of the two has no checkpoint file.
    let st = pool.stats();
    let mut o = format!(
        "{} {} {} {}\n{:?}\n",
        st.slices,
        st.tokens,
        st.budget_bytes,
        st.namespaces,
        pool.namespaces()
    );
    for m in pool.metas(Scope::All) {
        let text = pool.get(m.id).unwrap().unwrap().text;
        o += &format!("{m:?} {text}\n");
    }
    for q in [3u64, 77, 151, 404] {
        let hits = pool.search(&unit(q), 5, Scope::All).unwrap();
        let lex = pool.lexical_search(&text_of(q), 5, Scope::All).unwrap();
        o += &format!(
            "{:?} {lex:?}\n",
            hits.iter().map(|h| h.meta.id).collect::<Vec<_>>()
        );
    }
    o
}

/// A pool through everything the state derives: namespaces, pins and
/// unpins, uses and recalls, a namespace deleted, a budget change, index
/// seals and merges, a compaction, a dictionary; a checkpoint in the middle,
/// then more of the same after it.
fn busy(dir: &MemDir) {
    let pool = writer(dir);
    let mut n = 0u64;
    let mut round = |pool: &Pool, rounds: u64| {
        for r in 0..rounds {
            let ns = ["a", "b", "c"][(r % 3) as usize];
            let batch: Vec<_> = (n..n + 25).map(|k| slice(ns, k)).collect();
            let ids = pool.append(&batch).unwrap();
            n += 25;
            pool.record(&[
                WitnessEvent::Used(ids[1]),
                WitnessEvent::Recalled(ids[2]),
                WitnessEvent::Pin(ids[3]),
                WitnessEvent::Pin(ids[4]),
            ])
            .unwrap();
            pool.record(&[WitnessEvent::Unpin(ids[4]), WitnessEvent::Used(ids[1])])
                .unwrap();
            pool.settle();
        }
    };
    round(&pool, 30);
    pool.delete_namespace("b").unwrap();
    pool.compact().unwrap();
    round(&pool, 20);
    pool.checkpoint().unwrap();
    // After the checkpoint: more slices, a delete, a budget, seals.
    round(&pool, 12);
    pool.delete_namespace("c").unwrap();
    pool.set_budget(3 << 30).unwrap();
    round(&pool, 3);
    assert!(pool.index_stats().segments > 0);
    assert!(pool.has_dictionary(), "1,000 slices train a dictionary");
    assert_eq!(pool.maintenance_error(), None);
}

#[test]
fn an_open_from_the_checkpoint_holds_what_a_full_replay_does() {
    let dir = MemDir::new();
    busy(&dir);
    let want = full_replay(&dir);
    let r = reader(&dir);
    match r.checkpoint_use() {
        CheckpointUse::Loaded { from, replayed } => {
            assert!(from > 0 && replayed > 0, "{from} {replayed}")
        }
        other => panic!("the checkpoint was not used: {other:?}"),
    }
    same(&r.state_digest(), &want, "a reader");
    let c = copy(&dir);
    c.remove(CHECKPOINT_FILE).unwrap();
    same(&visible(&r), &visible(&reader(&c)), "what a user sees");
    drop(r);
    // A writer too, and it can go on writing.
    let w = writer(&dir);
    assert!(!w.checkpoint_use().replayed_whole());
    same(&w.state_digest(), &want, "a writer");
    let id = w.append(&[slice("a", 90_000)]).unwrap()[0];
    w.checkpoint().unwrap();
    drop(w);
    let r = reader(&dir);
    assert!(
        matches!(
            r.checkpoint_use(),
            CheckpointUse::Loaded { replayed: 0, .. }
        ),
        "{:?}",
        r.checkpoint_use()
    );
    assert_eq!(r.get(id).unwrap().unwrap().text, text_of(90_000));
    same(&r.state_digest(), &full_replay(&dir), "after another write");
    // And verification agrees.
    let v = Pool::verify_with(Arc::new(dir.clone()), Path::new(PATH)).unwrap();
    assert!(v.whole() && v.checkpoint_agrees == Some(true), "{v:?}");
}

/// Two digests are the same; else the first line that differs.
fn same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        if g != w {
            let cut = |s: &str| s.chars().take(600).collect::<String>();
            panic!(
                "{what}: line {i} differs:\n got  {}\n want {}",
                cut(g),
                cut(w)
            );
        }
    }
    panic!(
        "{what}: {} lines against {}",
        got.lines().count(),
        want.lines().count()
    );
}

fn from_of(pool: &Pool) -> u64 {
    match pool.checkpoint_use() {
        CheckpointUse::Loaded { from, .. } => from,
        other => panic!("{other:?}"),
    }
}

/// Open a reader on `dir` with its checkpoint replaced by `ckpt`: it must
/// replay the whole log (saying why) and hold the state of a full replay.
fn refused(dir: &MemDir, ckpt: Vec<u8>, what: &str) -> String {
    let c = copy(dir);
    c.set_bytes(CHECKPOINT_FILE, ckpt);
    let r = reader(&c);
    let why = match r.checkpoint_use() {
        CheckpointUse::Rejected { why } => why,
        other => panic!("{what}: the checkpoint was used: {other:?}"),
    };
    same(&r.state_digest(), &full_replay(dir), what);
    why
}

#[test]
fn a_damaged_truncated_swapped_or_stale_checkpoint_means_a_full_replay() {
    let dir = MemDir::new();
    busy(&dir);
    let good = dir.bytes(CHECKPOINT_FILE).unwrap();
    // A flipped bit anywhere.
    for k in 0..40usize {
        let at = (k * 7919 + k * k * 31) % good.len();
        let mut bad = good.clone();
        bad[at] ^= 1 << (k % 8);
        let why = refused(&dir, bad, &format!("flip at {at}"));
        assert!(
            why.contains("checksum") || why.contains("not a checkpoint"),
            "{why}"
        );
    }
    // Cut short, or empty.
    for keep in [0, 10, good.len() / 2, good.len() - 1] {
        refused(&dir, good[..keep].to_vec(), &format!("cut to {keep}"));
    }
    // Another pool's checkpoint.
    let other = MemDir::new();
    {
        let w = writer(&other);
        w.append(&[slice("a", 1), slice("a", 2)]).unwrap();
        w.checkpoint().unwrap();
    }
    let why = refused(
        &dir,
        other.bytes(CHECKPOINT_FILE).unwrap(),
        "another pool's",
    );
    assert!(why.contains("generation"), "{why}");
    // One from before a compaction: the log was rewritten since.
    {
        let w = writer(&dir);
        w.compact().unwrap();
    }
    let why = refused(&dir, good.clone(), "before a compaction");
    assert!(why.contains("generation"), "{why}");
}

#[test]
fn an_older_checkpoint_of_the_same_log_is_used_and_the_rest_replayed() {
    let dir = MemDir::new();
    {
        let w = writer(&dir);
        w.append(&(0..40).map(|k| slice("a", k)).collect::<Vec<_>>())
            .unwrap();
        w.checkpoint().unwrap();
    }
    let old = dir.bytes(CHECKPOINT_FILE).unwrap();
    {
        let w = writer(&dir);
        let ids = w
            .append(&(40..90).map(|k| slice("b", k)).collect::<Vec<_>>())
            .unwrap();
        w.record(&[WitnessEvent::Pin(ids[0]), WitnessEvent::Used(3)])
            .unwrap();
        w.delete_namespace("a").unwrap();
        w.checkpoint().unwrap();
    }
    let c = copy(&dir);
    c.set_bytes(CHECKPOINT_FILE, old);
    let r = reader(&c);
    assert!(!r.checkpoint_use().replayed_whole());
    same(&r.state_digest(), &full_replay(&dir), "an older checkpoint");
    assert_eq!(r.namespaces(), vec![("b".to_string(), 50)]);
}

#[test]
fn a_log_that_no_longer_holds_the_checkpoints_last_record_is_replayed_whole() {
    let dir = MemDir::new();
    busy(&dir);
    // The log cut short of what the checkpoint covers.
    let log = dir.bytes(LOG_FILE).unwrap();
    let from = from_of(&reader(&dir));
    let c = copy(&dir);
    c.set_bytes(LOG_FILE, log[..from as usize - 3].to_vec());
    let r = reader(&c);
    assert!(
        r.checkpoint_use().replayed_whole(),
        "{:?}",
        r.checkpoint_use()
    );
    // Another record where its last one was: its bytes changed.
    let c = copy(&dir);
    let mut bad = log.clone();
    bad[from as usize - 2] ^= 0x40;
    c.set_bytes(LOG_FILE, bad);
    let r = reader(&c);
    match r.checkpoint_use() {
        CheckpointUse::Rejected { why } => assert!(why.contains("another record"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A full replay then finds the damage, as it always did.
    assert!(r.torn_tail().is_some() || !r.damage().is_empty());
}

#[test]
fn a_version_2_pool_opens_and_its_writer_writes_a_checkpoint() {
    let dir = MemDir::new();
    {
        let w = writer(&dir);
        w.append(&(0..30).map(|k| slice("a", k)).collect::<Vec<_>>())
            .unwrap();
    }
    dir.remove(CHECKPOINT_FILE).unwrap();
    // The same log with a version-2 header (the records are the same).
    let mut log = dir.bytes(LOG_FILE).unwrap();
    let (_, len) = Header::peek_len(&log[..16]).unwrap();
    let mut h = Header::decode(&log[..len]).unwrap();
    h.version = 2;
    let old = h.encode();
    assert_eq!(old.len(), len);
    log[..len].copy_from_slice(&old);
    dir.set_bytes(LOG_FILE, log);
    let r = reader(&dir);
    assert_eq!(r.checkpoint_use(), CheckpointUse::Missing);
    assert_eq!(r.stats().slices, 30);
    drop(r);
    let w = writer(&dir);
    assert_eq!(w.checkpoint_use(), CheckpointUse::Missing);
    drop(w);
    assert!(dir.exists(CHECKPOINT_FILE), "the writer migrates the pool");
    let r = reader(&dir);
    assert!(!r.checkpoint_use().replayed_whole());
    same(&r.state_digest(), &full_replay(&dir), "migrated");
}

#[test]
fn turns_come_from_the_table_even_past_32_bits() {
    let dir = MemDir::new();
    let w = writer(&dir);
    let mut batch: Vec<_> = (0..5).map(|k| slice("s", k)).collect();
    batch[2].0.turn = 5_000_000_000;
    w.append(&batch).unwrap();
    w.append(&[slice("t", 7)]).unwrap();
    assert_eq!(w.last_turn("s").unwrap(), Some(5_000_000_000));
    assert_eq!(w.last_turn("t").unwrap(), Some(7));
    assert_eq!(w.last_turn("none").unwrap(), None);
    w.checkpoint().unwrap();
    drop(w);
    let r = reader(&dir);
    assert!(!r.checkpoint_use().replayed_whole());
    assert_eq!(r.last_turn("s").unwrap(), Some(5_000_000_000));
    let metas = r.metas(Scope::Namespace("s"));
    assert_eq!(
        metas.iter().map(|m| m.turn).max(),
        r.last_turn("s").unwrap()
    );
}

#[test]
fn a_reader_notices_a_new_checkpoint_without_listing_the_directory() {
    let dir = MemDir::new();
    let w = writer(&dir);
    w.append(&(0..10).map(|k| slice("a", k)).collect::<Vec<_>>())
        .unwrap();
    let r = reader(&dir);
    assert_eq!(r.index_stats().segments, w.index_stats().segments);
    // Enough to seal the vector index: the writer writes a checkpoint.
    w.append(&(10..600).map(|k| slice("a", k)).collect::<Vec<_>>())
        .unwrap();
    w.settle();
    assert!(w.index_stats().segments > 0);
    assert!(r.refresh().unwrap());
    assert!(!r.checkpoint_use().replayed_whole());
    assert_eq!(r.index_stats(), w.index_stats());
    same(
        &r.state_digest(),
        &w.state_digest(),
        "a reader after a refresh",
    );
    assert_eq!(r.stats().slices, 600);
}

#[test]
fn the_checkpoint_counts_in_the_budget_and_a_repair_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = Pool::open(&dir, PoolOptions { ..opts() }).unwrap();
    pool.append(&(0..50).map(|k| slice("a", k)).collect::<Vec<_>>())
        .unwrap();
    pool.checkpoint().unwrap();
    let ck = std::fs::metadata(dir.join(CHECKPOINT_FILE)).unwrap().len();
    let log = std::fs::metadata(dir.join(LOG_FILE)).unwrap().len();
    let st = pool.stats();
    assert_eq!(st.bytes_on_disk, log + ck);
    drop(pool);
    // A log damaged in what the checkpoint covers: an open from the
    // checkpoint does not read it, `verify` finds it, `repair` rewrites
    // the log and removes the checkpoint with the segments.
    let mut bytes = std::fs::read(dir.join(LOG_FILE)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x21;
    std::fs::write(dir.join(LOG_FILE), &bytes).unwrap();
    let v = Pool::verify(&dir).unwrap();
    assert!(!v.whole() && !v.damage.is_empty(), "{v:?}");
    assert_eq!(v.checkpoint_agrees, Some(false), "{v:?}");
    let r = Pool::repair(&dir).unwrap();
    assert!(r.rewritten && r.checkpoint_removed, "{r:?}");
    let pool = Pool::open(&dir, opts()).unwrap();
    assert_eq!(pool.checkpoint_use(), CheckpointUse::Missing);
    assert!(pool.stats().slices >= 48);
    assert!(Pool::verify(&dir).unwrap().whole());
}
