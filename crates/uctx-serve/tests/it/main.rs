//! `uctx serve` end to end: a server on a loopback port in front of the built-in reader
//! or a fake Ollama / OpenAI server (the engine's own test servers, shared from its test
//! tree), called over HTTP as clients call it.

#[path = "../../../uctx/tests/it/fake_server.rs"]
mod fake_server;

mod api;
mod capture;
mod mcp;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use uctx::encoder::StaticEncoder;
use uctx::memory::Memory;
use uctx_serve::{ServeConfig, UpstreamSpec};

/// A server running on its own runtime; stops when dropped.
pub struct Running {
    pub url: String,
    pub memory: Arc<Memory>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn config(upstream: UpstreamSpec, ctx: Option<usize>) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        ctx,
        ..ServeConfig::default()
    }
}

pub fn start(cfg: ServeConfig) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(
        Memory::open(
            dir.path(),
            Arc::new(StaticEncoder::bundled().unwrap()),
            true,
            false,
            None,
        )
        .unwrap(),
    );
    start_with(cfg, memory, Some(dir))
}

pub fn start_with(
    cfg: ServeConfig,
    memory: Arc<Memory>,
    dir: Option<tempfile::TempDir>,
) -> Running {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mem = Arc::clone(&memory);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = uctx_serve::bind(mem, cfg).await.unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            server
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Running {
        url: format!("http://{addr}"),
        memory,
        stop: Some(stop_tx),
        thread: Some(thread),
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// POST a body; the status and the body's text, whatever the status.
pub fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = agent().post(url).set("Content-Type", "application/json");
    for (k, v) in headers {
        r = r.set(k, v);
    }
    match r.send_string(body) {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

pub fn post_json(url: &str, body: &Value) -> (u16, String) {
    post(url, &body.to_string(), &[])
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = agent().get(url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    match r.call() {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// NDJSON lines as JSON.
pub fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// SSE `data:` payloads, `[DONE]` included as a string.
pub fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .map(|d| match d.trim() {
            "[DONE]" => Value::String("[DONE]".into()),
            d => serde_json::from_str(d).unwrap_or_else(|e| panic!("{d:?}: {e}")),
        })
        .collect()
}

/// The text of an Ollama stream.
pub fn ollama_text(body: &str) -> String {
    lines(body)
        .iter()
        .filter_map(|l| l["message"]["content"].as_str().map(str::to_string))
        .collect()
}
