//! The commands on a team pool (PostgreSQL), when `UCTX_TEST_PG` names a server:
//! each test gets a schema of its own, dropped at the end.

use std::io::Write;
use std::path::Path;

use super::{json, no_panic, run, run_with_input, text, uctx};

/// A team pool of the test's own on the server `UCTX_TEST_PG` names.
fn scratch(test: &str) -> Option<uctx_pg::Scratch> {
    let server = match std::env::var("UCTX_TEST_PG") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "note: UCTX_TEST_PG is not set: skipped the team-pool CLI test {test}"
            );
            return None;
        }
    };
    let name = format!("uctx_cli_{}_{test}", std::process::id());
    Some(uctx_pg::Scratch::create(&server, &name).unwrap())
}

#[test]
fn init_ingest_recall_status_chat_and_clear_on_a_team_pool() {
    let Some(schema) = scratch("commands") else {
        return;
    };
    let pool = Path::new(schema.url());
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(
        docs.join("ops.md"),
        "The gateway listens on port 7443.\n\nThe staging database host is db-7.\n",
    )
    .unwrap();

    let v = json(&run(uctx(pool).args(["--json", "init", "--pool-gb", "2"])));
    assert_eq!(v["budget_bytes"], 2_000_000_000u64, "{v}");

    let v = json(&run(uctx(pool).args(["--json", "ingest"]).arg(&docs)));
    assert!(v["slices"].as_u64().unwrap() >= 1, "{v}");

    let v = json(&run(uctx(pool).args([
        "--json",
        "recall",
        "which port does the gateway use",
        "-k",
        "1",
    ])));
    let hit = &v[0];
    assert!(hit["text"].as_str().unwrap().contains("7443"), "{v}");
    assert_eq!(hit["namespace"], "docs");

    let out = run_with_input(
        uctx(pool).args(["chat", "-m", "reader", "--ctx", "2048"]),
        "The release manager is grace.\nWhich staging database host do we use?\n/quit\n",
    );
    no_panic(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("db-7"), "{}", text(&out.stdout));

    let v = json(&run(uctx(pool).args(["--json", "status"])));
    let names: Vec<&str> = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "docs"], "{v}");
    assert!(v["slices"].as_u64().unwrap() >= 3, "{v}");
    let out = run(uctx(pool).arg("status"));
    assert!(
        text(&out.stdout).contains("team pool"),
        "{}",
        text(&out.stdout)
    );

    let v = json(&run(uctx(pool).args([
        "--json",
        "clear",
        "--namespace",
        "default",
        "--yes",
    ])));
    assert!(v["deleted"].as_u64().unwrap() >= 2, "{v}");
    let v = json(&run(uctx(pool).args(["--json", "status"])));
    assert_eq!(v["namespaces"].as_array().unwrap().len(), 1, "{v}");

    // What needs a directory says so, and names what works.
    let out = run(uctx(pool).arg("repair"));
    no_panic(&out);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("is a team pool") && err.contains("--pool DIR"),
        "{err}"
    );
}

#[test]
fn a_team_pool_that_is_not_there_is_named_with_the_fix() {
    let Some(schema) = scratch("absent") else {
        return;
    };
    let out = run(uctx(Path::new(schema.url())).args(["recall", "anything"]));
    no_panic(&out);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("holds no uctx pool") && err.contains("uctx init"),
        "{err}"
    );
    // A server that is down: the fix names the script that starts one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("postgres://u:secret-pw@127.0.0.1:{port}/uctx");
    let out = run(uctx(Path::new(&down)).arg("status"));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tools/postgres.sh start"), "{err}");
    assert!(!err.contains("secret-pw"), "{err}");
}

#[test]
fn a_directory_pool_copies_into_a_team_pool_and_back() {
    let Some(schema) = scratch("copy") else {
        return;
    };
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
        .arg(schema.url())));
    assert_eq!(v["slices"], 1, "{v}");
    assert_eq!(v["kept_ids"], true, "{v}");
    assert!(!v["to"].as_str().unwrap().contains("options"), "{v}");
    // Run again, the copy finds itself complete: nothing is doubled.
    let v = json(&run(uctx(&a)
        .args(["--json", "pool", "copy"])
        .arg(&a)
        .arg(schema.url())));
    assert_eq!((&v["slices"], &v["resumed"]), (&0.into(), &1.into()), "{v}");
    let v = json(&run(uctx(&a)
        .args(["--json", "pool", "copy", schema.url()])
        .arg(&b)));
    assert_eq!(v["slices"], 1, "{v}");
    let v = json(&run(uctx(&b).args([
        "--json",
        "recall",
        "staging database host",
    ])));
    assert!(v[0]["text"].as_str().unwrap().contains("db-7"), "{v}");
    assert_eq!(v[0]["id"], doc.display().to_string());
}

/// `uctx serve --upstream reader` on a team pool, on a free loopback port;
/// stopped (SIGTERM, then waited for) when dropped.
struct Served {
    child: std::process::Child,
    addr: String,
}

impl Served {
    fn start(pool: &Path) -> Served {
        use std::io::BufRead;
        let mut served = Served {
            child: uctx(pool)
                .args(["serve", "--upstream", "reader", "--listen", "127.0.0.1:0"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
            addr: String::new(),
        };
        let mut err = std::io::BufReader::new(served.child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("uctx serve exited: {seen}");
            }
            seen.push_str(&line);
            if let Some(rest) = line.split("listening on http://").nth(1) {
                served.addr = rest.split_whitespace().next().unwrap().to_string();
                // Keep draining its messages so that it never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
                return served;
            }
        }
    }

    /// SIGTERM, as a service manager stops it; how it exited.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; the response's body as JSON.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, mut body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let decoded;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        decoded = out;
        body = &decoded;
    }
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn two_servers_on_a_team_pool_share_a_conversation() {
    let Some(schema) = scratch("serve") else {
        return;
    };
    let pool = Path::new(schema.url());
    run(uctx(pool).args(["init", "--pool-gb", "1"]));
    let mut a = Served::start(pool);
    let mut b = Served::start(pool);
    let (addr_a, addr_b) = (a.addr.clone(), b.addr.clone());
    let first = serde_json::json!({"role": "user", "content": "The release manager is grace."});
    let v = http(
        &addr_a,
        "POST",
        "/api/chat",
        Some(&serde_json::json!({"model": "reader", "stream": false, "messages": [first]})),
    );
    let answer = v["message"].clone();
    assert_eq!(answer["role"], "assistant", "{v}");
    // The next turn of the same conversation reaches the other server, as behind a
    // load balancer: it continues the conversation the first one began.
    let v = http(
        &addr_b,
        "POST",
        "/api/chat",
        Some(
            &serde_json::json!({"model": "reader", "stream": false, "messages": [
                first, answer,
                {"role": "user", "content": "Who is the release manager?"},
            ]}),
        ),
    );
    assert!(
        v["message"]["content"].as_str().unwrap().contains("grace"),
        "{v}"
    );
    let status = http(&addr_b, "GET", "/api/uctx/status", None);
    let sessions = status["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{status}");
    assert_eq!(sessions[0]["messages"], 4, "{status}");
    let ns = sessions[0]["namespace"].as_str().unwrap().to_string();
    let status_a = http(&addr_a, "GET", "/api/uctx/status", None);
    assert_eq!(
        status_a["sessions"][0]["namespace"],
        ns.as_str(),
        "{status_a}"
    );
    // Each message is in the pool once, in the one conversation's namespace.
    let v = json(&run(uctx(pool).args(["--json", "status"])));
    let spaces = v["namespaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 1, "{v}");
    assert_eq!(spaces[0]["namespace"], ns.as_str(), "{v}");
    for s in [&mut a, &mut b] {
        let status = s.stop();
        assert!(status.success(), "uctx serve stopped with {status}");
    }
    // A third server started later knows the conversation from the database.
    let c = Served::start(pool);
    let status_c = http(&c.addr, "GET", "/api/uctx/status", None);
    assert_eq!(
        status_c["sessions"][0]["namespace"],
        ns.as_str(),
        "{status_c}"
    );
}
