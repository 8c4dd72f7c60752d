//! The wire formats, errors, pass-through and auth.

use serde_json::{json, Value};
use uctx_serve::UpstreamSpec;

use crate::fake_server::{FakeConfig, FakeServer};
use crate::{config, events, get, lines, ollama_text, post, post_json, start};

fn question() -> Value {
    json!([
        {"role": "system", "content": "You answer from what you were told."},
        {"role": "user", "content": "The gateway port is 8443. What is the gateway port?"}
    ])
}

#[test]
fn ollama_chat_streams_ndjson_with_a_final_line() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let (status, body) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "reader", "messages": question()}),
    );
    assert_eq!(status, 200, "{body}");
    let ls = lines(&body);
    assert!(ls.len() >= 2, "{body}");
    for l in &ls[..ls.len() - 1] {
        assert_eq!(l["done"], false);
        assert_eq!(l["message"]["role"], "assistant");
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let last = ls.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    assert!(last["eval_count"].as_u64().unwrap() > 0);
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[k].is_u64(), "{k} in {last}");
    }
    assert!(ollama_text(&body).contains("8443"), "{body}");

    // stream: false gives one object with the whole message.
    let (status, body) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "reader", "stream": false, "messages": question()}),
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["done"], true);
    assert!(v["message"]["content"].as_str().unwrap().contains("8443"));
}

#[test]
fn openai_streams_sse_and_sends_usage_only_when_asked() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let url = format!("{}/v1/chat/completions", s.url);
    for include in [false, true] {
        let mut req = json!({"model": "reader", "stream": true, "messages": question()});
        if include {
            req["stream_options"] = json!({"include_usage": true});
        }
        let (status, body) = post_json(&url, &req);
        assert_eq!(status, 200, "{body}");
        let ev = events(&body);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let chunks = &ev[..ev.len() - 1];
        let usage: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"].as_array().is_some_and(|a| a.is_empty()))
            .collect();
        if include {
            assert_eq!(usage.len(), 1, "{body}");
            assert!(usage[0]["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        } else {
            assert!(usage.is_empty(), "{body}");
            assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        }
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.contains("8443"), "{body}");
        let finish = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect::<Vec<_>>();
        assert_eq!(finish, ["stop"]);
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
    }
    let (status, body) = post_json(&url, &json!({"model": "reader", "messages": question()}));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("8443"));
}

#[test]
fn bad_requests_get_each_api_s_error_shape() {
    let mut cfg = config(UpstreamSpec::Reader, Some(2048));
    cfg.max_body_bytes = 4096;
    let s = start(cfg);
    let (status, body) = post(&format!("{}/api/chat", s.url), "{not json", &[]);
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not valid JSON"));

    let (status, body) = post(&format!("{}/v1/chat/completions", s.url), "[1]", &[]);
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"].get("code").is_some());

    let big =
        json!({"model": "reader", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    let (status, body) = post_json(&format!("{}/v1/chat/completions", s.url), &big);
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("larger"));

    let (status, _) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "reader", "messages": [{"role": "assistant", "content": "hi"}]}),
    );
    assert_eq!(status, 400);

    // The reader serves chat only; the rest is a clear 404 in the API's shape.
    let (status, body) = post_json(
        &format!("{}/api/generate", s.url),
        &json!({"model": "reader", "prompt": "x"}),
    );
    assert_eq!(status, 404);
    assert!(body.contains("reader"));
}

#[test]
fn ollama_routes_with_the_reader() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let (status, body) = get(&format!("{}/", s.url), &[]);
    assert_eq!((status, body.as_str()), (200, "Ollama is running"));
    let (_, body) = get(&format!("{}/api/version", s.url), &[]);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["version"].is_string());
    let (_, body) = get(&format!("{}/api/tags", s.url), &[]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["models"][0]["name"], "reader");
    let (_, body) = post_json(&format!("{}/api/show", s.url), &json!({"model": "reader"}));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["parameters"].as_str().unwrap().contains("131072"));
    let (_, body) = get(&format!("{}/v1/models", s.url), &[]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "reader");
    // An empty chat loads the model, as Ollama's clients expect.
    let (status, body) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "reader", "messages": []}),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["done"].clone(), v["done_reason"].clone()),
        (json!(true), json!("load"))
    );
}

#[test]
fn through_ollama_num_ctx_is_pinned_and_the_system_prompt_goes_first_byte_for_byte() {
    let fake = FakeServer::ollama(FakeConfig {
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let system = "  You are terse.\n\nKeep   spacing exactly.  ";
    let (status, body) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "m", "options": {"num_ctx": 999, "temperature": 0.1},
                "format": "json", "keep_alive": "5m",
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": "The db port is 5432. What is the db port?"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(ollama_text(&body).contains("5432"), "{body}");
    let reqs = fake.requests();
    let r = reqs.last().unwrap();
    assert_eq!(r["options"]["num_ctx"], 2048);
    assert_eq!(r["options"]["temperature"], 0.1);
    assert_eq!(r["format"], "json");
    assert_eq!(r["keep_alive"], "5m");
    assert_eq!(r["messages"][0]["role"], "system");
    assert_eq!(r["messages"][0]["content"], system);

    // Passed through unchanged: the upstream's own model list; /api/show advertises.
    let (status, body) = get(&format!("{}/api/tags", s.url), &[]);
    assert_eq!(status, 200);
    assert!(body.contains("\"m\""), "{body}");
    let (status, body) = post_json(&format!("{}/api/show", s.url), &json!({"model": "m"}));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["model_info"].is_object());
    assert!(v["parameters"].as_str().unwrap().contains("131072"));
}

#[test]
fn through_openai_the_prompt_cache_is_asked_for_and_errors_keep_their_shape() {
    let fake = FakeServer::openai(FakeConfig {
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::OpenAi(fake.url()), None));
    let (status, body) = post_json(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"model": "m", "stream": true, "temperature": 0.2,
                "messages": [{"role": "user", "content": "The region is eu-west-3. What is the region?"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("eu-west-3"), "{body}");
    let r = fake.requests().last().unwrap().clone();
    assert_eq!(r["cache_prompt"], true);
    assert_eq!(r["temperature"], 0.2);
    assert!(r["max_tokens"].as_u64().unwrap() <= 512);

    // A model the upstream does not have: an error in OpenAI's shape, before the stream.
    let (status, body) = post_json(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"model": "missing", "stream": true,
                "messages": [{"role": "user", "content": "hello there"}]}),
    );
    assert!(status >= 400, "{status} {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"].is_string(), "{body}");
}

#[test]
fn an_error_after_the_stream_started_is_an_error_line() {
    let fake = FakeServer::ollama(FakeConfig {
        context_length: Some(2048),
        stream_error: Some((2, "the model crashed".into())),
        reply: Some("one two three four five six".into()),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let (status, body) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "m", "messages": [{"role": "user", "content": "talk"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let ls = lines(&body);
    let last = ls.last().unwrap();
    assert!(
        last["error"].as_str().unwrap().contains("crashed"),
        "{body}"
    );
}

#[test]
fn off_loopback_needs_a_token_and_a_wrong_token_is_refused_everywhere() {
    let mut cfg = config(UpstreamSpec::Reader, Some(2048));
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = uctx_serve::check_listen(&cfg).unwrap_err();
    assert!(err.to_string().contains("--token"), "{err}");

    let mut cfg = config(UpstreamSpec::Reader, Some(2048));
    cfg.token = Some("s3cret".into());
    let s = start(cfg);
    let routes = [
        "/",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/v1/models",
        "/api/uctx/status",
        "/anything/else",
        "/s/abc/api/tags",
    ];
    for r in routes {
        for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let (status, _) = get(&format!("{}{r}", s.url), &headers);
            assert_eq!(status, 401, "{r} with {auth:?}");
        }
    }
    for r in [
        "/api/chat",
        "/v1/chat/completions",
        "/api/show",
        "/api/generate",
        "/mcp",
    ] {
        let (status, body) = post(
            &format!("{}{r}", s.url),
            "{}",
            &[("Authorization", "Bearer nope")],
        );
        assert_eq!(status, 401, "{r}");
        assert!(body.contains("error"));
    }
    let (status, _) = get(
        &format!("{}/api/tags", s.url),
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
}
