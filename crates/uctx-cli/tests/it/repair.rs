//! A damaged pool log end to end: the writer refuses, `status` shows the
//! damage, `repair` keeps every other slice; a torn tail is cut with a
//! warning.

use std::path::Path;

use super::{json, no_panic, run, text, uctx};

const DOCS: [&str; 6] = [
    "The gateway listens on port 8443 behind the reverse proxy.",
    "Simmer the onions slowly until they turn golden brown.",
    "Invoices are sent on the first business day of each month.",
    "The staging database host is db-7 in the second rack.",
    "Backups run nightly at two and are kept for thirty days.",
    "The release manager is grace; she signs off every deploy.",
];

fn ingest(pool: &Path, file: &Path) -> std::process::Output {
    run(uctx(pool).args(["ingest", "-q"]).arg(file))
}

#[test]
fn a_flipped_byte_mid_log_is_refused_shown_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    for (i, doc) in DOCS.iter().enumerate() {
        let file = dir.path().join(format!("doc{i}.txt"));
        std::fs::write(&file, doc).unwrap();
        let out = ingest(&pool, &file);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let log = pool.join("pool.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();

    // One more ingest: refused, with the place, what follows and the fix.
    let seventh = dir.path().join("doc6.txt");
    std::fs::write(&seventh, "Lunch is served at noon in the atrium.").unwrap();
    let out = ingest(&pool, &seventh);
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("is damaged at byte"), "{err}");
    assert!(err.contains("records that do follow"), "{err}");
    assert!(err.contains("uctx repair --pool"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing was cut");

    // Status reads the other five and shows the damage.
    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    assert_eq!(v["slices"], 5, "{v}");
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{v}");
    let offset = damaged[0]["offset"].as_u64().unwrap();
    let end = offset + damaged[0]["bytes"].as_u64().unwrap();
    assert!(offset <= at as u64 && (at as u64) < end, "{v}");
    assert!(damaged[0]["records_after"].as_u64().unwrap() >= 1, "{v}");
    let out = run(uctx(&pool).arg("status"));
    assert!(
        text(&out.stdout).contains("damaged   bytes"),
        "{}",
        text(&out.stdout)
    );

    // Repair: text names what was lost; the damaged file stays beside it.
    let out = run(uctx(&pool).arg("repair"));
    no_panic(&out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("lost      bytes {offset}..{end}")),
        "{said}"
    );
    assert!(said.contains("pool.log.damaged-"), "{said}");
    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    assert_eq!(v["slices"], 5, "{v}");
    assert_eq!(v["damaged"].as_array().unwrap().len(), 0, "{v}");
    let kept = v["damaged_logs"][0].as_str().unwrap().to_string();
    assert_eq!(std::fs::read(pool.join(&kept)).unwrap(), bytes);
    // A second repair finds nothing to do, in JSON too.
    let v = json(&run(uctx(&pool).args(["--json", "repair"])));
    assert_eq!(v["rewritten"], false, "{v}");
    assert_eq!(v["lost"].as_array().unwrap().len(), 0);

    // The writer opens again; the kept slices are found.
    let out = ingest(&pool, &seventh);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    assert_eq!(v["slices"], 6, "{v}");
    // Each kept document is its own best match; the damaged one is gone.
    let kept_docs = DOCS
        .iter()
        .filter(|doc| {
            let v = json(&run(uctx(&pool).args(["--json", "recall", doc, "-k", "1"])));
            v[0]["text"].as_str().unwrap().trim() == **doc
        })
        .count();
    assert_eq!(kept_docs, 5);
}

#[test]
fn a_torn_tail_is_cut_with_a_warning_naming_file_offset_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let file = dir.path().join("doc.txt");
    std::fs::write(&file, DOCS[0]).unwrap();
    assert!(ingest(&pool, &file).status.success());
    let log = pool.join("pool.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let len = bytes.len();
    bytes.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&log, &bytes).unwrap();

    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    assert_eq!(v["torn_tail"]["offset"], len, "{v}");
    assert_eq!(v["torn_tail"]["bytes"], 37, "{v}");
    std::fs::write(&file, DOCS[1]).unwrap();
    let out = ingest(&pool, &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: cut a torn tail of 37 bytes at byte {len} of {}",
            log.display()
        )),
        "{err}"
    );
    let v = json(&run(uctx(&pool).args(["--json", "status"])));
    assert_eq!(v["slices"], 2, "{v}");
    assert!(v["torn_tail"].is_null(), "{v}");
    let out = ingest(&pool, &file);
    assert!(!text(&out.stderr).contains("warning"), "cut once");
}
