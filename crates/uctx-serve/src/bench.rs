//! `uctx bench serve`: what the proxy costs.
//!
//! *Added latency*: a stub OpenAI-compatible upstream on loopback answers every chat at
//! once with a short fixed stream; each request goes once straight to it and once
//! through `uctx serve` in front of it (the same conversation, one turn longer each
//! time), and the difference in time to the first byte of the answer is the time the
//! proxy added: matching the conversation, writing the input to the pool, paging in,
//! assembling and counting the window. *Throughput*: concurrent clients, each its own
//! conversation, against `uctx serve --upstream reader`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use serde_json::{json, Value};
use uctx::memory::Memory;

use crate::{ServeConfig, UpstreamSpec};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Paired requests (direct and through the proxy) for the added latency.
    pub requests: usize,
    /// Turns per conversation before a new one starts.
    pub turns: usize,
    /// Concurrent clients for the throughput run.
    pub clients: usize,
    /// Length of the throughput run.
    pub duration: Duration,
    /// The window the proxy serves.
    pub window: usize,
    /// Namespaces of documents the proxy's conversations search beside their own.
    pub docs: Vec<String>,
}

impl Default for BenchConfig {
    fn default() -> BenchConfig {
        BenchConfig {
            requests: 200,
            turns: 25,
            clients: 16,
            duration: Duration::from_secs(10),
            window: 4096,
            docs: vec![uctx::session::DOCS_NAMESPACE.to_string()],
        }
    }
}

/// The figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub pool_slices_before: u64,
    pub pool_bytes_before: u64,
    /// The documents namespaces each turn searches beside its own, and the slices
    /// they held before.
    pub docs: Vec<String>,
    pub docs_slices: u64,
    pub requests: usize,
    pub direct_ttfb_ms_p50: f64,
    pub direct_ttfb_ms_p99: f64,
    pub proxied_ttfb_ms_p50: f64,
    pub proxied_ttfb_ms_p99: f64,
    pub added_ms_p50: f64,
    pub added_ms_p99: f64,
    pub clients: usize,
    pub seconds: f64,
    pub completed: u64,
    pub errors: u64,
    pub requests_per_second: f64,
}

const STUB_PIECES: [&str; 6] = ["The ", "answer ", "is ", "short ", "and ", "fixed."];

async fn stub_chat() -> axum::response::Response {
    let mut body = String::new();
    for p in STUB_PIECES {
        let chunk = json!({"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6}});
    body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

/// Serve `router` on a loopback port on `rt`; the address.
fn spawn(rt: &tokio::runtime::Runtime, router: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

fn spawn_proxy(
    rt: &tokio::runtime::Runtime,
    memory: Arc<Memory>,
    cfg: ServeConfig,
) -> Result<SocketAddr, String> {
    let server = rt
        .block_on(crate::bind(memory, cfg))
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    rt.spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    Ok(addr)
}

/// Time to the first byte of the answer's body, and the whole body.
fn ttfb(agent: &ureq::Agent, url: &str, body: &Value) -> Result<(f64, String), String> {
    use std::io::Read;
    let started = Instant::now();
    let resp = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .map_err(|e| e.to_string())?;
    let mut reader = resp.into_reader();
    let mut first = [0u8; 1];
    let n = reader.read(&mut first).map_err(|e| e.to_string())?;
    let t = started.elapsed().as_secs_f64() * 1e3;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    let mut all = first[..n].to_vec();
    all.extend(rest);
    Ok((t, String::from_utf8_lossy(&all).into_owned()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(i: usize, c: usize) -> String {
    format!(
        "Conversation {c}, step {i}: the service on host-{i} listens on port {}; the build \
         of module {i} passed its checks and the notes for step {i} are in the log.",
        8000 + i
    )
}

/// Run both measurements; `memory` is the pool the proxy writes (its size is reported).
pub fn run(memory: Arc<Memory>, cfg: &BenchConfig) -> Result<BenchReport, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let before = memory.pool().stats().map_err(|e| e.to_string())?;
    let docs_slices = memory
        .pool()
        .namespaces()
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|(ns, _)| cfg.docs.contains(ns))
        .map(|(_, n)| n)
        .sum();
    let stub = axum::Router::new().route("/v1/chat/completions", axum::routing::post(stub_chat));
    let stub_addr = spawn(&rt, stub).map_err(|e| e.to_string())?;
    let proxy = spawn_proxy(
        &rt,
        Arc::clone(&memory),
        ServeConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            upstream: UpstreamSpec::OpenAi(format!("http://{stub_addr}/v1")),
            ctx: Some(cfg.window),
            docs: cfg.docs.clone(),
            ..ServeConfig::default()
        },
    )?;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let direct_url = format!("http://{stub_addr}/v1/chat/completions");
    let proxy_url = format!("http://{proxy}/v1/chat/completions");
    let (mut direct, mut proxied, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut messages: Vec<Value> = Vec::new();
    let mut conv = 0;
    for i in 0..cfg.requests {
        if i % cfg.turns.max(1) == 0 {
            conv += 1;
            messages = vec![json!({"role": "system", "content": "You are terse."})];
        }
        messages.push(json!({"role": "user", "content": line(i, conv)}));
        let body = json!({"model": "stub", "stream": true, "messages": messages});
        let (d, _) = ttfb(&agent, &direct_url, &body)?;
        let (p, text) = ttfb(&agent, &proxy_url, &body)?;
        if !text.contains("[DONE]") {
            return Err(format!("the proxied answer did not finish: {text}"));
        }
        direct.push(d);
        proxied.push(p);
        added.push(p - d);
        messages.push(json!({"role": "assistant", "content": STUB_PIECES.concat()}));
    }
    for v in [&mut direct, &mut proxied, &mut added] {
        v.sort_by(f64::total_cmp);
    }

    // Throughput against the reader.
    let reader = spawn_proxy(
        &rt,
        Arc::clone(&memory),
        ServeConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            upstream: UpstreamSpec::Reader,
            ctx: Some(cfg.window),
            max_sessions: cfg.clients.max(1) * 2,
            docs: cfg.docs.clone(),
            ..ServeConfig::default()
        },
    );
    // The pool has one writer: a second server in this process shares the same Memory.
    let reader = reader?;
    let url = format!("http://{reader}/api/chat");
    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let threads: Vec<_> = (0..cfg.clients)
        .map(|c| {
            let (stop, done, errors, url) = (
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&errors),
                url.clone(),
            );
            let turns = cfg.turns.max(1);
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let mut messages: Vec<Value> = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    if i % turns == 0 {
                        messages.clear();
                    }
                    messages.push(json!({"role": "user", "content": format!("{} What is the port of host-{i}?", line(i, 1000 + c))}));
                    let body = json!({"model": "reader", "stream": false, "messages": messages});
                    match ttfb(&agent, &url, &body)
                        .ok()
                        .and_then(|(_, t)| serde_json::from_str::<Value>(&t).ok())
                        .and_then(|v| v["message"]["content"].as_str().map(str::to_string))
                    {
                        Some(answer) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            messages.push(json!({"role": "assistant", "content": answer}));
                        }
                        None => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            messages.pop();
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(cfg.duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let completed = done.load(Ordering::Relaxed);
    Ok(BenchReport {
        pool_slices_before: before.slices,
        pool_bytes_before: before.bytes_on_disk,
        docs: cfg.docs.clone(),
        docs_slices,
        requests: cfg.requests,
        direct_ttfb_ms_p50: percentile(&direct, 0.5),
        direct_ttfb_ms_p99: percentile(&direct, 0.99),
        proxied_ttfb_ms_p50: percentile(&proxied, 0.5),
        proxied_ttfb_ms_p99: percentile(&proxied, 0.99),
        added_ms_p50: percentile(&added, 0.5),
        added_ms_p99: percentile(&added, 0.99),
        clients: cfg.clients,
        seconds,
        completed,
        errors: errors.load(Ordering::Relaxed),
        requests_per_second: completed as f64 / seconds,
    })
}

/// The report as the table the README shows.
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "serve: {} paired requests (direct, then through uctx serve) against a stub upstream; pool of {} slices, {:.3} GB before; each turn searches its own namespace and {} ({} slices)\n\n",
        r.requests,
        r.pool_slices_before,
        r.pool_bytes_before as f64 / 1e9,
        if r.docs.is_empty() { "no documents".to_string() } else { r.docs.join(", ") },
        r.docs_slices
    );
    out.push_str("| measure                              |      p50 |      p99 |\n");
    out.push_str("|--------------------------------------|---------:|---------:|\n");
    for (name, p50, p99) in [
        (
            "first byte, direct (ms)",
            r.direct_ttfb_ms_p50,
            r.direct_ttfb_ms_p99,
        ),
        (
            "first byte, through uctx serve (ms)",
            r.proxied_ttfb_ms_p50,
            r.proxied_ttfb_ms_p99,
        ),
        ("added by the proxy (ms)", r.added_ms_p50, r.added_ms_p99),
    ] {
        out.push_str(&format!("| {name:<36} | {p50:>8.2} | {p99:>8.2} |\n"));
    }
    out.push_str(&format!(
        "\nthroughput: {} clients against the reader for {:.1} s: {} requests, {} errors, {:.1} requests/s\n",
        r.clients, r.seconds, r.completed, r.errors, r.requests_per_second
    ));
    out
}
