//! The MCP tools over the pool, called directly and over `/mcp`.

use serde_json::{json, Map, Value};
use uctx_serve::mcp::MemoryTools;
use uctx_serve::UpstreamSpec;

use crate::{config, start};

fn args(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

#[test]
fn remember_recall_forget_status_with_provenance() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let tools = MemoryTools::new(s.memory.clone());
    let r = tools
        .call(
            "remember",
            &args(
                json!({"text": "The staging database listens on port 6543.", "namespace": "proj"}),
            ),
        )
        .unwrap();
    let id = r["remembered"][0]["id"].as_u64().unwrap();
    assert_eq!(r["remembered"][0]["namespace"], "proj");
    tools
        .call(
            "remember",
            &args(json!({"text": "Always deploy on Tuesdays.", "pin": true})),
        )
        .unwrap();
    let hits = tools
        .call(
            "recall",
            &args(json!({"query": "staging database port", "k": 3})),
        )
        .unwrap();
    let first = &hits["hits"][0];
    assert_eq!(first["id"].as_u64(), Some(id));
    for k in ["turn", "source", "namespace", "score", "text"] {
        assert!(!first[k].is_null(), "{k} in {first}");
    }
    let st = tools.call("status", &Map::new()).unwrap();
    assert_eq!(st["slices"], 2);
    assert_eq!(
        tools.call("forget", &args(json!({"id": id}))).unwrap()["forgotten"],
        1
    );
    let hits = tools
        .call(
            "recall",
            &args(json!({"query": "staging database port", "namespace": "proj"})),
        )
        .unwrap();
    assert!(hits["hits"].as_array().unwrap().is_empty(), "{hits}");
    assert_eq!(
        tools
            .call("forget", &args(json!({"namespace": "mcp"})))
            .unwrap()["forgotten"],
        1
    );
    assert_eq!(tools.call("status", &Map::new()).unwrap()["slices"], 0);
    // Mistakes are answers that say what to do, not failures of the server.
    assert!(tools
        .call("forget", &Map::new())
        .unwrap_err()
        .contains("id"));
    assert!(tools
        .call("forget", &args(json!({"id": 999})))
        .unwrap_err()
        .contains("no slice"));
    assert!(tools
        .call("remember", &Map::new())
        .unwrap_err()
        .contains("text"));
    assert!(tools
        .call("nope", &Map::new())
        .unwrap_err()
        .contains("remember"));
}

#[test]
fn mcp_over_http_initializes_and_lists_the_tools() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}});
    let resp = ureq::post(&format!("{}/mcp", s.url))
        .set("Content-Type", "application/json")
        .set("Accept", "application/json, text/event-stream")
        .send_string(&init.to_string())
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.header("mcp-session-id").is_some());
    let body = resp.into_string().unwrap();
    assert!(body.contains("\"uctx\""), "{body}");
}

#[test]
fn the_stdio_tools_hold_the_writer_only_for_a_write() {
    use std::sync::Arc;
    use uctx::encoder::StaticEncoder;
    use uctx::memory::Memory;
    let dir = tempfile::tempdir().unwrap();
    let encoder: Arc<dyn uctx::encoder::Encoder> = Arc::new(StaticEncoder::bundled().unwrap());
    let open = |read_only: bool| {
        Memory::open(
            dir.path(),
            Arc::clone(&encoder),
            !read_only,
            read_only,
            None,
        )
    };
    drop(open(false).unwrap());
    let path = dir.path().to_path_buf();
    let enc = Arc::clone(&encoder);
    let tools = MemoryTools::follower(
        Arc::new(open(true).unwrap()),
        Arc::new(move || {
            Ok(Arc::new(Memory::open(
                &path,
                Arc::clone(&enc),
                false,
                false,
                None,
            )?))
        }),
    );
    // Another process writes the pool (the tools hold no lock of their own): a write
    // is refused with who holds it and what to do; reads go on.
    let other = open(false).unwrap();
    other
        .write(&[uctx::memory::Unit {
            namespace: "docs",
            source: uctx::Source::Document,
            text: "The release train leaves every second Thursday.",
            turn: 0,
            ext_id: None,
        }])
        .unwrap();
    let refused = tools
        .call(
            "remember",
            &args(json!({"text": "The staging port is 6543."})),
        )
        .unwrap_err();
    assert!(
        refused.contains("try again") && refused.contains("/mcp"),
        "{refused}"
    );
    let hits = tools
        .call(
            "recall",
            &args(json!({"query": "when does the release train leave"})),
        )
        .unwrap();
    assert!(
        hits["hits"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Thursday"),
        "the follower sees the other writer's slice: {hits}"
    );
    // Once it is gone, the write goes through, and the lock is not kept after it.
    drop(other);
    let r = tools
        .call(
            "remember",
            &args(json!({"text": "The staging port is 6543."})),
        )
        .unwrap();
    assert_eq!(r["remembered"][0]["namespace"], "mcp");
    let again = open(false).expect("the tools let go of the writer after the write");
    assert_eq!(again.pool().stats().unwrap().slices, 2);
    drop(again);
    assert_eq!(tools.call("status", &Map::new()).unwrap()["slices"], 2);
}
