//! A team pool under many processes at once, and through a server crash.
//!
//! Both tests need a server (`UCTX_TEST_PG`, as `tools/postgres.sh start`
//! prints it). Each child process is this test binary run again with
//! `UCTX_CHILD` set (the `child` test below does its work): a writer appends
//! batches and writes every acknowledged id with its text to a file, a
//! searcher searches its own namespace and writes down any hit of another.
//!
//! - `writer_and_searcher_processes`: 8 writers and 8 searchers for
//!   `UCTX_STRESS_SECONDS` (default 120); afterwards every acknowledged slice
//!   is there with its text, no id twice, no search crossed a namespace.
//! - `a_server_crash_loses_nothing_acknowledged`: runs only when
//!   `UCTX_TEST_PG_KILL` is set, as it kills the server (`tools/postgres.sh
//!   kill`, i.e. `pg_ctl stop -m immediate`) during writes and restarts it on
//!   the same data: every acknowledged slice survives, each writer reported
//!   the outage with the server and the fix, and every writer wrote again.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uctx::pool::{PoolOptions, Scope, Store};
use uctx::{NewSlice, Source};
use uctx_pg::{PgPool, Scratch};

const DIM: usize = 256;

/// The two tests share one server; the crash must not land in the other's run.
static SERVER: Mutex<()> = Mutex::new(());

fn opts(create: bool) -> PoolOptions {
    PoolOptions {
        create,
        read_only: false,
        budget_bytes: None,
        encoder_fingerprint: "process-test".into(),
        dim: DIM,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A unit vector along `axis`, a little tilted by `wobble`.
fn vector(axis: usize, wobble: f32) -> Vec<f32> {
    let mut v = vec![0.01f32; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 7) % DIM] = wobble;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

// ---- the children -----------------------------------------------------------------------

/// What a child process does, from its environment; nothing when it is not one.
#[test]
fn child() {
    let Ok(role) = std::env::var("UCTX_CHILD") else {
        return;
    };
    let url = std::env::var("UCTX_CHILD_URL").unwrap();
    let out = PathBuf::from(std::env::var("UCTX_CHILD_OUT").unwrap());
    let until: u64 = std::env::var("UCTX_CHILD_UNTIL").unwrap().parse().unwrap();
    let mut out = std::fs::File::create(out).unwrap();
    let pool = PgPool::open(&url, &opts(false)).unwrap();
    let (kind, n) = role.split_once(':').unwrap();
    let n: usize = n.parse().unwrap();
    match kind {
        "writer" => write_until(&pool, n, until, &mut out),
        "searcher" => search_until(&pool, n, until, &mut out),
        _ => panic!("unknown role {role}"),
    }
}

/// Append batches of 4 into namespace `w{n}` until `until`; each acknowledged
/// slice becomes a line `ack TIME ID TEXT`, each failure `err TIME MESSAGE`.
fn write_until(pool: &PgPool, n: usize, until: u64, out: &mut std::fs::File) {
    let ns = format!("w{n}");
    let mut b = 0u64;
    while now_ms() < until {
        let batch: Vec<(NewSlice, Vec<f32>)> = (0..4)
            .map(|i| {
                let text = format!("writer {n} batch {b} item {i} of {ns}");
                let s = NewSlice {
                    namespace: ns.clone(),
                    source: Source::User,
                    tokens: 9,
                    text,
                    turn: b,
                    ext_id: None,
                    salience: 0.5,
                };
                (s, vector(n * 16 + i, 0.05 * (b % 7) as f32))
            })
            .collect();
        match pool.append(&batch) {
            Ok(ids) => {
                let t = now_ms();
                let mut lines = String::new();
                for (id, (s, _)) in ids.iter().zip(&batch) {
                    lines.push_str(&format!("ack\t{t}\t{id}\t{}\n", s.text));
                }
                out.write_all(lines.as_bytes()).unwrap();
            }
            Err(e) => {
                let msg = e.to_string().replace(['\n', '\t'], " ");
                out.write_all(format!("err\t{}\t{msg}\n", now_ms()).as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        b += 1;
    }
}

/// Search namespace `w{n}` (dense and lexical) until `until`; a line
/// `crossed …` for any hit of another namespace, `searches N` at the end.
fn search_until(pool: &PgPool, n: usize, until: u64, out: &mut std::fs::File) {
    let ns = format!("w{n}");
    let mut searches = 0u64;
    let mut round = 0usize;
    while now_ms() < until {
        round += 1;
        let scope = Scope::Namespace(&ns);
        for h in pool
            .search(&vector(n * 16 + round % 4, 0.1), 10, scope)
            .unwrap()
        {
            if h.meta.namespace != ns {
                writeln!(out, "crossed dense {} in {}", h.meta.id, h.meta.namespace).unwrap();
            }
        }
        let query = format!("writer {} batch item", (n + round) % 8);
        for (id, _) in pool.lexical_search(&query, 10, scope).unwrap() {
            if let Some(m) = pool.meta(id).unwrap() {
                if m.namespace != ns {
                    writeln!(out, "crossed lexical {id} in {}", m.namespace).unwrap();
                }
            }
        }
        searches += 2;
    }
    writeln!(out, "searches {searches}").unwrap();
}

// ---- the parent -------------------------------------------------------------------------

/// A schema of its own on the server named by `UCTX_TEST_PG`, dropped at the end.
fn scratch(test: &str) -> Option<Scratch> {
    let server = std::env::var("UCTX_TEST_PG")
        .ok()
        .filter(|u| !u.trim().is_empty())?;
    let name = format!("uctx_proc_{}_{test}", std::process::id());
    Some(Scratch::create(&server, &name).unwrap_or_else(|e| panic!("UCTX_TEST_PG: {e}")))
}

fn spawn(role: &str, url: &str, out: &Path, until: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("UCTX_CHILD", role)
        .env("UCTX_CHILD_URL", url)
        .env("UCTX_CHILD_OUT", out)
        .env("UCTX_CHILD_UNTIL", until.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// What the writers wrote down.
#[derive(Default)]
struct Acks {
    /// (id, text, acknowledged at, writer)
    slices: Vec<(u64, String, u64, usize)>,
    /// (at, message, writer)
    errors: Vec<(u64, String, usize)>,
}

fn read_writer(path: &Path, w: usize, into: &mut Acks) {
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines() {
        let mut f = line.splitn(4, '\t');
        match f.next() {
            Some("ack") => {
                let t = f.next().unwrap().parse().unwrap();
                let id = f.next().unwrap().parse().unwrap();
                into.slices.push((id, f.next().unwrap().to_string(), t, w));
            }
            Some("err") => {
                let t = f.next().unwrap().parse().unwrap();
                into.errors.push((t, f.next().unwrap().to_string(), w));
            }
            _ => panic!("writer {w} wrote an unreadable line {line:?}"),
        }
    }
}

/// Every acknowledged slice is in the pool with its text, and no id was given twice.
fn check_acknowledged(pool: &PgPool, acks: &Acks) {
    let ids: HashSet<u64> = acks.slices.iter().map(|s| s.0).collect();
    assert_eq!(ids.len(), acks.slices.len(), "an id was acknowledged twice");
    for (id, text, _, w) in &acks.slices {
        let got = pool
            .get(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("slice {id}, acknowledged to writer {w}, is gone"));
        assert_eq!(&got.text, text, "slice {id} holds another text");
    }
}

fn wait_all(children: Vec<Child>) {
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait().unwrap();
        assert!(status.success(), "child {i} failed ({status})");
    }
}

#[test]
fn writer_and_searcher_processes() {
    let Some(schema) = scratch("stress") else {
        return;
    };
    let _one = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let seconds: u64 = std::env::var("UCTX_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    drop(PgPool::open(schema.url(), &opts(true)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let until = now_ms() + seconds * 1000;
    let mut children = Vec::new();
    for n in 0..8 {
        children.push(spawn(
            &format!("writer:{n}"),
            schema.url(),
            &dir.path().join(format!("writer-{n}")),
            until,
        ));
        children.push(spawn(
            &format!("searcher:{n}"),
            schema.url(),
            &dir.path().join(format!("searcher-{n}")),
            until,
        ));
    }
    wait_all(children);
    let wall = start.elapsed().as_secs_f64();
    let mut acks = Acks::default();
    let mut searches = 0u64;
    for n in 0..8 {
        read_writer(&dir.path().join(format!("writer-{n}")), n, &mut acks);
        let text = std::fs::read_to_string(dir.path().join(format!("searcher-{n}"))).unwrap();
        for line in text.lines() {
            match line.strip_prefix("searches ") {
                Some(k) => searches += k.parse::<u64>().unwrap(),
                None => panic!("searcher {n}: {line}"),
            }
        }
    }
    assert!(
        acks.errors.is_empty(),
        "writes failed with the server up: {:?}",
        &acks.errors[..acks.errors.len().min(5)]
    );
    for n in 0..8 {
        assert!(
            acks.slices.iter().any(|s| s.3 == n),
            "writer {n} acknowledged nothing"
        );
    }
    assert!(searches >= 16, "only {searches} searches ran");
    let pool = PgPool::open(schema.url(), &opts(false)).unwrap();
    check_acknowledged(&pool, &acks);
    // Nothing but what was acknowledged: no failed write left a row.
    assert_eq!(pool.stats().unwrap().slices, acks.slices.len() as u64);
    for n in 0..8 {
        let want = acks.slices.iter().filter(|s| s.3 == n).count();
        let ns = format!("w{n}");
        assert_eq!(pool.ids(Scope::Namespace(&ns)).unwrap().len(), want);
    }
    let _ = writeln!(
        std::io::stderr(),
        "processes: 8 writers and 8 searchers for {seconds} s ({wall:.1} s wall): {} slices acknowledged \
         ({:.0} slices/s from 8 writers), {searches} searches, 0 lost, 0 ids twice, 0 crossed namespaces",
        acks.slices.len(),
        acks.slices.len() as f64 / seconds as f64,
    );
}

/// `tools/postgres.sh CMD --port PORT`, from the repository root.
fn postgres_sh(cmd: &str, port: u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/postgres.sh");
    let out = Command::new("bash")
        .arg(script)
        .args([cmd, "--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tools/postgres.sh {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port_of(url: &str) -> u16 {
    let config: postgres::Config = url.parse().unwrap();
    config.get_ports().first().copied().unwrap_or(5432)
}

#[test]
fn a_server_crash_loses_nothing_acknowledged() {
    if std::env::var_os("UCTX_TEST_PG_KILL").is_none() {
        return;
    }
    let Some(schema) = scratch("crash") else {
        return;
    };
    let _one = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let port = port_of(schema.server());
    drop(PgPool::open(schema.url(), &opts(true)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let until = now_ms() + 16_000;
    let writers: Vec<Child> = (0..8)
        .map(|n| {
            spawn(
                &format!("writer:{n}"),
                schema.url(),
                &dir.path().join(format!("writer-{n}")),
                until,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let killed = now_ms();
    postgres_sh("kill", port);
    std::thread::sleep(Duration::from_secs(3));
    postgres_sh("restart", port);
    let back = now_ms();
    wait_all(writers);
    let mut acks = Acks::default();
    for n in 0..8 {
        read_writer(&dir.path().join(format!("writer-{n}")), n, &mut acks);
    }
    let before = acks.slices.iter().filter(|s| s.2 < killed).count();
    assert!(before > 0, "nothing was written before the crash");
    for n in 0..8 {
        // Each writer met the outage and said so plainly: the server, and what to do.
        let errs: Vec<&(u64, String, usize)> = acks.errors.iter().filter(|e| e.2 == n).collect();
        assert!(!errs.is_empty(), "writer {n} never noticed the outage");
        for (_, msg, _) in &errs {
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
            assert!(
                msg.contains("tools/postgres.sh start") || msg.contains("again"),
                "the message names no fix: {msg}"
            );
        }
        // And wrote again once the server was back.
        assert!(
            acks.slices.iter().any(|s| s.3 == n && s.2 > back),
            "writer {n} did not resume after the restart"
        );
    }
    let pool = PgPool::open(schema.url(), &opts(false)).unwrap();
    check_acknowledged(&pool, &acks);
    // A write cut off at its commit may have been applied unacknowledged; no more than those.
    let held = pool.stats().unwrap().slices;
    let acked = acks.slices.len() as u64;
    assert!(
        held >= acked && held <= acked + 4 * acks.errors.len() as u64,
        "{held} slices held, {acked} acknowledged"
    );
    let _ = writeln!(
        std::io::stderr(),
        "crash: {acked} slices acknowledged by 8 writers ({before} before the kill), all there after the restart; \
         {} failed writes reported; every writer resumed; first message: {}",
        acks.errors.len(),
        acks.errors.first().map_or("", |e| e.1.as_str()),
    );
}
