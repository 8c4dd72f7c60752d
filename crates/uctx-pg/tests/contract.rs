//! The pool contract ([`uctx::pool::Store`]), one suite for both pools: each
//! test runs on a directory pool, then on a team pool on PostgreSQL when
//! `UCTX_TEST_PG` names a server (`tools/postgres.sh start` prints one); each
//! Postgres run gets a schema of its own, dropped at the end.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Once};

use uctx::encoder::{Encoder, StaticEncoder};
use uctx::memory::{Memory, Ranking, Unit};
use uctx::pool::{Pool, PoolOptions, Scope, Store, WitnessEvent};
use uctx::{Error, NewSlice, Source};
use uctx_pg::{PgPool, Scratch};

const DIM: usize = 256;

fn opts(create: bool, fingerprint: &str) -> PoolOptions {
    PoolOptions {
        create,
        read_only: false,
        budget_bytes: None,
        encoder_fingerprint: fingerprint.into(),
        dim: DIM,
    }
}

/// Where one test's pool lives; reopened as often as the test likes.
enum Place {
    Dir(tempfile::TempDir),
    Pg(Scratch),
}

impl Place {
    fn name(&self) -> &'static str {
        match self {
            Place::Dir(_) => "directory",
            Place::Pg(_) => "postgres",
        }
    }

    fn open_with(&self, o: PoolOptions) -> uctx::Result<Arc<dyn Store>> {
        Ok(match self {
            Place::Dir(d) => Arc::new(Pool::open(&d.path().join("pool"), o)?),
            Place::Pg(pg) => Arc::new(PgPool::open(pg.url(), &o)?),
        })
    }

    fn open(&self) -> Arc<dyn Store> {
        self.open_with(opts(true, "test-encoder"))
            .unwrap_or_else(|e| panic!("open the {} pool: {e}", self.name()))
    }

    /// A second handle, as another machine would open it: a directory pool has
    /// one writer, so its threads share the first handle.
    fn another(&self, first: &Arc<dyn Store>) -> Arc<dyn Store> {
        match self {
            Place::Dir(_) => Arc::clone(first),
            Place::Pg(_) => self.open(),
        }
    }
}

/// The places a test runs in: a directory, and Postgres when `UCTX_TEST_PG` is set.
fn places(test: &str) -> Vec<Place> {
    let mut out = vec![Place::Dir(tempfile::tempdir().unwrap())];
    match std::env::var("UCTX_TEST_PG") {
        Ok(url) if !url.trim().is_empty() => {
            let schema = format!("uctx_test_{}_{test}", std::process::id());
            let pg = Scratch::create(&url, &schema)
                .unwrap_or_else(|e| panic!("UCTX_TEST_PG={url}: {e}"));
            out.push(Place::Pg(pg));
        }
        _ => {
            static NOTE: Once = Once::new();
            NOTE.call_once(|| {
                // Straight to the stream, past the test harness's capture.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: UCTX_TEST_PG is not set: the pool contract ran on the directory pool only \
                     (run `tools/postgres.sh start` and set UCTX_TEST_PG to the URL it prints)"
                );
            });
        }
    }
    out
}

/// A unit vector pointing mostly along axis `axis`.
fn vector(axis: usize, wobble: f32) -> Vec<f32> {
    let mut v = vec![0.01f32; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] = wobble;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn slice(ns: &str, text: &str, turn: u64) -> NewSlice {
    NewSlice {
        namespace: ns.into(),
        source: Source::User,
        text: text.into(),
        tokens: text.split_whitespace().count() as u32,
        turn,
        ext_id: None,
        salience: 0.7,
    }
}

#[test]
fn append_then_get_gives_back_every_field() {
    for place in places("roundtrip") {
        let pool = place.open();
        let mut doc = slice("docs", "café ☕ — a NUL \0 inside, and\nnew lines", 0);
        doc.source = Source::Document;
        doc.ext_id = Some("notes.md".into());
        doc.salience = 0.25;
        let batch = vec![
            (
                slice("alice", "the first thing alice said", 1),
                vector(1, 0.0),
            ),
            (doc, vector(2, 0.0)),
            (slice("bob", "bob's opening line", 7), vector(3, 0.0)),
        ];
        let ids = pool.append(&batch).unwrap();
        assert_eq!(ids.len(), 3, "{}", place.name());
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{}: ids {ids:?}",
            place.name()
        );
        drop(pool);
        let pool = place.open();
        for ((want, _), id) in batch.iter().zip(&ids) {
            let got = pool.get(*id).unwrap().expect("the slice is there");
            assert_eq!(got.text, want.text, "{}", place.name());
            let m = &got.meta;
            assert_eq!(m.id, *id);
            assert_eq!(m.namespace, want.namespace);
            assert_eq!(m.source, want.source);
            assert_eq!(m.tokens, want.tokens);
            assert_eq!(m.turn, want.turn);
            assert_eq!(m.ext_id, want.ext_id);
            assert!((m.salience - want.salience).abs() < 1e-6);
            assert_eq!((m.uses, m.pinned, m.last_used_seq), (0, false, *id));
            assert!(m.bytes > 0 && m.time_ms > 0);
            assert_eq!(pool.meta(*id).unwrap().as_ref(), Some(m));
        }
        assert_eq!(pool.get(ids[2] + 1000).unwrap(), None, "{}", place.name());
        let metas = pool.metas(Scope::All).unwrap();
        assert_eq!(metas.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        assert_eq!(pool.ids(Scope::Namespace("bob")).unwrap(), vec![ids[2]]);
        assert_eq!(pool.last_turn("bob").unwrap(), Some(7));
        assert_eq!(pool.last_turn("nobody").unwrap(), None);
        let s = pool.stats().unwrap();
        assert_eq!((s.slices, s.namespaces), (3, 3), "{}", place.name());
        assert_eq!(
            s.tokens,
            batch.iter().map(|(n, _)| n.tokens as u64).sum::<u64>()
        );
        assert_eq!(
            pool.namespaces().unwrap(),
            vec![("alice".into(), 1), ("bob".into(), 1), ("docs".into(), 1)]
        );
    }
}

#[test]
fn four_concurrent_writers_never_share_an_id() {
    for place in places("writers") {
        let first = place.open();
        let handles: Vec<_> = (0..4)
            .map(|w| {
                let pool = place.another(&first);
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for b in 0..20 {
                        let batch: Vec<_> = (0..3)
                            .map(|i| {
                                let text = format!("writer {w} batch {b} item {i}");
                                (slice(&format!("w{w}"), &text, b), vector(w * 10 + i, 0.1))
                            })
                            .collect();
                        let ids = pool.append(&batch).unwrap();
                        assert_eq!(ids.len(), 3);
                        acked.extend(ids.into_iter().zip(batch.into_iter().map(|(s, _)| s.text)));
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<(u64, String)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<u64> = acked.iter().map(|(id, _)| *id).collect();
        assert_eq!(unique.len(), 240, "{}: an id was given twice", place.name());
        drop(first);
        let pool = place.open();
        for (id, text) in &acked {
            let got = pool
                .get(*id)
                .unwrap()
                .expect("every acknowledged slice is there");
            assert_eq!(&got.text, text, "{}", place.name());
        }
        assert_eq!(pool.stats().unwrap().slices, 240);
    }
}

#[test]
fn eight_writers_and_eight_searchers_at_once() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    for place in places("crowd") {
        let first = place.open();
        let done = Arc::new(AtomicBool::new(false));
        let searches = Arc::new(AtomicU64::new(0));
        let searchers: Vec<_> = (0..8)
            .map(|s| {
                let pool = place.another(&first);
                let (done, searches) = (Arc::clone(&done), Arc::clone(&searches));
                std::thread::spawn(move || {
                    let ns = format!("w{s}");
                    // Bounded: until the writers finish, and never more than 2,000 rounds.
                    for round in 0..2000u64 {
                        if done.load(Ordering::Relaxed) && round > 0 {
                            break;
                        }
                        let hits = pool
                            .search(&vector(s * 10, 0.1), 10, Scope::Namespace(&ns))
                            .unwrap();
                        assert!(hits.iter().all(|h| h.meta.namespace == ns), "dense crossed");
                        for (id, _) in pool
                            .lexical_search("writer batch item", 10, Scope::Namespace(&ns))
                            .unwrap()
                        {
                            if let Some(m) = pool.meta(id).unwrap() {
                                assert_eq!(m.namespace, ns, "lexical crossed");
                            }
                        }
                        searches.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let pool = place.another(&first);
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for b in 0..15 {
                        let batch: Vec<_> = (0..4)
                            .map(|i| {
                                let text = format!("writer {w} batch {b} item {i}");
                                (slice(&format!("w{w}"), &text, b), vector(w * 10 + i, 0.1))
                            })
                            .collect();
                        let ids = pool.append(&batch).unwrap();
                        acked.extend(ids.into_iter().zip(batch.into_iter().map(|(s, _)| s.text)));
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<(u64, String)> = writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        done.store(true, Ordering::Relaxed);
        for s in searchers {
            s.join().unwrap();
        }
        assert!(searches.load(Ordering::Relaxed) >= 8, "{}", place.name());
        let unique: HashSet<u64> = acked.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            unique.len(),
            8 * 15 * 4,
            "{}: an id was given twice",
            place.name()
        );
        for (id, text) in &acked {
            let got = first
                .get(*id)
                .unwrap()
                .expect("every acknowledged slice is there");
            assert_eq!(&got.text, text, "{}", place.name());
        }
        for w in 0..8 {
            assert_eq!(
                first.ids(Scope::Namespace(&format!("w{w}"))).unwrap().len(),
                60
            );
        }
    }
}

#[test]
fn a_scoped_search_never_returns_another_namespace() {
    for place in places("scoped") {
        let pool = place.open();
        let mut batch = Vec::new();
        for i in 0..30 {
            // The same words and nearly the same vectors in both namespaces.
            batch.push((
                slice("a", &format!("deploy the service {i}"), i),
                vector(5, i as f32 * 0.01),
            ));
            batch.push((
                slice("b", &format!("deploy the service {i}"), i),
                vector(5, i as f32 * 0.01 + 0.001),
            ));
        }
        pool.append(&batch).unwrap();
        for ns in ["a", "b"] {
            let hits = pool
                .search(&vector(5, 0.0), 20, Scope::Namespace(ns))
                .unwrap();
            assert_eq!(hits.len(), 20, "{}", place.name());
            assert!(
                hits.iter().all(|h| h.meta.namespace == ns),
                "{}: dense crossed",
                place.name()
            );
            let lex = pool
                .lexical_search("deploy service", 20, Scope::Namespace(ns))
                .unwrap();
            assert_eq!(lex.len(), 20, "{}", place.name());
            for (id, _) in lex {
                assert_eq!(
                    pool.meta(id).unwrap().unwrap().namespace,
                    ns,
                    "{}: lexical crossed",
                    place.name()
                );
            }
        }
        assert!(pool
            .search(&vector(5, 0.0), 5, Scope::Namespace("c"))
            .unwrap()
            .is_empty());
        assert!(pool
            .lexical_search("deploy", 5, Scope::Namespace("c"))
            .unwrap()
            .is_empty());
        assert_eq!(
            pool.search(&vector(5, 0.0), 100, Scope::All).unwrap().len(),
            60
        );
    }
}

#[test]
fn deleting_a_namespace_removes_it_from_reads_and_searches() {
    for place in places("delete") {
        let pool = place.open();
        let a = pool
            .append(&[
                (slice("a", "kubernetes rollout notes", 1), vector(7, 0.0)),
                (slice("a", "kubernetes rollback notes", 2), vector(7, 0.1)),
            ])
            .unwrap();
        let b = pool
            .append(&[(slice("b", "kubernetes cluster notes", 1), vector(7, 0.05))])
            .unwrap();
        assert_eq!(pool.delete_namespace("a").unwrap(), 2, "{}", place.name());
        assert_eq!(pool.delete_namespace("a").unwrap(), 0);
        for id in &a {
            assert_eq!(pool.get(*id).unwrap(), None, "{}", place.name());
        }
        let hits = pool.search(&vector(7, 0.0), 10, Scope::All).unwrap();
        assert_eq!(
            hits.iter().map(|h| h.meta.id).collect::<Vec<_>>(),
            b,
            "{}",
            place.name()
        );
        let lex = pool
            .lexical_search("kubernetes notes", 10, Scope::All)
            .unwrap();
        assert_eq!(
            lex.iter().map(|h| h.0).collect::<Vec<_>>(),
            b,
            "{}",
            place.name()
        );
        assert_eq!(pool.namespaces().unwrap(), vec![("b".into(), 1)]);
        drop(pool);
        let pool = place.open();
        assert_eq!(
            pool.get(a[0]).unwrap(),
            None,
            "{}: the delete is durable",
            place.name()
        );
        assert_eq!(pool.forget(&b).unwrap(), 1);
        assert_eq!(pool.stats().unwrap().slices, 0);
        // New ids never reuse deleted ones.
        let c = pool
            .append(&[(slice("a", "again", 3), vector(8, 0.0))])
            .unwrap();
        assert!(c[0] > b[0], "{}", place.name());
    }
}

#[test]
fn pins_and_uses_survive_a_reopen_and_merge() {
    for place in places("witness") {
        let pool = place.open();
        let ids = pool
            .append(&[
                (slice("s", "pin me", 0), vector(9, 0.0)),
                (slice("s", "use me", 0), vector(10, 0.0)),
                (slice("t", "pin me too", 0), vector(11, 0.0)),
            ])
            .unwrap();
        // Two handles record uses of one slice: both count.
        let other = place.another(&pool);
        pool.record(&[WitnessEvent::Pin(ids[0]), WitnessEvent::Used(ids[1])])
            .unwrap();
        other
            .record(&[
                WitnessEvent::Used(ids[1]),
                WitnessEvent::Recalled(ids[1]),
                WitnessEvent::Pin(ids[2]),
            ])
            .unwrap();
        pool.record(&[WitnessEvent::Used(ids[2] + 999)]).unwrap(); // unknown: ignored
        drop((pool, other));
        let pool = place.open();
        assert_eq!(
            pool.pinned(Scope::All).unwrap(),
            vec![ids[0], ids[2]],
            "{}",
            place.name()
        );
        assert_eq!(pool.pinned(Scope::Namespace("s")).unwrap(), vec![ids[0]]);
        let used = pool.meta(ids[1]).unwrap().unwrap();
        assert_eq!(used.uses, 2, "{}: a use was lost", place.name());
        assert!(used.last_used_seq >= ids[2], "{}: {used:?}", place.name());
        assert!(!used.pinned);
        pool.record(&[WitnessEvent::Unpin(ids[0])]).unwrap();
        drop(pool);
        let pool = place.open();
        assert_eq!(
            pool.pinned(Scope::All).unwrap(),
            vec![ids[2]],
            "{}",
            place.name()
        );
    }
}

/// About a kilobyte of text that compresses poorly, different for each `n`.
fn filler(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..160)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("w{:x}", x % 0xfffff)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn over_its_budget_a_pool_evicts_the_oldest_unused_never_a_pinned_one() {
    for place in places("budget") {
        let pool = place.open();
        let pinned = pool
            .append(&[(slice("b", "the pinned fact", 0), vector(3, 0.0))])
            .unwrap()[0];
        pool.record(&[WitnessEvent::Pin(pinned)]).unwrap();
        let mut ids = Vec::new();
        for n in 0..150u64 {
            let s = slice("b", &filler(n), n + 1);
            ids.extend(pool.append(&[(s, vector(n as usize, 0.2))]).unwrap());
        }
        assert_eq!(pool.stats().unwrap().slices, 151, "{}", place.name());
        // A budget a fraction of what 150 slices take on either pool: it evicts at once.
        pool.set_budget(60_000).unwrap();
        let kept = pool.ids(Scope::All).unwrap();
        let name = place.name();
        assert!(
            kept.contains(&pinned),
            "{name}: the pinned slice was evicted"
        );
        assert!(kept.len() < 100, "{name}: {} slices kept", kept.len());
        assert!(
            kept.contains(ids.last().unwrap()),
            "{name}: the newest went"
        );
        // Equal salience, no uses: retention falls with age, so the oldest go first.
        let oldest_kept = kept.iter().copied().filter(|&i| i != pinned).min().unwrap();
        for id in &ids {
            assert_eq!(kept.contains(id), *id >= oldest_kept, "{name}: slice {id}");
        }
        // Writing on keeps it under: the pool does not grow past the budget.
        for n in 150..300u64 {
            let s = slice("b", &filler(n), n + 1);
            pool.append(&[(s, vector(n as usize, 0.2))]).unwrap();
        }
        let now = pool.ids(Scope::All).unwrap();
        assert!(
            now.contains(&pinned),
            "{name}: the pinned slice was evicted"
        );
        assert!(
            now.len() <= kept.len() + 20,
            "{name}: {} slices after 150 more writes, {} before",
            now.len(),
            kept.len()
        );
        let survivor = pool.get(*now.last().unwrap()).unwrap().unwrap();
        assert_eq!(survivor.text, filler(299), "{name}");
    }
}

#[test]
fn postgres_writers_over_a_budget_evict_one_at_a_time() {
    let Some(place) = pg_place("budget8") else {
        return;
    };
    let Place::Pg(pg) = &place else {
        unreachable!()
    };
    let (url, admin, schema) = (pg.url(), pg.server(), pg.name());
    let first = PgPool::open(url, &opts(true, "test-encoder")).unwrap();
    let pinned = first
        .append(&[(slice("p", "pinned under pressure", 0), vector(1, 0.0))])
        .unwrap()[0];
    first.record(&[WitnessEvent::Pin(pinned)]).unwrap();
    let budget = 200_000u64;
    first.set_budget(budget).unwrap();
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let pool = PgPool::open(&url, &opts(false, "test-encoder")).unwrap();
                for b in 0..40u64 {
                    let batch: Vec<_> = (0..2)
                        .map(|i| {
                            let n = w * 1000 + b * 2 + i;
                            (
                                slice(&format!("w{w}"), &filler(n), b),
                                vector(n as usize, 0.1),
                            )
                        })
                        .collect();
                    pool.append(&batch).unwrap();
                }
                pool.maintenance_error()
            })
        })
        .collect();
    for h in writers {
        assert_eq!(h.join().unwrap(), None, "an eviction failed");
    }
    first.evict().unwrap();
    let mut c = postgres::Client::connect(admin, postgres::NoTls).unwrap();
    let row = c
        .query_one(
            &format!("SELECT count(*), COALESCE(sum(bytes), 0)::bigint FROM {schema}.uctx_slices"),
            &[],
        )
        .unwrap();
    let (count, held): (i64, i64) = (row.get(0), row.get(1));
    assert!(count < 641, "nothing was evicted ({count} slices)");
    assert!(
        held as u64 <= budget,
        "{held} bytes held over a budget of {budget}"
    );
    assert!(
        first.get(pinned).unwrap().is_some(),
        "the pinned slice was evicted"
    );
    // What is left reads back whole.
    for id in first.ids(Scope::All).unwrap() {
        first.get(id).unwrap().unwrap();
    }
}

#[test]
fn dense_and_lexical_search_find_the_right_slice() {
    let encoder: Arc<dyn Encoder> = Arc::new(StaticEncoder::bundled().unwrap());
    let texts = [
        "PostgreSQL stores the team's memory with pgvector halfvec columns and an HNSW index.",
        "The espresso machine in the kitchen needs descaling every two weeks.",
        "Rust's borrow checker rejects two mutable references to one value.",
        "The quarterly budget review moved to Thursday afternoon.",
        "Our deploy pipeline builds containers and pushes them to the registry.",
    ];
    for place in places("hits") {
        let o = PoolOptions {
            dim: encoder.dim(),
            ..opts(true, &encoder.fingerprint())
        };
        let pool = place.open_with(o.clone()).unwrap();
        let memory = Memory::new(Arc::clone(&pool), Arc::clone(&encoder));
        let units: Vec<Unit<'_>> = texts
            .iter()
            .map(|t| Unit {
                namespace: "team",
                source: Source::Document,
                text: t,
                turn: 0,
                ext_id: None,
            })
            .collect();
        let ids = memory.write(&units).unwrap();
        assert_eq!(ids.len(), texts.len());
        let cases = [
            ("HNSW index with halfvec columns", 0),
            ("espresso machine descaling", 1),
            ("borrow checker mutable references", 2),
        ];
        for (query, want) in cases {
            for ranking in [Ranking::Dense, Ranking::Lexical, Ranking::DEFAULT] {
                let hits = memory
                    .search_with(query, 3, Scope::Namespace("team"), ranking)
                    .unwrap();
                assert_eq!(
                    hits.first().map(|h| h.meta.id),
                    Some(ids[want]),
                    "{}: {ranking:?} for {query:?} gave {hits:?}",
                    place.name()
                );
            }
        }
        let recalled = memory.recall("borrow checker", 1, Scope::All).unwrap();
        assert_eq!(recalled[0].slice.text, texts[2], "{}", place.name());
        assert!(memory
            .search("espresso", 3, Scope::Namespace("other"))
            .unwrap()
            .is_empty());
        // The encoder fingerprint is checked on open, as for a directory pool.
        drop((memory, pool));
        match place.open_with(PoolOptions {
            encoder_fingerprint: "another-encoder".into(),
            ..o.clone()
        }) {
            Err(Error::EncoderMismatch { .. }) => {}
            Err(e) => panic!("{}: wrong error {e}", place.name()),
            Ok(_) => panic!("{}: opened with another encoder", place.name()),
        }
        match place.open_with(PoolOptions { dim: 128, ..o }) {
            Err(Error::DimMismatch { .. }) => {}
            Err(e) => panic!("{}: wrong error {e}", place.name()),
            Ok(_) => panic!("{}: opened with another dimension", place.name()),
        }
    }
}

#[test]
fn a_read_only_handle_refuses_writes() {
    for place in places("readonly") {
        let pool = place.open();
        pool.append(&[(slice("a", "x", 0), vector(1, 0.0))])
            .unwrap();
        let ro = place
            .open_with(PoolOptions {
                read_only: true,
                ..opts(false, "test-encoder")
            })
            .unwrap();
        assert!(ro.is_read_only());
        assert_eq!(ro.stats().unwrap().slices, 1);
        let err = ro
            .append(&[(slice("a", "y", 0), vector(1, 0.0))])
            .unwrap_err();
        assert!(matches!(err, Error::ReadOnly(_)), "{}: {err}", place.name());
        assert!(matches!(ro.delete_namespace("a"), Err(Error::ReadOnly(_))));
        // Nothing to open: a read-only open creates nothing.
        drop((pool, ro));
    }
}

// ---- Postgres only ----------------------------------------------------------------------

fn pg_place(test: &str) -> Option<Place> {
    places(test).into_iter().find(|p| matches!(p, Place::Pg(_)))
}

#[test]
fn postgres_refuses_a_schema_newer_than_it_knows() {
    let Some(place) = pg_place("newer") else {
        return;
    };
    drop(place.open());
    let Place::Pg(pg) = &place else {
        unreachable!()
    };
    let (url, admin, schema) = (pg.url(), pg.server(), pg.name());
    let mut c = postgres::Client::connect(admin, postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "UPDATE {schema}.uctx_meta SET value = '99' WHERE key = 'schema_version'"
    ))
    .unwrap();
    let err = PgPool::open(url, &opts(false, "test-encoder"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("upgrade uctx"),
        "{err}"
    );
    let err = PgPool::inspect(url).unwrap_err().to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn postgres_a_copy_cut_short_resumes_keeping_ids_pins_and_uses() {
    let Some(to) = pg_place("resume") else {
        return;
    };
    let encoder: Arc<dyn Encoder> = Arc::new(StaticEncoder::bundled().unwrap());
    let o = PoolOptions {
        dim: encoder.dim(),
        ..opts(true, &encoder.fingerprint())
    };
    let from = Place::Dir(tempfile::tempdir().unwrap());
    let src = from.open_with(o.clone()).unwrap();
    let memory = Memory::new(Arc::clone(&src), Arc::clone(&encoder));
    for n in 0..700u64 {
        let text = format!(
            "note {n}: the build of module {} takes {} seconds",
            n % 37,
            n * 7 % 101
        );
        let unit = Unit {
            namespace: if n % 3 == 0 { "ops" } else { "dev" },
            source: Source::Document,
            text: &text,
            turn: n,
            ext_id: None,
        };
        memory.write(&[unit]).unwrap();
    }
    // Gaps in the source's ids, pins and uses.
    let ids = src.ids(Scope::All).unwrap();
    src.forget(&[ids[10], ids[400]]).unwrap();
    src.record(&[
        WitnessEvent::Pin(ids[5]),
        WitnessEvent::Pin(ids[600]),
        WitnessEvent::Used(ids[3]),
        WitnessEvent::Used(ids[650]),
        WitnessEvent::Used(ids[650]),
    ])
    .unwrap();
    let dst = to.open_with(o.clone()).unwrap();
    // The copy was cut short after its first batch: that batch is in, whole.
    let metas = src.metas(Scope::All).unwrap();
    let first: Vec<_> = metas[..256]
        .iter()
        .map(|m| {
            let s = src.get(m.id).unwrap().unwrap();
            let v = encoder.encode(&s.text);
            (s, v)
        })
        .collect();
    assert!(dst.import(&first).unwrap());
    let done = uctx_pg::copy(&*src, &*dst, &*encoder, &|_, _| {}).unwrap();
    assert_eq!(done.resumed, 256);
    assert_eq!(done.slices, metas.len() as u64 - 256);
    assert!(done.kept_ids);
    let (a, b) = (
        src.metas(Scope::All).unwrap(),
        dst.metas(Scope::All).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.id, y.id);
        assert_eq!(
            (
                &x.namespace,
                x.turn,
                x.uses,
                x.pinned,
                x.time_ms,
                x.last_used_seq
            ),
            (
                &y.namespace,
                y.turn,
                y.uses,
                y.pinned,
                y.time_ms,
                y.last_used_seq
            ),
            "slice {}",
            x.id
        );
        assert_eq!(
            src.get(x.id).unwrap().unwrap().text,
            dst.get(y.id).unwrap().unwrap().text
        );
    }
    // Writers after the copy draw ids above the copied ones.
    let next = dst
        .append(&[(slice("ops", "after the copy", 0), vector(1, 0.0))])
        .unwrap()[0];
    assert!(next > *a.last().map(|m| &m.id).unwrap());
    // A pool that is not an interrupted copy of the source is refused.
    let other = Place::Dir(tempfile::tempdir().unwrap());
    let unrelated = other.open_with(o.clone()).unwrap();
    let err = uctx_pg::copy(&*unrelated, &*dst, &*encoder, &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("not an interrupted copy"), "{err}");
}

#[test]
fn postgres_migrates_a_version_1_pool_when_a_writer_opens_it() {
    let Some(place) = pg_place("migrate") else {
        return;
    };
    let pool = place.open();
    let id = pool
        .append(&[(slice("m", "written under version 1", 0), vector(2, 0.0))])
        .unwrap()[0];
    drop(pool);
    let Place::Pg(pg) = &place else {
        unreachable!()
    };
    let (url, schema) = (pg.url(), pg.name());
    // What a version-1 pool holds: no serve journal, version 1 recorded.
    let mut c = postgres::Client::connect(pg.server(), postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "DROP TABLE {schema}.uctx_serve_journal; DROP SEQUENCE {schema}.uctx_serve_instance; \
         UPDATE {schema}.uctx_meta SET value = '1' WHERE key = 'schema_version'"
    ))
    .unwrap();
    let mut ro = opts(false, "test-encoder");
    ro.read_only = true;
    let err = PgPool::open(url, &ro).unwrap_err().to_string();
    assert!(
        err.contains("schema version 1") && err.contains("open it once with a writer"),
        "{err}"
    );
    let pool = PgPool::open(url, &opts(false, "test-encoder")).unwrap();
    assert_eq!(
        pool.get(id).unwrap().unwrap().text,
        "written under version 1"
    );
    pool.journal_append(&["{\"op\":\"new\"}".to_string()])
        .unwrap();
    assert_eq!(pool.journal_after(0).unwrap().0.len(), 1);
    let v: String = c
        .query_one(
            &format!("SELECT value FROM {schema}.uctx_meta WHERE key = 'schema_version'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, uctx_pg::SCHEMA_VERSION.to_string());
}

#[test]
fn postgres_says_how_to_start_a_server_that_is_down() {
    if pg_place("down").is_none() {
        return;
    }
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://someone:hunter2@127.0.0.1:{port}/uctx");
    let err = PgPool::open(&url, &opts(true, "test-encoder"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach the server"), "{err}");
    assert!(err.contains("tools/postgres.sh start"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

#[test]
fn postgres_names_a_missing_database_and_a_missing_pool() {
    let Some(place) = pg_place("missing") else {
        return;
    };
    let Place::Pg(pg) = &place else {
        unreachable!()
    };
    let (url, admin) = (pg.url(), pg.server());
    let (base, _) = admin.rsplit_once('/').unwrap();
    let err = PgPool::open(&format!("{base}/no_such_db_here"), &opts(true, "e"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_such_db_here") && err.contains("CREATE DATABASE"),
        "{err}"
    );
    let err = PgPool::open(url, &opts(false, "e"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no uctx pool"), "{err}");
}

#[test]
fn a_copy_keeps_text_provenance_pins_and_uses_either_way() {
    let encoder: Arc<dyn Encoder> = Arc::new(StaticEncoder::bundled().unwrap());
    let o = PoolOptions {
        dim: encoder.dim(),
        ..opts(true, &encoder.fingerprint())
    };
    for (i, from) in places("copy_from").into_iter().enumerate() {
        let src = from.open_with(o.clone()).unwrap();
        let memory = Memory::new(Arc::clone(&src), Arc::clone(&encoder));
        let mut ids = Vec::new();
        for (ns, text, source, turn) in [
            ("alice", "the staging host is db-7", Source::User, 1),
            ("alice", "noted: db-7 is staging", Source::Assistant, 1),
            ("docs", "backups run at 02:00", Source::Document, 0),
            ("docs", "always deploy on tuesdays", Source::Pinned, 0),
        ] {
            ids.extend(
                memory
                    .write(&[Unit {
                        namespace: ns,
                        source,
                        text,
                        turn,
                        ext_id: Some("origin.md"),
                    }])
                    .unwrap(),
            );
        }
        src.record(&[
            WitnessEvent::Pin(ids[3]),
            WitnessEvent::Used(ids[0]),
            WitnessEvent::Used(ids[0]),
            WitnessEvent::Used(ids[2]),
        ])
        .unwrap();
        src.delete_namespace("nobody").unwrap();
        for (j, to) in places(&format!("copy_into_{i}")).into_iter().enumerate() {
            let what = format!("{} → {}", from.name(), to.name());
            let dst = to.open_with(o.clone()).unwrap();
            let done = uctx_pg::copy(&*src, &*dst, &*encoder, &|_, _| {}).unwrap();
            // A team pool keeps the source's ids; a directory numbers its own.
            let team = matches!(to, Place::Pg(_));
            assert_eq!(
                done,
                uctx_pg::Copied {
                    slices: 4,
                    pinned: 1,
                    uses: 3,
                    kept_ids: team,
                    resumed: 0,
                },
                "{what}"
            );
            if team {
                assert_eq!(
                    src.ids(Scope::All).unwrap(),
                    dst.ids(Scope::All).unwrap(),
                    "{what}"
                );
            }
            let (a, b) = (
                src.metas(Scope::All).unwrap(),
                dst.metas(Scope::All).unwrap(),
            );
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(&b) {
                let (tx, ty) = (
                    src.get(x.id).unwrap().unwrap(),
                    dst.get(y.id).unwrap().unwrap(),
                );
                assert_eq!(tx.text, ty.text, "{what}");
                assert_eq!(
                    (
                        &x.namespace,
                        x.source,
                        x.turn,
                        &x.ext_id,
                        x.tokens,
                        x.uses,
                        x.pinned
                    ),
                    (
                        &y.namespace,
                        y.source,
                        y.turn,
                        &y.ext_id,
                        y.tokens,
                        y.uses,
                        y.pinned
                    ),
                    "{what}"
                );
                assert!((x.salience - y.salience).abs() < 1e-6, "{what}");
            }
            // The copy searches as the original does.
            let copy = Memory::new(Arc::clone(&dst), Arc::clone(&encoder));
            let hit = copy.recall("when do backups run", 1, Scope::All).unwrap();
            assert_eq!(hit[0].slice.text, "backups run at 02:00", "{what}");
            // A second copy into the same pool doubles nothing: a team pool finds
            // the copy complete (the same ids), a directory refuses it.
            match uctx_pg::copy(&*src, &*dst, &*encoder, &|_, _| {}) {
                Ok(again) => {
                    assert!(team, "{what}");
                    assert_eq!((again.slices, again.resumed), (0, 4), "{what}")
                }
                Err(e) => {
                    assert!(!team, "{what}");
                    assert!(
                        e.to_string().contains("already holds 4 slices"),
                        "{what}: {e}"
                    )
                }
            }
            assert_eq!(dst.stats().unwrap().slices, 4, "{what} ({j})");
        }
    }
}
