//! Conversations from stateless requests: paging past the window, stored once, forks,
//! keys, interleaved clients, housekeeping.

use serde_json::{json, Value};
use uctx_serve::{ServeConfig, UpstreamSpec};

use crate::fake_server::{FakeConfig, FakeServer};
use crate::{config, get, ollama_text, post, post_json, start};

fn status(url: &str) -> Value {
    let (code, body) = get(&format!("{url}/api/uctx/status"), &[]);
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// A long filler turn of about 120 words that shares no subject with the facts.
fn filler(i: usize) -> String {
    format!(
        "Log {i}: the build of module {i} went through review; \
         we walked over the queue handling, the retry loops, the tracing spans and \
         the test matrix for platform {i}, noted two flaky cases, reran them until \
         green, and agreed that nothing in this step changes the plan. {}",
        "Further notes on routine chores and cleanup follow without any new decision. ".repeat(8)
    )
}

fn chat(url: &str, messages: &[Value]) -> String {
    let (code, body) = post_json(
        &format!("{url}/api/chat"),
        &json!({"model": "reader", "stream": false, "messages": messages}),
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["message"]["content"].as_str().unwrap().to_string()
}

#[test]
fn a_first_turn_fact_is_paged_in_past_the_window_and_each_message_is_stored_once() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let mut messages = vec![
        json!({"role": "system", "content": "You are a build assistant."}),
        json!({"role": "user", "content": "Decision: the deploy token is kestrel-42."}),
    ];
    let mut sent_tokens = 0usize;
    let mut i = 0;
    while sent_tokens < 20_000 {
        let answer = chat(&s.url, &messages);
        messages.push(json!({"role": "assistant", "content": answer}));
        i += 1;
        let f = filler(i);
        sent_tokens += f.split_whitespace().count() * 4 / 3;
        messages.push(json!({"role": "user", "content": f}));
    }
    let answer = chat(&s.url, &messages);
    messages.push(json!({"role": "assistant", "content": answer}));
    messages.push(json!({"role": "user", "content": "What is the deploy token?"}));
    let main = messages;
    let st = status(&s.url);
    let before = st["sessions"].as_array().unwrap().len();
    let answer = chat(&s.url, &main);
    assert!(answer.contains("kestrel-42"), "{answer}");
    let st = status(&s.url);
    let sessions = st["sessions"].as_array().unwrap();
    assert!(sessions.len() <= before + 1);
    let first = &sessions[0];
    assert!(first["paged_in"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["overflows"], 0, "{first}");
    // Every message of the main line is in the pool once: one slice each.
    let slices = first["slices"].as_u64().unwrap();
    let msgs = first["messages"].as_u64().unwrap();
    assert_eq!(slices, msgs, "{first}");
}

#[test]
fn resending_the_same_conversation_stores_each_message_once() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let mut messages = vec![json!({"role": "user", "content": "The cache size is 64 MB."})];
    for i in 0..50 {
        let answer = chat(&s.url, &messages);
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(
            json!({"role": "user", "content": format!("Step {i} done; the next one follows.")}),
        );
    }
    let st = status(&s.url);
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{st}");
    // 50 answered turns: 50 inputs and 50 answers; the last input is not answered yet.
    assert_eq!(sessions[0]["messages"], 100);
    assert_eq!(sessions[0]["slices"], 100);
    assert_eq!(st["pool"]["slices"], 100);
}

#[test]
fn an_edited_turn_forks_and_the_old_branch_is_not_seen() {
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let u1 = json!({"role": "user", "content": "The color is blue."});
    let a1 = json!({"role": "assistant", "content": chat(&s.url, std::slice::from_ref(&u1))});
    let u2 = json!({"role": "user", "content": "The shape is round."});
    chat(&s.url, &[u1.clone(), a1.clone(), u2]);
    let edited = json!({"role": "user", "content": "The size is big. What is the shape? What is the color?"});
    let answer = chat(&s.url, &[u1, a1, edited]);
    assert!(!answer.contains("round"), "{answer}");
    assert!(answer.contains("blue"), "{answer}");
    let last_prompt = fake.prompts().pop().unwrap();
    assert!(last_prompt.iter().all(|m| !m.content.contains("round")));
    let st = status(&s.url);
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{st}");
    assert_eq!(sessions[1]["forked_from"], sessions[0]["id"]);
    // The fork took the shared start over without storing it again.
    assert_eq!(sessions[1]["slices"], 2, "{st}");
}

#[test]
fn interleaved_clients_never_see_each_other() {
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let mut a = vec![json!({"role": "user", "content": "Alpha here: the alpha code is 111."})];
    let mut b = vec![json!({"role": "user", "content": "Beta here: the beta code is 222."})];
    for i in 0..6 {
        for (conv, mine, theirs) in [(&mut a, "111", "222"), (&mut b, "222", "111")] {
            let answer = chat(&s.url, conv);
            conv.push(json!({"role": "assistant", "content": answer}));
            conv.push(json!({"role": "user", "content": format!("Turn {i}. What is the code?")}));
            let prompt = fake.prompts().pop().unwrap();
            let all: String = prompt.iter().map(|m| m.content.clone()).collect();
            assert!(all.contains(mine) && !all.contains(theirs), "{all}");
        }
    }
    let st = status(&s.url);
    assert_eq!(st["sessions"].as_array().unwrap().len(), 2, "{st}");
}

#[test]
fn keys_separate_conversations_with_the_same_words() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let m = json!([{"role": "user", "content": "The secret is plum."}]);
    let body = json!({"model": "reader", "stream": false, "messages": m}).to_string();
    let (c1, _) = post(&format!("{}/s/one/api/chat", s.url), &body, &[]);
    let (c2, _) = post(
        &format!("{}/api/chat", s.url),
        &body,
        &[("X-Uctx-Session", "two")],
    );
    let (c3, _) = post(
        &format!("{}/v1/chat/completions", s.url),
        &body,
        &[("X-OpenWebUI-Chat-Id", "three")],
    );
    let (c4, _) = post(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"model": "reader", "user": "four", "messages": m}).to_string(),
        &[],
    );
    assert_eq!((c1, c2, c3, c4), (200, 200, 200, 200));
    let st = status(&s.url);
    let names: Vec<&str> = st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["serve/one", "serve/two", "serve/three", "serve/four"]
    );
}

#[test]
fn housekeeping_requests_are_answered_and_not_stored() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let m = vec![
        json!({"role": "user", "content": "### Task:\nGenerate a concise title for the chat. What is the title?"}),
    ];
    let (code, body) = post_json(
        &format!("{}/api/chat", s.url),
        &json!({"model": "reader", "messages": m}),
    );
    assert_eq!(code, 200, "{body}");
    assert!(!ollama_text(&body).is_empty());
    let st = status(&s.url);
    assert_eq!(st["pool"]["slices"], 0, "{st}");
    assert_eq!(st["housekeeping_requests"], 1);
    assert!(st["sessions"].as_array().unwrap().is_empty());
}

#[test]
fn tool_calls_stream_with_an_index_and_come_back_with_their_results() {
    let sse = [
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_7","type":"function","function":{"name":"weather","arguments":""}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5}}"#,
        "[DONE]",
    ]
    .iter()
    .map(|d| format!("data: {d}\n\n"))
    .collect::<String>();
    let up = crate::capture::start(sse);
    let s = start(config(UpstreamSpec::OpenAi(up.url.clone()), Some(2048)));
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let url = format!("{}/v1/chat/completions", s.url);
    let ask = json!({"role": "user", "content": "What is the weather in Oslo?"});
    let (code, body) = post_json(
        &url,
        &json!({"model": "m", "stream": true, "tools": tools, "messages": [ask]}),
    );
    assert_eq!(code, 200, "{body}");
    let ev = crate::events(&body);
    let pieces: Vec<&Value> = ev
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(pieces.len(), 1, "{body}");
    assert_eq!(pieces[0]["index"], 0);
    assert_eq!(pieces[0]["id"], "call_7");
    assert_eq!(pieces[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert!(ev
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert_eq!(up.bodies.lock().unwrap()[0]["tools"], tools);

    // The client sends the call back with its result: both reach the model together.
    let messages = json!([ask,
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_7", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "The weather is sunny."},
        {"role": "user", "content": "So?"}
    ]);
    let (code, body) = post_json(
        &url,
        &json!({"model": "m", "tools": tools, "messages": messages}),
    );
    assert_eq!(code, 200, "{body}");
    let r = up.bodies.lock().unwrap().last().unwrap().clone();
    let sent = r["messages"].as_array().unwrap();
    let call = sent
        .iter()
        .position(|m| m.get("tool_calls").is_some())
        .unwrap_or_else(|| panic!("the call is sent: {r}"));
    assert_eq!(sent[call + 1]["role"], "tool");
    assert_eq!(sent[call + 1]["tool_call_id"], "call_7");
    // The answer with the call was kept once; the result is in the pool as a tool slice.
    let st: Value =
        serde_json::from_str(&get(&format!("{}/api/uctx/status", s.url), &[]).1).unwrap();
    assert_eq!(st["sessions"].as_array().unwrap().len(), 1, "{st}");
    let metas = s.memory.pool().metas(uctx::pool::Scope::All).unwrap();
    assert!(
        metas.iter().any(|m| m.source == uctx::Source::Tool),
        "{metas:?}"
    );
}

#[test]
fn a_restarted_server_still_knows_its_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        std::sync::Arc::new(
            uctx::memory::Memory::open(
                dir.path(),
                std::sync::Arc::new(uctx::encoder::StaticEncoder::bundled().unwrap()),
                true,
                false,
                None,
            )
            .unwrap(),
        )
    };
    let mut messages = vec![json!({"role": "user", "content": "The queue depth is 12."})];
    {
        let s = crate::start_with(config(UpstreamSpec::Reader, Some(2048)), open(), None);
        for i in 0..3 {
            let answer = chat(&s.url, &messages);
            messages.push(json!({"role": "assistant", "content": answer}));
            messages.push(
                json!({"role": "user", "content": format!("Step {i}. What is the queue depth?")}),
            );
        }
    }
    let s = crate::start_with(config(UpstreamSpec::Reader, Some(2048)), open(), None);
    let answer = chat(&s.url, &messages);
    assert!(answer.contains("12"), "{answer}");
    let st = status(&s.url);
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{st}");
    assert_eq!(sessions[0]["messages"], 8);
    assert_eq!(st["pool"]["slices"], 8, "{st}");
}

#[test]
fn a_client_that_disconnects_mid_stream_leaves_a_consistent_pool() {
    use std::io::{BufRead, BufReader};
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(2048),
        reply: Some("one two three four five six seven eight nine ten".into()),
        delay: std::time::Duration::from_millis(40),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let u1 = json!({"role": "user", "content": "Count to ten."});
    let resp = ureq::post(&format!("{}/api/chat", s.url))
        .send_string(&json!({"model": "m", "messages": [u1]}).to_string())
        .unwrap();
    let mut reader = BufReader::new(resp.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("one"), "{first}");
    drop(reader);
    // The turn completes without its client and is kept whole: input and answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = status(&s.url);
        if st["pool"]["slices"] == 2 && st["sessions"][0].get("busy").is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The client sends the same request again: a regeneration, answered on a fork.
    let answer = chat(&s.url, std::slice::from_ref(&u1));
    assert!(answer.contains("ten"), "{answer}");
    let st = status(&s.url);
    assert_eq!(
        st["sessions"].as_array().unwrap().len(),
        2,
        "a retry is a regeneration: {st}"
    );
    assert_eq!(
        st["pool"]["slices"], 3,
        "its input is not written again: {st}"
    );
}

#[test]
fn a_keyed_client_that_sends_only_its_latest_message_keeps_its_memory() {
    let s = start(config(UpstreamSpec::Reader, Some(2048)));
    let url = format!("{}/s/notes/api/chat", s.url);
    let ask = |text: &str| {
        let body = json!({"model": "reader", "stream": false,
                          "messages": [{"role": "user", "content": text}]});
        let (code, body) = post_json(&url, &body);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    ask("The fruit of the week is plum.");
    for i in 0..30 {
        ask(&filler(i));
    }
    let answer = ask("What is the fruit of the week?");
    assert!(answer.contains("plum"), "{answer}");
    let st = status(&s.url);
    assert_eq!(st["sessions"].as_array().unwrap().len(), 1, "{st}");
}

#[test]
fn a_fork_pages_in_the_shared_start_that_slid_out_of_its_window() {
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let mut messages =
        vec![json!({"role": "user", "content": "Decision: the deploy token is kestrel-42."})];
    for i in 1..=24 {
        let answer = chat(&s.url, &messages);
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(json!({"role": "user", "content": filler(i)}));
    }
    // The main line goes on with a message the fork will replace.
    let answer = chat(&s.url, &messages);
    messages.push(json!({"role": "assistant", "content": answer}));
    let mut replaced = messages.clone();
    replaced.push(json!({"role": "user", "content": "The deploy token was rotated to falcon-9."}));
    chat(&s.url, &replaced);
    // An edit of that message forks; the fork's request holds the whole shared start,
    // far more than the window, and asks about its first turn.
    messages.push(json!({"role": "user", "content": "Which deploy token do we use?"}));
    chat(&s.url, &messages);
    let st = status(&s.url);
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{st}");
    assert_eq!(sessions[1]["forked_from"], sessions[0]["id"]);
    let prompt = fake.prompts().pop().unwrap();
    let text: String = prompt.iter().map(|m| m.content.as_str()).collect();
    assert!(
        !prompt
            .iter()
            .any(|m| m.content.starts_with("Decision: the deploy token")),
        "the first turn has slid out of the window (what the test is about): {prompt:?}"
    );
    assert!(
        text.contains("kestrel-42"),
        "the parent's first turn is paged in: {prompt:?}"
    );
    assert!(
        !text.contains("falcon-9"),
        "the replaced branch is never seen: {prompt:?}"
    );
    // The fork stored only what it added.
    assert_eq!(sessions[1]["slices"], 2, "{st}");
}

#[test]
fn a_regeneration_writes_only_its_answer_and_its_input_stays_in_memory() {
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let mut messages = vec![json!({"role": "user", "content": "Good morning."})];
    let answer = chat(&s.url, &messages);
    messages.push(json!({"role": "assistant", "content": answer}));
    messages.push(json!({"role": "user", "content": "Decision: the deploy token is kestrel-42."}));
    chat(&s.url, &messages);
    // The same request again: a regeneration. Its input is the parent's; only the
    // new answer is written.
    let again = chat(&s.url, &messages);
    let st = status(&s.url);
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{st}");
    assert_eq!(sessions[1]["forked_from"], sessions[0]["id"]);
    assert_eq!(sessions[1]["slices"], 1, "{st}");
    assert_eq!(st["pool"]["slices"], 5, "{st}");
    // The fork goes on until the regenerated turn's input has left its window; asked
    // about it, the fork pages it in from the parent.
    messages.push(json!({"role": "assistant", "content": again}));
    for i in 1..=24 {
        messages.push(json!({"role": "user", "content": filler(i)}));
        let answer = chat(&s.url, &messages);
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    messages.push(json!({"role": "user", "content": "Which deploy token do we use?"}));
    chat(&s.url, &messages);
    let st = status(&s.url);
    assert_eq!(st["sessions"].as_array().unwrap().len(), 2, "{st}");
    let prompt = fake.prompts().pop().unwrap();
    let text: String = prompt.iter().map(|m| m.content.as_str()).collect();
    assert!(
        !prompt
            .iter()
            .any(|m| m.content.starts_with("Decision: the deploy token")),
        "the regenerated turn has slid out of the window (what the test is about): {prompt:?}"
    );
    assert!(
        text.contains("kestrel-42"),
        "the regenerated turn's input is paged in: {prompt:?}"
    );
}

#[test]
fn a_tool_result_sent_last_is_stored_as_a_tool_slice_in_its_calls_turn() {
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(4096),
        ..FakeConfig::default()
    });
    let s = start(config(UpstreamSpec::Ollama(fake.url()), None));
    let ask = json!({"role": "user", "content": "What is the weather in Oslo?"});
    chat(&s.url, std::slice::from_ref(&ask));
    let messages = [
        ask,
        json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}),
        json!({"role": "tool", "tool_name": "weather", "content": "Sunny, 21 degrees."}),
    ];
    chat(&s.url, &messages);
    let metas = s.memory.pool().metas(uctx::pool::Scope::All).unwrap();
    let texts: Vec<(uctx::Source, u64, String)> = metas
        .iter()
        .map(|m| {
            let text = s.memory.pool().get(m.id).unwrap().unwrap().text;
            (m.source, m.turn, text)
        })
        .collect();
    let result = texts
        .iter()
        .find(|(_, _, t)| t.contains("Sunny, 21 degrees"))
        .unwrap_or_else(|| panic!("the result is stored: {texts:?}"));
    assert_eq!(result.0, uctx::Source::Tool, "{texts:?}");
    let call = texts
        .iter()
        .find(|(src, _, t)| *src == uctx::Source::Assistant && t.contains("weather"))
        .unwrap_or_else(|| panic!("the call is stored: {texts:?}"));
    assert_eq!(
        result.1, call.1,
        "the result joins its call's turn: {texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|(_, _, t)| t.contains("Sunny")).count(),
        1,
        "{texts:?}"
    );
}

#[test]
fn conversations_search_the_documents_namespaces_the_server_names() {
    let fake = FakeServer::ollama(FakeConfig {
        models: vec![],
        context_length: Some(2048),
        ..FakeConfig::default()
    });
    let ask = [json!({"role": "user", "content": "Which port does the billing gateway use?"})];
    for (docs, seen) in [(vec!["kb".to_string()], true), (vec![], false)] {
        let s = start(ServeConfig {
            docs,
            ..config(UpstreamSpec::Ollama(fake.url()), None)
        });
        s.memory
            .write(&[uctx::memory::Unit {
                namespace: "kb",
                source: uctx::Source::Document,
                text: "Runbook: the billing gateway listens on port 7443.",
                turn: 0,
                ext_id: None,
            }])
            .unwrap();
        chat(&s.url, &ask);
        let prompt = fake.prompts().pop().unwrap();
        let text: String = prompt.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(text.contains("port 7443"), seen, "{prompt:?}");
    }
}
