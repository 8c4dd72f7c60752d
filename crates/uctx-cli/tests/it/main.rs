//! The `uctx` binary as a user runs it: exit codes, messages, JSON shapes, bad input.

mod repair;
mod team;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn uctx(pool: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_uctx"));
    c.arg("--pool").arg(pool);
    c.env_remove("UCTX_POOL")
        .env_remove("UCTX_MODEL")
        .env_remove("UCTX_ENCODER")
        .env_remove("OLLAMA_HOST")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run uctx")
}

/// Run with `input` on standard input (a script of turns and commands for `chat`).
fn run_with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uctx");
    // A command that exits before reading all of it closes the pipe: not a failure.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().expect("wait for uctx")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

fn no_panic(out: &Output) {
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
}

#[test]
fn ingest_recall_status_round_trip_with_json_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(
        docs.join("gateway.md"),
        "The gateway listens on port 8443 behind the proxy.",
    )
    .unwrap();
    std::fs::write(
        docs.join("cooking.md"),
        "Simmer the onions slowly until golden brown.",
    )
    .unwrap();
    std::fs::write(docs.join(".gitignore"), "ignored.md\n").unwrap();
    std::fs::write(
        docs.join("ignored.md"),
        "This file is ignored by git rules.",
    )
    .unwrap();
    // The ignore crate honours .gitignore only inside a git repository unless told otherwise.
    std::fs::create_dir(docs.join(".git")).unwrap();
    let jsonl = dir.path().join("units.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"Invoices are sent on the first business day.\", \"id\": \"inv-1\", \"source\": \"tool\"}\n\n{\"text\": \"Kubernetes pods restart on failure.\", \"id\": 7}\n",
    )
    .unwrap();

    let out = run(uctx(&pool)
        .args(["--json", "ingest", "-q"])
        .arg(&docs)
        .arg("--jsonl")
        .arg(&jsonl));
    let v = json(&out);
    for key in ["slices", "tokens", "bytes", "seconds"] {
        assert!(v.get(key).is_some(), "ingest --json lacks {key}: {v}");
    }
    assert_eq!(
        v["slices"], 4,
        "two files and two records; the ignored file is skipped: {v}"
    );

    let v = json(&run(uctx(&pool).args([
        "--json",
        "recall",
        "which port does the gateway use",
        "-k",
        "2",
    ])));
    let hits = v.as_array().unwrap();
    assert_eq!(hits.len(), 2);
    for key in ["id", "score", "text", "source", "namespace", "seq"] {
        assert!(hits[0].get(key).is_some(), "recall --json lacks {key}");
    }
    assert!(hits[0]["text"].as_str().unwrap().contains("8443"), "{v}");

    let v = json(&run(uctx(&pool).args([
        "--json",
        "recall",
        "when are invoices sent",
        "-k",
        "1",
    ])));
    assert_eq!(v[0]["id"], "inv-1", "the caller's id comes back");
    assert_eq!(v[0]["source"], "tool");

    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    for key in [
        "slices",
        "tokens",
        "bytes_on_disk",
        "budget_bytes",
        "reach_tokens",
        "hit_rate",
    ] {
        assert!(v.get(key).is_some(), "status --json lacks {key}");
    }
    assert_eq!(v["slices"], 4);
    assert!(v["bytes_on_disk"].as_u64().unwrap() > 0);
    // Four slices stay in the index's tail, searched exactly.
    assert_eq!(v["index"]["tail_rows"], 4);
    assert_eq!(v["index"]["segments"], 0);

    let out = run(uctx(&pool).args(["clear", "--all"]));
    assert!(
        !out.status.success(),
        "clear without --yes and no terminal must refuse"
    );
    assert!(text(&out.stderr).contains("--yes"));
    let out = run(uctx(&pool).args(["--json", "clear", "--all", "--yes"]));
    assert_eq!(json(&out)["deleted"], 4);
    assert_eq!(
        json(&run(uctx(&pool).args(["--json", "status"])))["slices"],
        0
    );
}

#[test]
fn garbage_in_gives_skip_notes_and_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("binary.bin"), [0u8, 159, 146, 150, 0, 1, 2, 3]).unwrap();
    std::fs::write(docs.join("latin1.txt"), b"caf\xe9 cr\xe8me").unwrap();
    std::fs::write(docs.join("empty.txt"), b"").unwrap();
    std::fs::write(docs.join("good.txt"), "A plain good file.").unwrap();
    // A 50 MB line with no newline.
    let mut big = std::fs::File::create(docs.join("big.txt")).unwrap();
    let chunk = "lorem ipsum dolor sit amet consectetur ".repeat(1000);
    while big.metadata().unwrap().len() < 50_000_000 {
        big.write_all(chunk.as_bytes()).unwrap();
    }
    drop(big);

    let out = run(uctx(&pool).args(["ingest", "-q"]).arg(&docs));
    no_panic(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("binary.bin") && err.contains("binary"),
        "{err}"
    );
    assert!(err.contains("latin1.txt") && err.contains("UTF-8"), "{err}");
    assert!(err.contains("empty.txt"), "{err}");
    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    assert!(
        v["slices"].as_u64().unwrap() > 1000,
        "the big line was sliced: {v}"
    );

    // A missing path: a clear error, exit 2, nothing written.
    let out = run(uctx(&pool).args(["ingest"]).arg(dir.path().join("nope")));
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("check the path"),
        "{}",
        text(&out.stderr)
    );

    // Nothing to ingest.
    let out = run(uctx(&pool).args(["ingest"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nothing to ingest"));

    // Bad JSONL lines are skipped with their line numbers; good ones go in.
    let jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&jsonl, b"{\"text\": \"fine\"}\nnot json\n{\"txt\": 1}\n\xff\xfe\n{\"text\": \"x\", \"source\": \"alien\"}\n").unwrap();
    let out = run(uctx(&pool)
        .args(["--json", "ingest", "--jsonl"])
        .arg(&jsonl));
    no_panic(&out);
    let v = json(&out);
    assert_eq!(v["slices"], 1);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 4, "{v}");
    assert!(text(&out.stderr).contains("bad.jsonl:2"));

    // Reading a pool that does not exist.
    let out = run(uctx(&dir.path().join("nowhere")).args(["status"]));
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("uctx init"));
}

#[test]
fn chat_from_a_pipe_with_the_reader_model() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let transcript = dir.path().join("transcript.md");
    let script = format!(
        "The staging database host is db-7.\n/pin The release manager is grace.\nWhich staging database host do we use?\nWhich release manager signs off?\n/status\n/export {}\n/nonsense\n/quit\n",
        transcript.display()
    );
    let out = run_with_input(
        uctx(&pool).args(["chat", "-m", "reader", "--ctx", "2048"]),
        &script,
    );
    no_panic(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("db-7"), "{stdout}");
    assert!(stdout.contains("grace"), "{stdout}");
    assert!(stdout.contains("pinned as memory"));
    assert!(
        stdout.contains("window 2048"),
        "/status prints the window: {stdout}"
    );
    assert!(text(&out.stderr).contains("unknown command /nonsense"));
    let exported = std::fs::read_to_string(&transcript).unwrap();
    assert!(
        exported.contains("## user (turn 1)") && exported.contains("db-7"),
        "{exported}"
    );
}

#[test]
fn a_second_writer_is_refused_with_the_holder_named() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    // A chat holds the pool while it waits for input; its key must not
    // reach the lock file, which stays after it and others can read.
    let secret = "sk-do-not-write-me-4f1c";
    let mut holder = uctx(&pool)
        .args(["chat", "-m", "reader", "--ctx", "2048"])
        .env("OPENAI_API_KEY", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the holder has created and locked the pool.
    let mut refused = None;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let doc = dir.path().join("doc.txt");
        std::fs::write(&doc, "some text").unwrap();
        let out = run(uctx(&pool).args(["ingest", "-q"]).arg(&doc));
        if !out.status.success() && text(&out.stderr).contains("locked") {
            refused = Some(out);
            break;
        }
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let out = refused.expect("a second writer was never refused");
    no_panic(&out);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("pid {} on ", holder.id()))
            && err.contains("(uctx chat) since unix time"),
        "the error names the holder's pid, host, program and subcommand: {err}"
    );
    let lock = std::fs::read_to_string(pool.join("LOCK")).unwrap();
    for word in [secret, "--ctx", "2048", "reader"] {
        assert!(!lock.contains(word), "LOCK holds {word:?}: {lock:?}");
        assert!(!err.contains(word), "the error quotes {word:?}: {err}");
    }
    // Readers are not refused while a writer holds the pool.
}

#[test]
fn doctor_reports_a_server_that_is_down_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = run(uctx(&dir.path().join("pool"))
        .args(["doctor", "-m", "ollama/qwen2.5", "--host"])
        .arg(format!("127.0.0.1:{port}")));
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("ollama serve"), "{stdout}");
    let out = run(uctx(&dir.path().join("pool")).args(["doctor", "-m", "reader"]));
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn drift_bench_json_has_the_promised_keys() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_uctx")).args([
        "--json",
        "bench",
        "drift",
        "--stages",
        "20",
        "--haystack-docs",
        "500",
    ]));
    let v = json(&out);
    assert_eq!(v["model"], "reader");
    for arm in ["off", "on", "full"] {
        for key in [
            "contradictions",
            "correctness",
            "reach",
            "finished",
            "prompt_tokens",
            "cache_reuse",
            "ttft_ms_mean",
            "in_window",
            "hit_rate",
        ] {
            assert!(v["arms"][arm].get(key).is_some(), "{arm} lacks {key}: {v}");
        }
        assert_eq!(v["arms"][arm]["overflows"], 0, "{v}");
    }
    // The figures are measured, not arranged: no arm is asserted to win. What must hold:
    // the whole conversation fits FULL's window, and the threshold comes from the
    // tuning split, never from the reported facts.
    assert_eq!(v["arms"]["full"]["in_window"].as_f64(), Some(1.0), "{v}");
    assert!(v["tuning_facts"].as_u64().unwrap() > 0, "{v}");
    assert!(v["reader_threshold"].as_f64().is_some(), "{v}");
    assert!(v["haystack_slices"].as_u64().unwrap() >= 500, "{v}");
    let out =
        run(Command::new(env!("CARGO_BIN_EXE_uctx")).args(["bench", "drift", "--stages", "3"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("at least 20"));
}

#[test]
fn locomo_qa_bench_json_has_the_promised_keys() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_uctx")).args([
        "bench",
        "locomo-qa",
        "--data",
        "no/such/locomo10.json",
    ]));
    no_panic(&out);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--data"),
        "{}",
        text(&out.stderr)
    );

    // The data set is not shipped; CI has it beside the clone.
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/locomo/locomo10.json");
    if !data.exists() {
        eprintln!("skipped: no LoCoMo data at {}", data.display());
        return;
    }
    let out = run(Command::new(env!("CARGO_BIN_EXE_uctx"))
        .args([
            "--json",
            "bench",
            "locomo-qa",
            "--questions",
            "12",
            "--data",
        ])
        .arg(&data));
    let v = json(&out);
    assert_eq!(v["model"], "reader");
    assert_eq!(v["window"], 2048);
    for arm in ["off", "on", "full"] {
        let a = &v["arms"][arm];
        let share = |key: &str| {
            let x = a[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{arm} lacks {key}: {v}"));
            assert!((0.0..=1.0).contains(&x), "{arm} {key} {x} out of range");
            x
        };
        share("f1");
        share("evidence_in_window");
        share("cache_reuse");
        share("whole_conversation");
        for c in ["1", "2", "4"] {
            let f = a["f1_by_category"][c].as_f64();
            assert!(
                f.is_some_and(|f| (0.0..=1.0).contains(&f)),
                "{arm} cat {c}: {v}"
            );
        }
        assert_eq!(a["questions"], 12, "{v}");
        assert!(a["prompt_tokens"].as_f64().unwrap() > 0.0, "{v}");
        assert!(a.get("ttft_ms_mean").is_some(), "{v}");
        assert_eq!(a["overflows"], 0, "{v}");
    }
    // No LoCoMo conversation fits 2,048 tokens.
    assert_eq!(v["arms"]["off"]["whole_conversation"], 0.0, "{v}");
}

/// Every command, run with a recognisable key in the environment and in a key file:
/// the key reaches no file of the pool and no message.
#[test]
fn no_command_writes_or_prints_the_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let secret = "sk-recognisable-9d2e7a";
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{secret}\n")).unwrap();
    let doc = dir.path().join("doc.md");
    std::fs::write(&doc, "The staging cluster runs in rack 42.").unwrap();
    let key_arg = key_file.to_str().unwrap();
    let runs: Vec<Vec<&str>> = vec![
        vec!["init", "--pool-gb", "1"],
        vec!["ingest", "-q", doc.to_str().unwrap()],
        vec!["recall", "staging rack"],
        vec!["status"],
        vec!["--json", "status"],
        vec!["doctor", "-m", "reader", "--api-key-file", key_arg],
        vec![
            "doctor",
            "-m",
            "openai/m",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        vec![
            "chat",
            "-m",
            "reader",
            "--ctx",
            "2048",
            "--api-key-file",
            key_arg,
        ],
        vec![
            "chat",
            "-m",
            "openai/m",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        vec!["clear", "--namespace", "nothing-here", "--yes"],
        vec!["repair"],
        vec!["chat", "-m", "reader", "--api-key", secret],
    ];
    for args in &runs {
        let out = run_with_input(
            uctx(&pool).args(args).env("OPENAI_API_KEY", secret),
            "Where does the staging cluster run?\n",
        );
        no_panic(&out);
        for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text(bytes).contains(secret),
                "{args:?} printed the key on {what}: {}",
                text(bytes)
            );
        }
    }
    // The flag that would put the key in the process list is refused, with the fix.
    let refused = run(uctx(&pool).args(["chat", "-m", "reader", "--api-key", "sk-x"]));
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("OPENAI_API_KEY") && err.contains("--api-key-file"),
        "{err}"
    );
    assert!(!err.contains("sk-x"), "{err}");
    // Nothing under the pool holds it.
    let mut stack = vec![pool.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the key",
                    p.display()
                );
            }
        }
    }
    assert!(files >= 2, "the pool was written");
}

/// `ingest` writes to the documents' namespace, a chat finds what it holds, and
/// `/clear` asks first, then deletes the chat's own turns only.
#[test]
fn documents_outlive_a_cleared_chat() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let doc = dir.path().join("runbook.md");
    std::fs::write(&doc, "The staging database host is db-7.").unwrap();
    let out = run(uctx(&pool).args(["ingest", "-q"]).arg(&doc));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let chat = |script: &str| {
        let out = run_with_input(
            uctx(&pool).args(["chat", "-m", "reader", "--ctx", "2048"]),
            script,
        );
        no_panic(&out);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let stdout = chat("Which staging database host do we use?\n/clear\n/quit\n");
    assert!(
        stdout.contains("db-7"),
        "the document was not found: {stdout}"
    );
    assert!(stdout.contains("/clear yes"), "{stdout}");
    let namespaces = |pool: &Path| {
        let v = json(&run(uctx(pool).args(["--json", "status"])));
        v["namespaces"].as_array().unwrap().clone()
    };
    let ns = namespaces(&pool);
    assert_eq!(
        ns.len(),
        2,
        "nothing is deleted before the confirmation: {ns:?}"
    );
    let stdout = chat("/clear yes\n/quit\n");
    assert!(stdout.contains("forgot"), "{stdout}");
    let ns = namespaces(&pool);
    assert_eq!(ns.len(), 1, "{ns:?}");
    assert_eq!(ns[0]["namespace"], "docs");
}

#[test]
fn pool_copy_copies_a_pool_and_refuses_to_double_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let doc = dir.path().join("runbook.md");
    std::fs::write(&doc, "The staging database host is db-7.").unwrap();
    assert!(run(uctx(&a).args(["ingest", "-q"]).arg(&doc))
        .status
        .success());
    let v = json(&run(uctx(&a)
        .args(["--json", "pool", "copy"])
        .arg(&a)
        .arg(&b)));
    assert_eq!(v["slices"], 1, "{v}");
    let v = json(&run(uctx(&b).args([
        "--json",
        "recall",
        "staging database host",
    ])));
    assert!(v[0]["text"].as_str().unwrap().contains("db-7"), "{v}");
    let again = run(uctx(&a).args(["pool", "copy"]).arg(&a).arg(&b));
    no_panic(&again);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already holds 1 slices"),
        "{}",
        text(&again.stderr)
    );
    let missing = run(uctx(&a)
        .args(["pool", "copy"])
        .arg(dir.path().join("none"))
        .arg(&b));
    no_panic(&missing);
    assert!(!missing.status.success());
}
