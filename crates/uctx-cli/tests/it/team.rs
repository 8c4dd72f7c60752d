//! The commands on a team pool (PostgreSQL), when `UCTX_TEST_PG` names a server:
//! each test gets a schema of its own, dropped at the end.

use std::io::Write;
use std::path::Path;

use super::{json, no_panic, run, run_with_input, text, uctx};

struct Schema {
    admin: String,
    name: String,
    url: String,
}

impl Schema {
    fn new(test: &str) -> Option<Schema> {
        let admin = match std::env::var("UCTX_TEST_PG") {
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
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        ))
        .unwrap();
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-c%20search_path%3D{name}%2Cpublic");
        Some(Schema { admin, name, url })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

#[test]
fn init_ingest_recall_status_chat_and_clear_on_a_team_pool() {
    let Some(schema) = Schema::new("commands") else {
        return;
    };
    let pool = Path::new(&schema.url);
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
    let out = run(uctx(pool).args(["serve", "--upstream", "reader"]));
    no_panic(&out);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("is a team pool"), "{err}");
}

#[test]
fn a_team_pool_that_is_not_there_is_named_with_the_fix() {
    let Some(schema) = Schema::new("absent") else {
        return;
    };
    let out = run(uctx(Path::new(&schema.url)).args(["recall", "anything"]));
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
    let Some(schema) = Schema::new("copy") else {
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
        .arg(&schema.url)));
    assert_eq!(v["slices"], 1, "{v}");
    assert!(!v["to"].as_str().unwrap().contains("options"), "{v}");
    let v = json(&run(uctx(&a)
        .args(["--json", "pool", "copy", &schema.url])
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
