//! The lexical index: scoped search at any size, deletes, rebuilds, reopen.

use std::sync::Arc;

use uctx::pool::lex::{Tuning, LEX_PREFIX};
use uctx::pool::storage::{Dir, FileDir};
use uctx::pool::{Pool, Scope};
use uctx::NewSlice;

use crate::pool::{opts, ro, unit};

fn doc(ns: &str, n: u64) -> (NewSlice, Vec<f32>) {
    let text = format!(
        "note {n} tok{n} group{} shared words about ports and servers",
        n % 97
    );
    (
        NewSlice {
            namespace: ns.into(),
            source: uctx::Source::Document,
            tokens: 10,
            text,
            turn: n,
            ext_id: None,
            salience: 0.5,
        },
        unit(n),
    )
}

fn ns_of(n: u64) -> &'static str {
    ["a", "b", "c"][(n % 3) as usize]
}

/// Append slices `from..to`, namespaces by `ns_of`, in batches.
fn fill(pool: &Pool, from: u64, to: u64) -> Vec<u64> {
    fill_by(pool, from, to, 2500)
}

fn fill_by(pool: &Pool, from: u64, to: u64, per: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let all: Vec<u64> = (from..to).collect();
    for chunk in all.chunks(per) {
        let batch: Vec<_> = chunk.iter().map(|&n| doc(ns_of(n), n)).collect();
        ids.extend(pool.append(&batch).unwrap());
        // Seals and merges run on the pool's maintenance thread: a pass
        // after each batch, as a writer that appends slowly gets.
        pool.settle();
    }
    ids
}

fn lex_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(LEX_PREFIX) && n.ends_with(".bm25"))
        .collect();
    v.sort();
    v
}

const QUERIES: [&str; 6] = [
    "tok17",
    "group5 servers",
    "note 640 ports",
    "tok999 tok3 group40",
    "words",
    "absent-term",
];

fn answers(pool: &Pool) -> Vec<Vec<(u64, f32)>> {
    let mut out = Vec::new();
    for q in QUERIES {
        for scope in [Scope::All, Scope::Namespace("b"), Scope::Namespace("zz")] {
            out.push(pool.lexical_search(q, 20, scope).unwrap());
        }
    }
    out
}

#[test]
fn scoped_lexical_search_past_fifty_thousand_slices() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), opts()).unwrap();
    let n = 60_000u64;
    let ids = fill(&pool, 0, n);
    let stats = pool.lexical_stats();
    assert!(stats.segments >= 2, "{stats:?}");
    assert_eq!(stats.segment_docs + stats.tail_docs, n);
    assert!(stats.bytes > 0 && pool.stats().bytes_on_disk > stats.bytes);
    for probe in [1u64, 30_001, 59_998] {
        let id = ids[probe as usize];
        let q = format!("tok{probe}");
        let own = ns_of(probe);
        let got = pool.lexical_search(&q, 5, Scope::Namespace(own)).unwrap();
        assert_eq!(got.first().map(|h| h.0), Some(id), "{q} in {own}");
        let all = pool.lexical_search(&q, 5, Scope::All).unwrap();
        assert_eq!(all.first().map(|h| h.0), Some(id));
        let other = ns_of(probe + 1);
        let miss = pool.lexical_search(&q, 5, Scope::Namespace(other)).unwrap();
        assert!(
            miss.iter().all(|h| h.0 != id),
            "{q} must not leak into {other}"
        );
    }
    // A term in every slice: a scoped search returns only its namespace.
    let hits = pool
        .lexical_search("shared", 200, Scope::Namespace("c"))
        .unwrap();
    assert_eq!(hits.len(), 200);
    for (id, _) in hits {
        assert_eq!(pool.meta(id).unwrap().namespace, "c");
    }
}

#[test]
fn deleted_and_evicted_slices_are_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), opts()).unwrap();
    pool.set_lexical_tuning(Tuning { seal_docs: 64 });
    let ids = fill_by(&pool, 0, 3000, 300);
    assert!(pool.lexical_stats().segments > 1);
    let before = pool.lexical_search("words", 3000, Scope::All).unwrap();
    assert_eq!(before.len(), 3000);
    assert_eq!(pool.delete_namespace("b").unwrap(), 1000);
    let check = |pool: &Pool| {
        for q in QUERIES.iter().chain(["words", "tok1", "tok4"].iter()) {
            for (id, _) in pool.lexical_search(q, 3000, Scope::All).unwrap() {
                let m = pool.meta(id).expect("a live slice");
                assert_ne!(m.namespace, "b", "{q}: deleted slice {id}");
            }
            assert!(pool
                .lexical_search(q, 50, Scope::Namespace("b"))
                .unwrap()
                .is_empty());
        }
        assert_eq!(
            pool.lexical_search("words", 3000, Scope::All)
                .unwrap()
                .len(),
            2000
        );
    };
    check(&pool);
    // Slices still in the tail, found, then deleted there.
    let batch: Vec<_> = (3000..3030).map(|n| doc("t", n)).collect();
    let more = pool.append(&batch).unwrap();
    let found = pool.lexical_search("tok3002", 1, Scope::All).unwrap();
    assert_eq!(found[0].0, more[2]);
    assert!(pool.lexical_stats().tail_docs >= 30);
    assert_eq!(pool.delete_namespace("t").unwrap(), 30);
    assert!(pool
        .lexical_search("tok3002", 1, Scope::All)
        .unwrap()
        .is_empty());
    check(&pool);
    drop(pool);
    let pool = Pool::open(dir.path(), opts()).unwrap();
    check(&pool);
    let reader = Pool::open(dir.path(), ro()).unwrap();
    check(&reader);
    // Everything gone: nothing found, and segments rewritten without them.
    pool.clear().unwrap();
    for q in QUERIES {
        assert!(pool.lexical_search(q, 10, Scope::All).unwrap().is_empty());
    }
    reader.refresh().unwrap();
    assert!(reader
        .lexical_search("words", 10, Scope::All)
        .unwrap()
        .is_empty());
    assert_eq!(ids.len(), 3000);
}

#[test]
fn a_missing_or_damaged_lexical_segment_is_rebuilt_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(dir.path(), opts()).unwrap();
    pool.set_lexical_tuning(Tuning { seal_docs: 64 });
    fill_by(&pool, 0, 5000, 400);
    let want = answers(&pool);
    assert!(want.iter().any(|a| !a.is_empty()));
    let files = lex_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    drop(pool);
    // A clean reopen rebuilds nothing.
    let pool = Pool::open(dir.path(), opts()).unwrap();
    assert_eq!(pool.lexical_rebuilt(), None);
    assert_eq!(answers(&pool), want);
    drop(pool);
    // One segment gone, one damaged in its middle.
    let d = FileDir::new(dir.path());
    d.remove(&files[0]).unwrap();
    let f = d.open(&files[1], false).unwrap();
    let len = f.len().unwrap();
    let mut b = [0u8; 1];
    f.read_at(len / 2, &mut b).unwrap();
    f.write_at(len / 2, &[b[0] ^ 0x5a]).unwrap();
    f.sync().unwrap();
    drop(f);
    // Opening reads no segment whole: `verify` finds the damage and
    // `repair` removes the file.
    let v = Pool::verify(dir.path()).unwrap();
    assert_eq!(v.bad_segments.len(), 1, "{v:?}");
    assert_eq!(v.bad_segments[0].0, files[1]);
    let r = Pool::repair(dir.path()).unwrap();
    assert_eq!(r.segments_removed, 1, "{r:?}");
    // A reader still answers the same (from the log), before any writer.
    let reader = Pool::open(dir.path(), ro()).unwrap();
    assert_eq!(answers(&reader), want);
    assert!(reader.lexical_unsealed() > 0);
    drop(reader);
    let pool = Pool::open(dir.path(), opts()).unwrap();
    let r = pool.lexical_rebuilt().expect("the rebuild is reported");
    assert!(r.slices > 0, "{r:?}");
    assert_eq!(answers(&pool), want);
    assert!(!lex_files(dir.path()).contains(&files[1]));
    drop(pool);
    // Every lexical file gone (as in a pool from before the index).
    for f in lex_files(dir.path()) {
        d.remove(&f).unwrap();
    }
    let pool = Pool::open(dir.path(), opts()).unwrap();
    let r = pool.lexical_rebuilt().expect("the rebuild is reported");
    assert!(r.slices >= 3000, "{r:?}");
    assert!(!lex_files(dir.path()).is_empty());
    assert_eq!(answers(&pool), want);
    drop(pool);
    let pool = Pool::open(dir.path(), opts()).unwrap();
    assert_eq!(pool.lexical_rebuilt(), None, "built once");
    assert_eq!(answers(&pool), want);
}

#[test]
fn reopen_gives_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Arc::new(Pool::open(dir.path(), opts()).unwrap());
    pool.set_lexical_tuning(Tuning { seal_docs: 100 });
    fill(&pool, 0, 2345);
    let want = answers(&pool);
    let reader = Pool::open(dir.path(), ro()).unwrap();
    assert_eq!(answers(&reader), want);
    // The reader follows the writer's appends and seals.
    fill(&pool, 2345, 2600);
    let want = answers(&pool);
    assert_eq!(answers(&reader), want);
    drop(pool);
    let pool = Pool::open(dir.path(), opts()).unwrap();
    assert_eq!(answers(&pool), want);
    assert_eq!(answers(&Pool::open(dir.path(), ro()).unwrap()), want);
}
