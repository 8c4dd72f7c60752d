//! The pool: durability, isolation, locking, recovery, budget.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uctx::pool::storage::{Dir, Fault, FaultyDir, MemDir};
use uctx::pool::{Pool, PoolOptions, Scope, WitnessEvent, END_FILE, LOG_FILE};
use uctx::{Error, NewSlice, Source};

const DIM: usize = 16;
const FP: &str = "test-encoder:v1";

pub(crate) fn opts() -> PoolOptions {
    PoolOptions {
        create: true,
        read_only: false,
        budget_bytes: None,
        encoder_fingerprint: FP.into(),
        dim: DIM,
    }
}

pub(crate) fn ro() -> PoolOptions {
    PoolOptions {
        create: false,
        read_only: true,
        ..opts()
    }
}

/// A deterministic pseudo-random unit vector.
pub(crate) fn unit(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|a| *a /= n);
    v
}

pub(crate) fn text_of(n: u64) -> String {
    format!(
        "slice number {n}: the port is {} and the name is café-{n} 漢字 🚀",
        1000 + n
    )
}

pub(crate) fn slice(ns: &str, n: u64) -> (NewSlice, Vec<f32>) {
    (
        NewSlice {
            namespace: ns.into(),
            source: Source::User,
            text: text_of(n),
            tokens: 12,
            turn: n,
            ext_id: Some(format!("ext-{n}")),
            salience: 0.5,
        },
        unit(n),
    )
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn append_get_search_round_trip_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let ids;
    {
        let pool = Pool::open(&dir, opts()).unwrap();
        ids = pool
            .append(&[slice("a", 1), slice("a", 2), slice("b", 3)])
            .unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let s = pool.get(ids[1]).unwrap().unwrap();
        assert_eq!(s.text, text_of(2));
        assert_eq!(s.meta.namespace, "a");
        assert_eq!(s.meta.ext_id.as_deref(), Some("ext-2"));
        assert_eq!(s.meta.turn, 2);
        assert_eq!(s.meta.source, Source::User);
        let hits = pool.search(&unit(3), 1, Scope::All).unwrap();
        assert_eq!(hits[0].meta.id, ids[2]);
        assert!((hits[0].score - 1.0).abs() < 0.01, "{}", hits[0].score);
        pool.record(&[WitnessEvent::Used(ids[0]), WitnessEvent::Pin(ids[1])])
            .unwrap();
        let st = pool.stats();
        assert_eq!((st.slices, st.tokens, st.namespaces), (3, 36, 2));
        assert!(st.bytes_on_disk > 0);
        assert_eq!(pool.get(999).unwrap(), None);
        assert!(matches!(
            pool.search(&[1.0; 3], 1, Scope::All),
            Err(Error::DimMismatch {
                expected: 16,
                got: 3
            })
        ));
    }
    let pool = Pool::open(&dir, opts()).unwrap();
    assert_eq!(pool.stats().slices, 3);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(pool.get(*id).unwrap().unwrap().text, text_of(i as u64 + 1));
    }
    assert_eq!(pool.meta(ids[0]).unwrap().uses, 1);
    assert!(pool.meta(ids[1]).unwrap().pinned);
    // Ids keep growing after a reopen.
    let more = pool.append(&[slice("a", 4)]).unwrap();
    assert!(more[0] > ids[2]);
}

#[test]
fn namespaces_are_isolated_and_search_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    let batch: Vec<_> = (0..300)
        .map(|n| slice(["a", "b", "c"][(n % 3) as usize], n))
        .collect();
    let ids = pool.append(&batch).unwrap();
    for q in 0..20u64 {
        let query = unit(10_000 + q);
        let hits = pool.search(&query, 10, Scope::Namespace("b")).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.meta.namespace == "b"));
        // The exact answer, by brute force over namespace b.
        let mut want: Vec<(f32, u64)> = (0..300u64)
            .filter(|n| n % 3 == 1)
            .map(|n| (dot(&query, &unit(n)), ids[n as usize]))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        let got: Vec<u64> = hits.iter().map(|h| h.meta.id).collect();
        let want: Vec<u64> = want.iter().take(10).map(|w| w.1).collect();
        // f16 storage may swap near-ties; demand 9 of 10.
        let common = got.iter().filter(|g| want.contains(g)).count();
        assert!(common >= 9, "{got:?} vs {want:?}");
    }
    assert!(pool
        .search(&unit(1), 5, Scope::Namespace("zzz"))
        .unwrap()
        .is_empty());
    let all = pool.search(&unit(5), 300, Scope::All).unwrap();
    assert_eq!(all.len(), 300);
    assert_eq!(pool.metas(Scope::Namespace("c")).len(), 100);
    assert!(pool
        .metas(Scope::Namespace("c"))
        .windows(2)
        .all(|w| w[0].id < w[1].id));
}

#[test]
fn delete_namespace_and_clear() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        let batch: Vec<_> = (0..30)
            .map(|n| slice(if n < 10 { "x" } else { "y" }, n))
            .collect();
        pool.append(&batch).unwrap();
        assert_eq!(pool.delete_namespace("x").unwrap(), 10);
        assert_eq!(pool.delete_namespace("x").unwrap(), 0);
        assert_eq!(pool.namespaces(), vec![("y".to_string(), 20)]);
        assert!(pool
            .search(&unit(3), 5, Scope::Namespace("x"))
            .unwrap()
            .is_empty());
        assert!(pool
            .search(&unit(3), 30, Scope::All)
            .unwrap()
            .iter()
            .all(|h| h.meta.namespace == "y"));
        // A namespace written again after its deletion starts empty.
        pool.append(&[slice("x", 100)]).unwrap();
    }
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert_eq!(
        pool.namespaces(),
        vec![("x".to_string(), 1), ("y".to_string(), 20)]
    );
    assert_eq!(pool.clear().unwrap(), 21);
    assert_eq!(pool.stats().slices, 0);
    drop(pool);
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert_eq!(pool.stats().slices, 0);
}

#[test]
fn second_writer_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Pool::open(tmp.path(), opts()).unwrap();
    let err = Pool::open(tmp.path(), opts()).unwrap_err();
    match &err {
        Error::Locked { holder, .. } => {
            assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            )
        }
        e => panic!("expected Locked, got {e}"),
    }
    assert!(err.to_string().contains("read-only"));
    // A reader is fine while the writer holds the lock.
    let reader = Pool::open(tmp.path(), ro()).unwrap();
    assert!(reader.append(&[slice("a", 1)]).is_err());
    drop(first);
    Pool::open(tmp.path(), opts()).unwrap();
}

/// Child roles, selected by environment variables; a no-op in a normal run.
#[test]
fn child_role() {
    let Ok(dir) = std::env::var("UCTX_POOL_TEST_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    match std::env::var("UCTX_POOL_TEST_ROLE").as_deref() {
        Ok("hold") => {
            let _pool = Pool::open(dir, opts()).unwrap();
            println!("ready");
            std::thread::sleep(Duration::from_secs(30));
        }
        Ok("writer") => {
            use std::io::Write;
            let budget = std::env::var("UCTX_POOL_TEST_BUDGET")
                .ok()
                .and_then(|b| b.parse().ok());
            let pool = Pool::open(
                dir,
                PoolOptions {
                    budget_bytes: budget,
                    ..opts()
                },
            )
            .unwrap();
            if std::env::var("UCTX_POOL_TEST_SMALL_INDEX").is_ok() {
                pool.set_index_tuning(uctx::pool::ann::Tuning {
                    seal_rows: 64,
                    list_rows: 8,
                    ..Default::default()
                });
            }
            let start: u64 = std::env::var("UCTX_POOL_TEST_START")
                .unwrap()
                .parse()
                .unwrap();
            let mut n = start;
            let out = std::io::stdout();
            loop {
                let size = 1 + (n % 7);
                let batch: Vec<_> = (n..n + size).map(|k| slice("kill", k)).collect();
                let ids = pool.append(&batch).unwrap();
                let mut lock = out.lock();
                for (k, id) in (n..n + size).zip(ids) {
                    writeln!(lock, "ack {k} {id}").unwrap();
                }
                lock.flush().unwrap();
                n += size;
            }
        }
        _ => {}
    }
}

fn child(dir: &Path, role: &str, start: u64) -> std::process::Child {
    child_with_env(dir, role, start, &[])
}

/// A child in `role`, with more environment variables for it.
fn child_with_env(
    dir: &Path,
    role: &str,
    start: u64,
    env: &[(&str, String)],
) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args([
        "--exact",
        "pool::child_role",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("UCTX_POOL_TEST_DIR", dir)
    .env("UCTX_POOL_TEST_ROLE", role)
    .env("UCTX_POOL_TEST_START", start.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

/// Start a writer child at `start`, let it write for `wait` after its
/// first acknowledgement, SIGKILL it, and return what it acknowledged.
fn kill_writer(dir: &Path, start: u64, wait: Duration, env: &[(&str, String)]) -> Vec<(u64, u64)> {
    let mut c = child_with_env(dir, "writer", start, env);
    let (reader, first_rx) = read_acks(c.stdout.take().unwrap());
    // Kill at a random moment after the writer got going.
    let _ = first_rx.recv_timeout(Duration::from_secs(10));
    std::thread::sleep(wait);
    c.kill().unwrap();
    c.wait().unwrap();
    reader.join().unwrap()
}

/// The next number of a xorshift sequence.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn writer_in_another_process_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Pool::open(tmp.path(), opts()).unwrap());
    let mut c = child(tmp.path(), "hold", 0);
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    loop {
        let l = lines.next().expect("child exited early").unwrap();
        if l.ends_with("ready") {
            break;
        }
    }
    let err = Pool::open(tmp.path(), opts()).unwrap_err();
    c.kill().unwrap();
    c.wait().unwrap();
    match err {
        Error::Locked { holder, .. } => {
            assert!(holder.contains(&format!("pid {}", c.id())), "{holder}");
            // The program, never its arguments (the child runs with a test filter).
            assert!(holder.contains(" since unix time "), "{holder}");
            assert!(!holder.contains("child_role"), "{holder}");
        }
        e => panic!("expected Locked, got {e}"),
    }
    // The OS released the dead child's lock.
    Pool::open(tmp.path(), opts()).unwrap();
}

/// SIGKILL a writer while it seals and merges index segments: every
/// acknowledged slice is still found by a search through the index.
#[test]
fn kill_9_during_index_work_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Pool::open(tmp.path(), opts()).unwrap());
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut next = 0u64;
    for run in 0..20 {
        let wait = Duration::from_micros(xorshift(&mut rng) % 60_000);
        let env = [("UCTX_POOL_TEST_SMALL_INDEX", "1".to_string())];
        let got = kill_writer(tmp.path(), next, wait, &env);
        if let Some(&(k, _)) = got.last() {
            next = k + 1;
        }
        acked.extend(got);
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        let leftovers = segment_files(tmp.path())
            .into_iter()
            .filter(|f| f.ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0, "run {run}: an unfinished segment was kept");
        for &(k, id) in &acked {
            // A batch written but not yet acknowledged when the writer died
            // is written again by the next one: a vector can be there twice.
            let hits = pool.search_exact(&unit(k), 3, Scope::All).unwrap();
            assert!(
                hits.iter().any(|h| h.meta.id == id),
                "run {run}: acknowledged slice {id} is missing from the index"
            );
        }
    }
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert!(
        pool.index_stats().segments > 0,
        "the writer never sealed a segment: {:?}",
        pool.index_stats()
    );
}

/// SIGKILL a writer at random moments; every acknowledged slice survives.
#[test]
fn kill_9_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Pool::open(tmp.path(), opts()).unwrap());
    let runs: u64 = std::env::var("UCTX_KILL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ std::process::id() as u64;
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut next = 0u64;
    let t0 = Instant::now();
    for run in 0..runs {
        let wait = Duration::from_micros(xorshift(&mut rng) % 40_000);
        let got = kill_writer(tmp.path(), next, wait, &[]);
        if let Some(&(k, _)) = got.last() {
            next = k + 1;
        }
        acked.extend(got);
        // Reopen as the next writer would, and check everything acknowledged.
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        for &(k, id) in &acked {
            let s = pool
                .get(id)
                .unwrap()
                .unwrap_or_else(|| panic!("run {run}: acknowledged slice {id} lost"));
            assert_eq!(s.text, text_of(k), "run {run}: slice {id}");
        }
        // Ids were never reused across kills.
        let mut ids: Vec<u64> = acked.iter().map(|a| a.1).collect();
        ids.dedup();
        assert_eq!(ids.len(), acked.len());
    }
    assert!(!acked.is_empty(), "the writer never acknowledged anything");
    eprintln!(
        "kill -9: {runs} runs, {} acknowledged slices, {:?}",
        acked.len(),
        t0.elapsed()
    );
}

#[test]
fn torn_tail_is_cut_and_complete_records_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = {
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        let mut ids = Vec::new();
        for b in 0..5 {
            ids.extend(
                pool.append(&[slice("t", b * 2), slice("t", b * 2 + 1)])
                    .unwrap(),
            );
        }
        ids
    };
    let log = tmp.path().join(LOG_FILE);
    let full = std::fs::read(&log).unwrap();
    // Cut the last record in half, then add garbage after it.
    let mut torn = full[..full.len() - 100].to_vec();
    torn.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&log, &torn).unwrap();
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert!(pool.cut_on_open() > 0);
    for (i, id) in ids.iter().enumerate().take(9) {
        assert_eq!(pool.get(*id).unwrap().unwrap().text, text_of(i as u64));
    }
    assert_eq!(pool.get(ids[9]).unwrap(), None);
    let again = pool.append(&[slice("t", 99)]).unwrap();
    drop(pool);
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert_eq!(pool.cut_on_open(), 0);
    assert_eq!(pool.get(again[0]).unwrap().unwrap().text, text_of(99));
    assert_eq!(pool.stats().slices, 10);
}

#[test]
fn flipped_byte_in_the_tail_is_detected_by_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = {
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        let a = pool.append(&[slice("t", 1)]).unwrap();
        let b = pool.append(&[slice("t", 2)]).unwrap();
        [a[0], b[0]]
    };
    let log = tmp.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    let pool = Pool::open(tmp.path(), ro()).unwrap();
    assert!(pool.get(ids[0]).unwrap().is_some());
    assert!(pool.get(ids[1]).unwrap().is_none());
}

#[test]
fn encoder_dim_and_version_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Pool::open(tmp.path(), opts()).unwrap());
    let other = PoolOptions {
        encoder_fingerprint: "another-encoder:v2".into(),
        ..opts()
    };
    match Pool::open(tmp.path(), other).unwrap_err() {
        Error::EncoderMismatch { pool, current } => {
            assert_eq!(pool, FP);
            assert_eq!(current, "another-encoder:v2");
        }
        e => panic!("expected EncoderMismatch, got {e}"),
    }
    let wrong_dim = PoolOptions { dim: 8, ..opts() };
    assert!(matches!(
        Pool::open(tmp.path(), wrong_dim),
        Err(Error::DimMismatch {
            expected: 16,
            got: 8
        })
    ));
    let log = tmp.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[8] = 7;
    std::fs::write(&log, &bytes).unwrap();
    let err = Pool::open(tmp.path(), opts()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Version {
                found: 7,
                supported: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade uctx"), "{err}");
    // Version 1 stored f16 vectors; it is refused with the way forward.
    bytes[8] = 1;
    std::fs::write(&log, &bytes).unwrap();
    let err = Pool::open(tmp.path(), opts()).unwrap_err();
    assert!(err.to_string().contains("re-ingest"), "{err}");
    std::fs::write(&log, b"this is not a pool at all, just text").unwrap();
    assert!(matches!(
        Pool::open(tmp.path(), opts()),
        Err(Error::Corrupt { .. })
    ));
    let missing = tmp.path().join("missing");
    let err = Pool::open(&missing, ro()).unwrap_err();
    assert!(err.to_string().contains("uctx init"), "{err}");
}

fn mem_pool(dir: Arc<dyn Dir>) -> uctx::Result<Pool> {
    Pool::open_with(dir, Path::new("mem-pool"), opts())
}

/// The disk fills while a segment is written: the append it follows is
/// durable, the index keeps the rows in its tail, the failure is reported,
/// and once there is room the index catches up.
#[test]
fn a_full_disk_while_sealing_loses_nothing_and_the_index_catches_up() {
    let mem = MemDir::new();
    drop(mem_pool(Arc::new(mem.clone())).unwrap());
    let faulty = FaultyDir::new(Arc::new(mem.clone()), u64::MAX / 2, Fault::DiskFull);
    let pool = mem_pool(Arc::new(faulty.clone())).unwrap();
    pool.set_index_tuning(small_index());
    let mut acked = Vec::new();
    let mut n = 0;
    let mut batch = |pool: &Pool, acked: &mut Vec<(u64, u64)>| -> uctx::Result<()> {
        let b: Vec<_> = (n..n + 20).map(|k| slice("f", k)).collect();
        let ids = pool.append(&b)?;
        pool.settle();
        acked.extend(ids.into_iter().zip(n..n + 20));
        n += 20;
        Ok(())
    };
    for _ in 0..24 {
        batch(&pool, &mut acked).unwrap();
    }
    assert_eq!(pool.index_stats().segments, 0);
    // Room for the log's next batch, not for the segment it triggers.
    faulty.allow(6_000);
    batch(&pool, &mut acked).unwrap();
    let why = pool
        .maintenance_error()
        .expect("the failed seal is reported");
    assert!(why.contains("disk is full"), "{why}");
    assert_eq!(pool.index_stats().segments, 0);
    assert_eq!(pool.index_stats().tail_rows, 500);
    for &(id, k) in &acked {
        let hits = pool.search(&unit(k), 1, Scope::All).unwrap();
        assert_eq!(hits[0].meta.id, id);
    }
    faulty.allow(u64::MAX / 2);
    for _ in 0..8 {
        batch(&pool, &mut acked).unwrap();
    }
    assert_eq!(pool.maintenance_error(), None);
    assert!(pool.index_stats().segments >= 1, "{:?}", pool.index_stats());
    drop(pool);
    let pool = mem_pool(Arc::new(mem.clone())).unwrap();
    for &(id, k) in &acked {
        assert_eq!(pool.get(id).unwrap().unwrap().text, text_of(k));
        let hits = pool.search_exact(&unit(k), 1, Scope::All).unwrap();
        assert_eq!(hits[0].meta.id, id);
    }
    let names = mem.list().unwrap();
    assert!(!names.iter().any(|f| f.ends_with(".tmp")), "{names:?}");
}

/// A failed append returns a clear error; the pool still opens with every
/// slice acknowledged before it.
#[test]
fn io_errors_and_full_disk_lose_nothing_acknowledged() {
    for fault in [Fault::Io, Fault::DiskFull] {
        for allow in [0u64, 100, 700, 1500, 3000, 5000, 9000] {
            for fail_sync in [false, true] {
                let mem = MemDir::new();
                // Create the pool on healthy storage first.
                drop(mem_pool(Arc::new(mem.clone())).unwrap());
                let mut faulty = FaultyDir::new(Arc::new(mem.clone()), allow, fault);
                if fail_sync {
                    faulty = faulty.with_failing_sync();
                }
                let pool = mem_pool(Arc::new(faulty.clone())).unwrap();
                let mut acked = Vec::new();
                let mut n = 0;
                let err = loop {
                    match pool.append(&[slice("f", n), slice("f", n + 1)]) {
                        Ok(ids) => acked.extend(ids.into_iter().zip([n, n + 1])),
                        Err(e) => break e,
                    }
                    n += 2;
                    assert!(n < 10_000, "the fault never fired");
                };
                let msg = err.to_string();
                if fault == Fault::DiskFull && !fail_sync {
                    assert!(msg.contains("disk is full"), "{msg}");
                }
                assert!(msg.contains("mem-pool"), "{msg}");
                // Acknowledged slices are still readable from the live handle.
                for &(id, k) in &acked {
                    assert_eq!(pool.get(id).unwrap().unwrap().text, text_of(k));
                }
                // Space comes back: the live handle writes again (unless a
                // sync failed, which demands a reopen).
                faulty.allow(u64::MAX / 2);
                let retry = pool.append(&[slice("f", 50_000)]);
                if let Err(e) = &retry {
                    // Only a failed sync refuses further writes, and it says
                    // what to do.
                    assert!(fail_sync, "{e}");
                    assert!(e.to_string().contains("reopen"), "{e}");
                }
                let retried = retry.ok();
                drop(pool);
                let pool = mem_pool(Arc::new(mem.clone())).unwrap();
                for &(id, k) in &acked {
                    let s = pool.get(id).unwrap();
                    assert_eq!(s.map(|s| s.text), Some(text_of(k)), "{fault:?} {allow}");
                }
                if let Some(ids) = retried {
                    assert_eq!(pool.get(ids[0]).unwrap().unwrap().text, text_of(50_000));
                }
            }
        }
    }
}

#[test]
fn budget_evicts_lowest_retention_and_never_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 60_000u64;
    let pool = Pool::open(
        tmp.path(),
        PoolOptions {
            budget_bytes: Some(budget),
            ..opts()
        },
    )
    .unwrap();
    let pinned = pool.append(&[slice("p", 0)]).unwrap()[0];
    let used = pool.append(&[slice("p", 1)]).unwrap()[0];
    pool.record(&[WitnessEvent::Pin(pinned)]).unwrap();
    let mut max_batch = 0u64;
    let mut n = 2;
    for round in 0..200u64 {
        let before = pool.stats().bytes_on_disk;
        let batch: Vec<_> = (n..n + 5).map(|k| slice("p", k)).collect();
        n += 5;
        pool.append(&batch).unwrap();
        if round % 10 == 0 {
            pool.record(&[WitnessEvent::Used(used)]).unwrap();
        }
        pool.settle();
        let after = pool.stats().bytes_on_disk;
        max_batch = max_batch.max(after.saturating_sub(before));
        assert!(
            after <= budget + 2_000,
            "round {round}: {after} bytes on disk over a budget of {budget}"
        );
        assert!(
            pool.maintenance_error().is_none(),
            "{:?}",
            pool.maintenance_error()
        );
    }
    assert!(
        pool.get(pinned).unwrap().is_some(),
        "a pinned slice was evicted"
    );
    assert!(
        pool.get(used).unwrap().is_some(),
        "a used slice was evicted before unused ones"
    );
    // Something was evicted: the oldest unused slices.
    assert!(pool.get(used + 1).unwrap().is_none());
    assert!(pool.stats().slices < n);
    drop(pool);
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert_eq!(pool.stats().budget_bytes, budget);
    assert!(pool.get(pinned).unwrap().is_some());
}

#[test]
fn compaction_keeps_everything_live_and_survives_a_stale_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (keep, pinned) = {
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        let a: Vec<_> = (0..50).map(|n| slice("gone", n)).collect();
        let b: Vec<_> = (50..100).map(|n| slice("kept", n)).collect();
        pool.append(&a).unwrap();
        let keep = pool.append(&b).unwrap();
        pool.record(&[WitnessEvent::Used(keep[3]), WitnessEvent::Pin(keep[4])])
            .unwrap();
        pool.delete_namespace("gone").unwrap();
        let before = pool.stats().bytes_on_disk;
        assert!(pool.dead_bytes() > 0);
        pool.compact().unwrap();
        assert!(pool.stats().bytes_on_disk < before);
        assert!(pool.dead_bytes() < 100);
        for (i, id) in keep.iter().enumerate() {
            assert_eq!(pool.get(*id).unwrap().unwrap().text, text_of(50 + i as u64));
        }
        let pinned = keep[4];
        (keep, pinned)
    };
    // A compaction that died half-way leaves a stale file behind.
    std::fs::write(tmp.path().join("pool.log.compact"), b"half a log").unwrap();
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert!(!tmp.path().join("pool.log.compact").exists());
    assert_eq!(pool.stats().slices, 50);
    assert_eq!(pool.meta(keep[3]).unwrap().uses, 1);
    assert!(pool.meta(pinned).unwrap().pinned);
    let hits = pool.search(&unit(60), 1, Scope::All).unwrap();
    assert_eq!(hits[0].meta.id, keep[10]);
    // New ids stay above every id ever given, even the deleted ones.
    let new = pool.append(&[slice("kept", 500)]).unwrap();
    assert!(new[0] > keep[49]);
}

#[test]
fn reader_follows_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = Pool::open(tmp.path(), opts()).unwrap();
    let first = writer.append(&[slice("r", 1)]).unwrap();
    let reader = Pool::open(tmp.path(), ro()).unwrap();
    assert_eq!(reader.stats().slices, 1);
    let second = writer.append(&[slice("r", 2)]).unwrap();
    assert_eq!(reader.get(second[0]).unwrap().unwrap().text, text_of(2));
    let hits = reader.search(&unit(2), 1, Scope::All).unwrap();
    assert_eq!(hits[0].meta.id, second[0]);
    writer.delete_namespace("r").unwrap();
    writer.append(&[slice("s", 3)]).unwrap();
    writer.compact().unwrap();
    assert_eq!(reader.stats().slices, 1);
    assert_eq!(reader.get(first[0]).unwrap(), None);
    assert_eq!(reader.namespaces(), vec![("s".to_string(), 1)]);
}

#[test]
fn shared_pool_across_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = Arc::new(Pool::open(tmp.path(), opts()).unwrap());
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let ns = format!("s{t}");
                let mut ids = Vec::new();
                for i in 0..25u64 {
                    let k = t * 1000 + i;
                    ids.extend(pool.append(&[slice(&ns, k)]).unwrap());
                    let hits = pool.search(&unit(k), 3, Scope::Namespace(&ns)).unwrap();
                    assert!(hits.iter().all(|h| h.meta.namespace == ns));
                }
                ids
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 100);
    assert_eq!(pool.stats().slices, 100);
}

/// Code-like text, varied enough that a dictionary has something to learn.
fn code_text(n: u64) -> String {
    format!(
        "static int driver_probe_{n}(struct platform_device *pdev)\n{{\n\tstruct device *dev = &pdev->dev;\n\tint ret = devm_request_irq(dev, {irq}, handler_{n}, IRQF_SHARED, \"drv{n}\", priv);\n\tif (ret < 0) {{\n\t\tdev_err(dev, \"cannot request irq {irq}: %d\\n\", ret);\n\t\treturn ret;\n\t}}\n\treturn 0;\n}}\n",
        irq = n % 97
    )
}

#[test]
fn dictionary_is_trained_and_every_text_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    let mut undict_bytes = 0;
    {
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        for b in 0..15u64 {
            let batch: Vec<_> = (b * 100..b * 100 + 100)
                .map(|n| {
                    let (mut s, v) = slice("d", n);
                    s.text = code_text(n);
                    (s, v)
                })
                .collect();
            ids.extend(pool.append(&batch).unwrap());
            if b == 5 {
                undict_bytes = pool.meta(ids[0]).unwrap().bytes;
            }
        }
        assert!(pool.has_dictionary());
        let late = pool.meta(*ids.last().unwrap()).unwrap().bytes;
        assert!(late < undict_bytes, "{late} vs {undict_bytes}");
        pool.compact().unwrap();
        // Compaction brought the early slices under the dictionary too.
        assert!(pool.meta(ids[0]).unwrap().bytes < undict_bytes);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(pool.get(*id).unwrap().unwrap().text, code_text(n as u64));
        }
        pool.append(&[slice("d", 5000)]).unwrap();
    }
    let pool = Pool::open(tmp.path(), opts()).unwrap();
    assert!(pool.has_dictionary());
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(pool.get(*id).unwrap().unwrap().text, code_text(n as u64));
    }
}

/// SIGKILL a writer whose tiny budget makes it evict and compact all the
/// time: the pool always opens, every slice in it is intact, and the newest
/// acknowledged slice (the highest retention) is there.
#[test]
fn kill_9_during_eviction_and_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 40_000u64;
    drop(
        Pool::open(
            tmp.path(),
            PoolOptions {
                budget_bytes: Some(budget),
                ..opts()
            },
        )
        .unwrap(),
    );
    let mut rng = 0x9E37_79B9u64 ^ std::process::id() as u64;
    let mut next = 0u64;
    let mut acked_total = 0;
    for run in 0..20 {
        let wait = Duration::from_micros(xorshift(&mut rng) % 60_000);
        let env = [("UCTX_POOL_TEST_BUDGET", budget.to_string())];
        let got = kill_writer(tmp.path(), next, wait, &env);
        acked_total += got.len();
        let pool = Pool::open(tmp.path(), opts()).unwrap();
        if let Some(&(k, id)) = got.last() {
            next = k + 1;
            let s = pool
                .get(id)
                .unwrap()
                .unwrap_or_else(|| panic!("run {run}: newest acknowledged slice {id} lost"));
            assert_eq!(s.text, text_of(k));
        }
        for m in pool.metas(Scope::All) {
            let s = pool.get(m.id).unwrap().unwrap();
            assert!(s.text.starts_with("slice number "), "run {run}: {}", s.text);
        }
        assert!(
            pool.stats().bytes_on_disk <= budget + 20_000,
            "run {run}: {} bytes",
            pool.stats().bytes_on_disk
        );
        assert!(!tmp.path().join("pool.log.compact").exists());
    }
    assert!(acked_total > 0);
}

#[derive(Clone, Debug)]
enum Op {
    Append(u8, u8),
    Delete(u8),
    Use(u16),
    Pin(u16),
    Compact,
    Reopen,
    Clear,
}

fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0u8..3, 1u8..6).prop_map(|(n, c)| Op::Append(n, c)),
        1 => (0u8..3).prop_map(Op::Delete),
        2 => any::<u16>().prop_map(Op::Use),
        1 => any::<u16>().prop_map(Op::Pin),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Clear),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any sequence of writes, deletes, witness events, compactions and
    /// reopens leaves the pool agreeing with a plain in-memory model.
    #[test]
    fn pool_agrees_with_a_model(ops in proptest::collection::vec(arb_op(), 1..40)) {
        use std::collections::BTreeMap;
        let mem = MemDir::new();
        let open = || mem_pool(Arc::new(mem.clone())).unwrap();
        let mut pool = open();
        // id -> (namespace, text number, uses, pinned)
        let mut model: BTreeMap<u64, (String, u64, u32, bool)> = BTreeMap::new();
        let mut n = 0u64;
        let mut last_id = 0u64;
        for op in ops {
            match op {
                Op::Append(ns, count) => {
                    let ns = format!("ns{ns}");
                    let batch: Vec<_> = (n..n + count as u64).map(|k| slice(&ns, k)).collect();
                    let ids = pool.append(&batch).unwrap();
                    for (k, id) in (n..).zip(&ids) {
                        proptest::prop_assert!(*id > last_id);
                        last_id = *id;
                        model.insert(*id, (ns.clone(), k, 0, false));
                    }
                    n += count as u64;
                }
                Op::Delete(ns) => {
                    let ns = format!("ns{ns}");
                    let want = model.values().filter(|v| v.0 == ns).count() as u64;
                    proptest::prop_assert_eq!(pool.delete_namespace(&ns).unwrap(), want);
                    model.retain(|_, v| v.0 != ns);
                }
                Op::Use(i) | Op::Pin(i) => {
                    if model.is_empty() {
                        continue;
                    }
                    let id = *model.keys().nth(i as usize % model.len()).unwrap();
                    let e = model.get_mut(&id).unwrap();
                    if matches!(op, Op::Use(_)) {
                        pool.record(&[WitnessEvent::Used(id)]).unwrap();
                        e.2 += 1;
                    } else {
                        pool.record(&[WitnessEvent::Pin(id)]).unwrap();
                        e.3 = true;
                    }
                }
                Op::Compact => pool.compact().unwrap(),
                Op::Reopen => {
                    drop(pool);
                    pool = open();
                }
                Op::Clear => {
                    proptest::prop_assert_eq!(pool.clear().unwrap(), model.len() as u64);
                    model.clear();
                }
            }
            let metas = pool.metas(Scope::All);
            proptest::prop_assert_eq!(metas.len(), model.len());
            for m in &metas {
                let (ns, _, uses, pinned) = &model[&m.id];
                proptest::prop_assert_eq!(&m.namespace, ns);
                proptest::prop_assert_eq!(m.uses, *uses);
                proptest::prop_assert_eq!(m.pinned, *pinned);
            }
            for ns in ["ns0", "ns1", "ns2"] {
                for h in pool.search(&unit(n), 50, Scope::Namespace(ns)).unwrap() {
                    proptest::prop_assert_eq!(h.meta.namespace.as_str(), ns);
                }
            }
        }
        drop(pool);
        let pool = open();
        for (id, (_, k, _, _)) in &model {
            proptest::prop_assert_eq!(pool.get(*id).unwrap().map(|s| s.text), Some(text_of(*k)));
        }
        proptest::prop_assert_eq!(pool.stats().slices, model.len() as u64);
    }
}

/// Collect the `ack FIRST LAST` lines a writer child prints after each append
/// returned; the receiver fires once the first ack is in.
fn read_acks(
    stdout: std::process::ChildStdout,
) -> (
    std::thread::JoinHandle<Vec<(u64, u64)>>,
    std::sync::mpsc::Receiver<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            // The first line follows libtest's "test ... " prefix.
            let Some(at) = l.find("ack ") else { continue };
            let p: Vec<&str> = l[at..].split(' ').collect();
            if p.len() == 3 {
                got.push((p[1].parse::<u64>().unwrap(), p[2].parse::<u64>().unwrap()));
                if got.len() == 1 {
                    let _ = tx.send(());
                }
            }
        }
        got
    });
    (reader, rx)
}

pub(crate) fn small_index() -> uctx::pool::ann::Tuning {
    uctx::pool::ann::Tuning {
        seal_rows: 500,
        list_rows: 100,
        ..Default::default()
    }
}

pub(crate) fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    v.sort();
    v
}

pub(crate) fn ids(hits: &[uctx::pool::Hit]) -> Vec<u64> {
    hits.iter().map(|h| h.meta.id).collect()
}

/// Overlap of the top ten: how many of `want` `got` found.
fn overlap(got: &[u64], want: &[u64]) -> usize {
    got.iter().filter(|id| want.contains(id)).count()
}

#[test]
fn index_seals_merges_filters_and_recovers_from_its_own_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = Pool::open(&dir, opts()).unwrap();
    pool.set_index_tuning(small_index());
    // 4,600 slices: 70% in "a", 30% in "b", in batches.
    let mut vectors = std::collections::HashMap::new();
    for b in 0..46u64 {
        let batch: Vec<_> = (0..100)
            .map(|i| {
                let n = b * 100 + i;
                slice(if n % 10 < 7 { "a" } else { "b" }, n)
            })
            .collect();
        let got = pool.append(&batch).unwrap();
        for (id, (s, v)) in got.into_iter().zip(batch) {
            vectors.insert(id, (v, s.namespace));
        }
        pool.settle();
    }
    assert_eq!(pool.maintenance_error(), None);
    let st = pool.index_stats();
    // Nine seals of 500 rows; eight merged into one level-1 segment.
    assert_eq!(st.segments, 2, "{st:?}");
    assert_eq!(st.segment_rows + st.tail_rows, 4600, "{st:?}");
    assert!(st.tail_rows < 500);
    assert_eq!(segment_files(&dir).len(), 2);
    assert!(pool.stats().bytes_on_disk > st.bytes);

    // Brute force over the vectors as written, for reference.
    let truth = |q: &[f32], ns: Option<&str>| -> Vec<u64> {
        let mut all: Vec<(f32, u64)> = vectors
            .iter()
            .filter(|(_, (_, space))| ns.is_none_or(|n| n == space))
            .map(|(id, (v, _))| (-dot(q, v), *id))
            .collect();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        all.iter().take(10).map(|x| x.1).collect()
    };
    let queries: Vec<Vec<f32>> = (0..40).map(|i| unit(1_000_000 + i)).collect();
    let (mut exact_hits, mut ann_hits, mut ns_hits) = (0, 0, 0);
    for q in &queries {
        let exact = ids(&pool.search_exact(q, 10, Scope::All).unwrap());
        exact_hits += overlap(&exact, &truth(q, None));
        ann_hits += overlap(&ids(&pool.search(q, 10, Scope::All).unwrap()), &exact);
        let b = pool.search(q, 10, Scope::Namespace("b")).unwrap();
        assert_eq!(b.len(), 10);
        assert!(b.iter().all(|h| h.meta.namespace == "b"));
        ns_hits += overlap(&ids(&b), &truth(q, Some("b")));
    }
    let n = (queries.len() * 10) as f64;
    // i8 codes against f32: near-ties may swap at the edge of the top ten.
    assert!(exact_hits as f64 / n >= 0.95, "exact {exact_hits}");
    assert!(ann_hits as f64 / n >= 0.8, "ann {ann_hits}");
    assert!(ns_hits as f64 / n >= 0.8, "filtered {ns_hits}");

    // Deletions reach the sealed rows at once.
    assert_eq!(pool.delete_namespace("b").unwrap(), 1380);
    let before: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| ids(&pool.search(q, 10, Scope::All).unwrap()))
        .collect();
    for hits in &before {
        assert_eq!(hits.len(), 10);
        assert!(hits
            .iter()
            .all(|id| pool.meta(*id).unwrap().namespace == "a"));
    }
    assert!(pool
        .search(&queries[0], 10, Scope::Namespace("b"))
        .unwrap()
        .is_empty());
    drop(pool);

    // Reopened, the same answers.
    let pool = Pool::open(&dir, opts()).unwrap();
    let again: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| ids(&pool.search(q, 10, Scope::All).unwrap()))
        .collect();
    assert_eq!(before, again);
    drop(pool);

    // A damaged segment and a stray unfinished one: the log is the source
    // of truth, so their rows are searched from the tail instead. Opening
    // reads no segment whole: `verify` finds the damage, `repair` removes
    // the file, and the writer deletes the unfinished one.
    let files = segment_files(&dir);
    let victim = dir.join(&files[0]);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::write(dir.join("seg-99999999.ivf.tmp"), b"half a segment").unwrap();
    let v = Pool::verify(&dir).unwrap();
    assert_eq!(v.bad_segments.len(), 1, "{v:?}");
    assert!(!v.whole());
    assert_eq!(v.bad_segments[0].0, files[0]);
    let r = Pool::repair(&dir).unwrap();
    assert!(!r.rewritten && r.segments_removed == 1, "{r:?}");
    let pool = Pool::open(&dir, opts()).unwrap();
    assert!(!victim.exists());
    assert!(!dir.join("seg-99999999.ivf.tmp").exists());
    let st = pool.index_stats();
    assert_eq!(st.segments, 1, "{st:?}");
    for q in &queries {
        let got = ids(&pool.search(q, 10, Scope::All).unwrap());
        assert!(got
            .iter()
            .all(|id| pool.meta(*id).unwrap().namespace == "a"));
        assert!(overlap(&got, &truth(q, Some("a"))) >= 7);
    }
    // With the index files gone altogether, a writer seals them again.
    drop(pool);
    for f in segment_files(&dir) {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let pool = Pool::open(&dir, opts()).unwrap();
    assert_eq!(pool.index_stats().segment_rows, 0);
    assert_eq!(pool.index_stats().tail_rows, 3220);
    pool.set_index_tuning(small_index());
    pool.append(&[slice("a", 99_999)]).unwrap();
    pool.settle();
    let st = pool.index_stats();
    assert!(st.segments >= 1 && st.tail_rows < 500, "{st:?}");
}

#[test]
fn a_reader_follows_the_writer_as_it_seals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let w = Pool::open(&dir, opts()).unwrap();
    w.set_index_tuning(small_index());
    w.append(&(0..100).map(|n| slice("a", n)).collect::<Vec<_>>())
        .unwrap();
    let r = Pool::open(&dir, ro()).unwrap();
    assert_eq!(r.index_stats().segments, 0);
    w.append(&(100..1200).map(|n| slice("a", n)).collect::<Vec<_>>())
        .unwrap();
    w.settle();
    assert!(w.index_stats().segments >= 1);
    // The reader maps the new segment and finds every slice.
    let st = r.index_stats();
    assert_eq!(st, w.index_stats());
    assert_eq!(r.stats().slices, 1200);
    let q = unit(555);
    assert_eq!(
        ids(&r.search(&q, 10, Scope::All).unwrap()),
        ids(&w.search(&q, 10, Scope::All).unwrap())
    );
}

#[test]
fn the_budget_counts_index_segments_and_reclaims_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let budget = 400_000u64;
    let pool = Pool::open(
        &dir,
        PoolOptions {
            budget_bytes: Some(budget),
            ..opts()
        },
    )
    .unwrap();
    pool.set_index_tuning(small_index());
    pool.set_lexical_tuning(uctx::pool::lex::Tuning { seal_docs: 64 });
    let on_disk = || -> u64 {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let mut n = 0;
    let mut sealed = false;
    for round in 0..300u64 {
        let batch: Vec<_> = (n..n + 20).map(|k| slice("s", k)).collect();
        n += 20;
        pool.append(&batch).unwrap();
        pool.settle();
        assert_eq!(pool.maintenance_error(), None);
        let st = pool.stats();
        sealed |= pool.index_stats().segments > 0;
        // Every file counts; the lock file and the 32-byte durable-end marker are the
        // only ones stats leave out.
        let small = ["LOCK", END_FILE]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum::<u64>();
        assert_eq!(st.bytes_on_disk + small, on_disk(), "round {round}");
        // Over by at most one batch and one sealed segment of each index.
        assert!(
            st.bytes_on_disk <= budget + 40_000,
            "round {round}: {} bytes on disk over a budget of {budget}",
            st.bytes_on_disk
        );
    }
    assert!(sealed, "the index never sealed a segment");
    let st = pool.stats();
    assert!(st.slices < n);
    // The newest slice is searchable and nothing evicted comes back.
    let hits = pool.search(&unit(n - 1), 1, Scope::All).unwrap();
    assert_eq!(
        pool.get(hits[0].meta.id).unwrap().unwrap().text,
        text_of(n - 1)
    );
    for h in pool.search(&unit(3), 50, Scope::All).unwrap() {
        assert!(pool.get(h.meta.id).unwrap().is_some());
    }
}

/// A writer that cannot sync a batch cuts it back from the log; a reader that read
/// the batch in between must not keep it.
#[test]
fn a_reader_drops_what_the_writer_cut_back() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join(LOG_FILE);
    let writer = Pool::open(tmp.path(), opts()).unwrap();
    let kept = writer.append(&[slice("a", 1)]).unwrap()[0];
    let durable = std::fs::metadata(&log).unwrap().len();
    let reader = Pool::open(tmp.path(), ro()).unwrap();
    let cut = writer.append(&[slice("a", 2), slice("a", 3)]).unwrap();
    assert!(reader.refresh().unwrap());
    assert_eq!(reader.metas(Scope::All).len(), 3);
    drop(writer);
    // What a writer does when its sync fails: the batch goes, back to the last
    // synced end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(durable)
        .unwrap();
    reader.refresh().unwrap();
    let ids: Vec<u64> = reader.metas(Scope::All).iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![kept]);
    for id in cut {
        assert!(reader.get(id).unwrap().is_none(), "phantom slice {id}");
    }
    // And it follows the writer's next appends from the real end.
    let writer = Pool::open(tmp.path(), opts()).unwrap();
    let next = writer.append(&[slice("a", 4)]).unwrap()[0];
    reader.refresh().unwrap();
    assert!(reader.get(next).unwrap().is_some());
    assert_eq!(reader.metas(Scope::All).len(), 2);
}

/// A writer publishes how far the log is durable only after it synced; a reader
/// applies nothing past that, so it never serves a batch the writer could still cut
/// back (or a power loss take).
#[test]
fn a_reader_applies_nothing_past_the_writers_published_durable_end() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join(END_FILE);
    let writer = Pool::open(tmp.path(), opts()).unwrap();
    let kept = writer.append(&[slice("a", 1)]).unwrap()[0];
    let before = std::fs::read(&marker).unwrap();
    let reader = Pool::open(tmp.path(), ro()).unwrap();
    let batch = writer.append(&[slice("a", 2), slice("a", 3)]).unwrap();
    let after = std::fs::read(&marker).unwrap();
    assert_ne!(before, after, "the writer published the new end");
    // The batch is in the log, but the marker still says the end before it: a
    // writer between its write and its sync.
    std::fs::write(&marker, &before).unwrap();
    reader.refresh().unwrap();
    let ids: Vec<u64> = reader.metas(Scope::All).iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![kept]);
    assert!(reader.get(batch[0]).unwrap().is_none());
    let fresh = Pool::open(tmp.path(), ro()).unwrap();
    assert_eq!(
        fresh.metas(Scope::All).len(),
        1,
        "a new reader stops there too"
    );
    // Once published, it is read.
    std::fs::write(&marker, &after).unwrap();
    assert!(reader.refresh().unwrap());
    assert_eq!(reader.metas(Scope::All).len(), 3);
    // A marker that does not check (caught while rewritten) keeps what was applied.
    let late = writer.append(&[slice("a", 4)]).unwrap()[0];
    let mut torn = std::fs::read(&marker).unwrap();
    torn[21] ^= 0xff;
    std::fs::write(&marker, &torn).unwrap();
    reader.refresh().unwrap();
    assert!(reader.get(late).unwrap().is_none());
    assert_eq!(reader.metas(Scope::All).len(), 3);
    // With no marker at all (a pool of an older writer), a reader reads to the end.
    std::fs::remove_file(&marker).unwrap();
    let old = Pool::open(tmp.path(), ro()).unwrap();
    assert!(old.get(late).unwrap().is_some());
}

/// A compaction that fails part-way (the disk fills while the new log is written)
/// removes its partial file, reports the failure, and leaves the pool whole.
#[test]
fn a_failed_compaction_removes_its_partial_log_and_loses_nothing() {
    let mem = MemDir::new();
    drop(mem_pool(Arc::new(mem.clone())).unwrap());
    let faulty = FaultyDir::new(Arc::new(mem.clone()), u64::MAX / 2, Fault::DiskFull);
    let pool = mem_pool(Arc::new(faulty.clone())).unwrap();
    let mut ids = Vec::new();
    for k in 0..200u64 {
        ids.push((pool.append(&[slice("c", k)]).unwrap()[0], k));
    }
    let doomed: Vec<u64> = ids.iter().step_by(2).map(|&(id, _)| id).collect();
    pool.forget(&doomed).unwrap();
    faulty.allow(2_000);
    let err = pool.compact().unwrap_err();
    assert!(err.to_string().contains("compacting"), "{err}");
    let names = mem.list().unwrap();
    assert!(
        !names.iter().any(|f| f.contains(".compact")),
        "the partial log is gone: {names:?}"
    );
    faulty.allow(u64::MAX / 2);
    for &(id, k) in ids.iter().filter(|(id, _)| !doomed.contains(id)) {
        assert_eq!(pool.get(id).unwrap().unwrap().text, text_of(k));
    }
    pool.compact().unwrap();
    drop(pool);
    let pool = mem_pool(Arc::new(mem.clone())).unwrap();
    assert_eq!(pool.stats().slices, 100);
}

/// Appends and witness events go on while the log is compacted: what they
/// wrote after the compaction's snapshot is carried into the new log, so every
/// acknowledged slice and use is there, in this handle, after a reopen, and in
/// a full replay (`doctor --verify` compares the checkpoint's state with it).
#[test]
fn appends_go_on_while_the_log_is_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pool = Arc::new(Pool::open(dir, opts()).unwrap());
    let first: Vec<_> = (0..1500).map(|k| slice("a", k)).collect();
    pool.append(&first).unwrap();
    let appender = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for b in 0..60u64 {
                let batch: Vec<_> = (0..5).map(|i| slice("b", 10_000 + b * 5 + i)).collect();
                let ids = pool.append(&batch).unwrap();
                pool.record(&[WitnessEvent::Used(ids[0])]).unwrap();
                acked.extend(ids.into_iter().zip((0..5).map(|i| 10_000 + b * 5 + i)));
            }
            acked
        })
    };
    for _ in 0..8 {
        pool.compact().unwrap();
    }
    let acked = appender.join().unwrap();
    pool.settle();
    let check = |pool: &Pool, what: &str| {
        for &(id, k) in &acked {
            let s = pool
                .get(id)
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: {id} lost"));
            assert_eq!(s.text, text_of(k), "{what}");
            assert_eq!(pool.meta(id).unwrap().uses, u32::from(k % 5 == 0), "{what}");
        }
        assert_eq!(pool.stats().slices, 1500 + acked.len() as u64, "{what}");
    };
    check(&pool, "the writer");
    pool.compact().unwrap();
    check(&pool, "after one more compaction");
    drop(pool);
    let v = Pool::verify(dir).unwrap();
    assert!(v.whole(), "{v:?}");
    assert_eq!(v.checkpoint_agrees, Some(true));
    let pool = Pool::open(dir, opts()).unwrap();
    check(&pool, "reopened");
}

/// A write returns before its maintenance: the maintenance thread evicts over
/// the budget on its own, `settle` waits for it, and the pool never stays more
/// than a tenth over its budget (and a batch).
#[test]
fn maintenance_runs_beside_the_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 400_000;
    let pool = Pool::open(
        tmp.path(),
        PoolOptions {
            budget_bytes: Some(budget),
            ..opts()
        },
    )
    .unwrap();
    let mut k = 0;
    for _ in 0..400 {
        let batch: Vec<_> = (k..k + 10).map(|n| slice("c", n)).collect();
        k += 10;
        pool.append(&batch).unwrap();
        assert!(
            pool.stats().bytes_on_disk <= budget + budget / 10 + 20_000,
            "{} bytes on disk",
            pool.stats().bytes_on_disk
        );
    }
    pool.settle();
    assert!(pool.stats().bytes_on_disk <= budget);
    assert!(pool.stats().slices < 4000);
    assert_eq!(pool.maintenance_error(), None);
}
