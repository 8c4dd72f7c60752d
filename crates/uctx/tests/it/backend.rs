//! The model backends against fake servers on loopback: streaming, token accounting,
//! context length, and one clear error for each way a server can fail.

use std::net::TcpListener;
use std::time::Duration;

use uctx::backend::{
    from_spec, reader, Backend, BackendError, BackendOptions, ChatRequest, Message, Role,
};

use crate::fake_server::{FakeConfig, FakeServer};

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::new(Role::System, "You are a careful engineer."),
            Message::new(Role::User, text),
        ],
        num_ctx: 2048,
        max_tokens: 128,
        temperature: Some(0.0),
        cancel: None,
    }
}

fn backend(spec: &str, opts: &BackendOptions) -> Box<dyn Backend> {
    from_spec(spec, opts).expect("a valid spec")
}

fn chat(b: &dyn Backend, req: &ChatRequest) -> (Result<String, BackendError>, Vec<String>) {
    let mut pieces = Vec::new();
    let r = b.chat(req, &mut |t| pieces.push(t.to_string()));
    (r.map(|r| r.text), pieces)
}

/// A loopback port nobody listens on.
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

fn with_models(models: &[&str]) -> FakeConfig {
    FakeConfig {
        models: models.iter().map(|m| m.to_string()).collect(),
        ..FakeConfig::default()
    }
}

// ---- Ollama -------------------------------------------------------------------------

#[test]
fn ollama_streams_the_answer_and_reports_usage() {
    let server = FakeServer::ollama(with_models(&["qwen2.5:7b"]));
    let b = backend("ollama/qwen2.5:7b", &server.options());
    let req = request("The gateway port is 8443. What is the gateway port?");
    let mut pieces = Vec::new();
    let r = b
        .chat(&req, &mut |t| pieces.push(t.to_string()))
        .expect("chat");
    assert_eq!(r.text, "The gateway port is 8443.");
    assert!(pieces.len() > 1, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), r.text);
    assert_eq!(r.prompt_tokens, Some(reader::prompt_tokens(&req.messages)));
    assert_eq!(r.completion_tokens, Some(reader::approx_tokens(&r.text)));
    assert_eq!(r.done_reason.as_deref(), Some("stop"));
}

#[test]
fn ollama_is_sent_num_ctx_and_the_whole_prompt() {
    let server = FakeServer::ollama(with_models(&["m"]));
    let b = backend("ollama/m", &server.options());
    let req = request("Hello.");
    b.chat(&req, &mut |_| {}).expect("chat");
    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "m");
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["options"]["num_ctx"], 2048);
    assert_eq!(sent[0]["options"]["num_predict"], 128);
    assert_eq!(sent[0]["options"]["temperature"], 0.0);
    assert_eq!(server.prompts(), vec![req.messages]);
}

#[test]
fn ollama_reads_the_context_length() {
    let server = FakeServer::ollama(FakeConfig {
        context_length: Some(32768),
        ..with_models(&["m"])
    });
    assert_eq!(
        backend("ollama/m", &server.options()).context_length().ok(),
        Some(32768)
    );
    assert_eq!(server.log()[0].path, "/api/show");
    assert_eq!(server.log()[0].body["model"], "m");

    let server = FakeServer::ollama(FakeConfig {
        context_length: Some(32768),
        num_ctx_parameter: Some(8192),
        ..with_models(&["m"])
    });
    assert_eq!(
        backend("ollama/m", &server.options()).context_length().ok(),
        Some(8192)
    );

    let server = FakeServer::ollama(FakeConfig {
        context_length: None,
        ..with_models(&["m"])
    });
    let err = backend("ollama/m", &server.options()).context_length();
    assert!(
        matches!(err, Err(BackendError::NoContextLength { .. })),
        "{err:?}"
    );
    let opts = BackendOptions {
        context_override: Some(3000),
        ..server.options()
    };
    assert_eq!(backend("ollama/m", &opts).context_length().ok(), Some(3000));
}

#[test]
fn ollama_health_lists_models() {
    let server = FakeServer::ollama(with_models(&["qwen2.5:7b", "llama3:latest"]));
    let h = backend("ollama/llama3", &server.options())
        .health()
        .expect("health");
    assert_eq!(h.models, vec!["qwen2.5:7b", "llama3:latest"]);
    assert!(h.model_present);
    assert_eq!(h.context_length, Some(4096));
    assert_eq!(h.endpoint, server.url());
    let h = backend("ollama/phi3", &server.options())
        .health()
        .expect("health");
    assert!(!h.model_present);
}

#[test]
fn ollama_down_says_how_to_start_it() {
    let opts = BackendOptions {
        ollama_host: Some(format!("127.0.0.1:{}", dead_port())),
        ..BackendOptions::default()
    };
    let b = backend("ollama/m", &opts);
    let (r, _) = chat(&*b, &request("Hi."));
    let err = r.expect_err("nobody listens");
    assert!(matches!(err, BackendError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("ollama serve"), "{err}");
    assert!(matches!(
        b.context_length(),
        Err(BackendError::Unreachable { .. })
    ));
    assert!(matches!(b.health(), Err(BackendError::Unreachable { .. })));
}

#[test]
fn ollama_missing_model_says_pull_it() {
    let server = FakeServer::ollama(with_models(&["other"]));
    let b = backend("ollama/qwen2.5:7b", &server.options());
    let (r, _) = chat(&*b, &request("Hi."));
    let err = r.expect_err("not pulled");
    assert!(matches!(err, BackendError::ModelMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("ollama pull qwen2.5:7b"), "{err}");
    assert!(matches!(
        b.context_length(),
        Err(BackendError::ModelMissing { .. })
    ));
}

#[test]
fn ollama_dropped_stream_is_reported() {
    let server = FakeServer::ollama(FakeConfig {
        cut_after: Some(2),
        ..with_models(&["m"])
    });
    let b = backend("ollama/m", &server.options());
    let (r, pieces) = chat(
        &*b,
        &request("The gateway port is 8443. What is the gateway port?"),
    );
    assert!(matches!(r, Err(BackendError::StreamBroken { .. })), "{r:?}");
    assert_eq!(pieces.concat(), "The gateway ");
}

#[test]
fn ollama_error_in_the_stream_is_reported() {
    let server = FakeServer::ollama(FakeConfig {
        stream_error: Some((1, "out of memory".to_string())),
        ..with_models(&["m"])
    });
    let (r, _) = chat(
        &*backend("ollama/m", &server.options()),
        &request("Which port?"),
    );
    let err = r.expect_err("server error");
    assert!(matches!(err, BackendError::Server { .. }), "{err:?}");
    assert!(err.to_string().contains("out of memory"), "{err}");
}

const UNICODE: &str = "Größe: 東京タワー 🚀 façade — naïve ÅÄÖ 😀";

#[test]
fn ollama_text_split_inside_characters_arrives_intact() {
    let server = FakeServer::ollama(FakeConfig {
        split_utf8: true,
        reply: Some(UNICODE.to_string()),
        ..with_models(&["m"])
    });
    let (r, pieces) = chat(
        &*backend("ollama/m", &server.options()),
        &request("Say it."),
    );
    assert_eq!(r.expect("chat"), UNICODE);
    assert_eq!(pieces.concat(), UNICODE);
}

#[test]
fn ollama_stalled_stream_times_out() {
    let server = FakeServer::ollama(FakeConfig {
        delay: Duration::from_secs(3),
        ..with_models(&["m"])
    });
    let opts = BackendOptions {
        timeout: Some(Duration::from_millis(300)),
        ..server.options()
    };
    let (r, _) = chat(&*backend("ollama/m", &opts), &request("Hi."));
    assert!(matches!(r, Err(BackendError::StreamBroken { .. })), "{r:?}");
}

#[test]
fn ollama_garbage_is_a_protocol_error() {
    let server = FakeServer::ollama(FakeConfig {
        raw_stream: Some("<html>not ollama</html>\n".to_string()),
        ..with_models(&["m"])
    });
    let (r, _) = chat(&*backend("ollama/m", &server.options()), &request("Hi."));
    assert!(matches!(r, Err(BackendError::Protocol { .. })), "{r:?}");
}

// ---- OpenAI-compatible --------------------------------------------------------------

#[test]
fn openai_streams_the_answer_and_reads_usage() {
    let server = FakeServer::openai(with_models(&["m"]));
    let b = backend("openai/m", &server.options());
    let req = request("The database is postgres-16. Which database?");
    let mut pieces = Vec::new();
    let r = b
        .chat(&req, &mut |t| pieces.push(t.to_string()))
        .expect("chat");
    assert_eq!(r.text, "The database is postgres-16.");
    assert!(pieces.len() > 1);
    assert_eq!(r.prompt_tokens, Some(reader::prompt_tokens(&req.messages)));
    assert_eq!(r.completion_tokens, Some(reader::approx_tokens(&r.text)));
    assert_eq!(r.done_reason.as_deref(), Some("stop"));
    let sent = &server.requests()[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["max_tokens"], 128);
    assert_eq!(server.prompts(), vec![req.messages]);
}

#[test]
fn openai_key_is_sent_and_a_bad_one_is_reported() {
    let cfg = FakeConfig {
        api_key: Some("sk-right".to_string()),
        ..with_models(&["m"])
    };
    let server = FakeServer::openai(cfg);
    let wrong = BackendOptions {
        openai_api_key: Some("sk-wrong".to_string()),
        ..server.options()
    };
    for opts in [server.options(), wrong] {
        let b = backend("openai/m", &opts);
        let (r, _) = chat(&*b, &request("Hi."));
        let err = r.expect_err("refused");
        assert!(
            matches!(err, BackendError::Auth { status: 401, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
        assert!(matches!(b.health(), Err(BackendError::Auth { .. })));
    }
    let right = BackendOptions {
        openai_api_key: Some("sk-right".to_string()),
        ..server.options()
    };
    let (r, _) = chat(&*backend("openai/m", &right), &request("Hi."));
    assert_eq!(r.expect("accepted"), "OK.");
    let last = server.log().pop().expect("logged");
    assert_eq!(last.header("authorization"), Some("Bearer sk-right"));
}

#[test]
fn openai_missing_model_and_wrong_base_url() {
    let server = FakeServer::openai(with_models(&["m"]));
    let (r, _) = chat(
        &*backend("openai/gpt-x", &server.options()),
        &request("Hi."),
    );
    assert!(matches!(r, Err(BackendError::ModelMissing { .. })), "{r:?}");
    let h = backend("openai/gpt-x", &server.options())
        .health()
        .expect("health");
    assert!(!h.model_present);
    assert_eq!(h.models, vec!["m"]);

    let no_v1 = BackendOptions {
        openai_base_url: Some(format!("http://{}", server.host())),
        ..BackendOptions::default()
    };
    let (r, _) = chat(&*backend("openai/m", &no_v1), &request("Hi."));
    let err = r.expect_err("wrong path");
    assert!(
        matches!(err, BackendError::Endpoint { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/v1"), "{err}");
}

#[test]
fn openai_down_says_how_to_start_it() {
    let opts = BackendOptions {
        openai_base_url: Some(format!("http://127.0.0.1:{}/v1", dead_port())),
        ..BackendOptions::default()
    };
    let b = backend("openai/m", &opts);
    let (r, _) = chat(&*b, &request("Hi."));
    let err = r.expect_err("nobody listens");
    assert!(matches!(err, BackendError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("OPENAI_BASE_URL"), "{err}");
    assert!(matches!(
        b.context_length(),
        Err(BackendError::Unreachable { .. })
    ));
}

#[test]
fn openai_dropped_stream_is_reported() {
    let server = FakeServer::openai(FakeConfig {
        cut_after: Some(1),
        ..with_models(&["m"])
    });
    let (r, pieces) = chat(
        &*backend("openai/m", &server.options()),
        &request("The cache is redis. Which cache?"),
    );
    assert!(matches!(r, Err(BackendError::StreamBroken { .. })), "{r:?}");
    assert_eq!(pieces.concat(), "The ");
}

#[test]
fn openai_text_split_inside_characters_arrives_intact() {
    let server = FakeServer::openai(FakeConfig {
        split_utf8: true,
        reply: Some(UNICODE.to_string()),
        ..with_models(&["m"])
    });
    let (r, pieces) = chat(
        &*backend("openai/m", &server.options()),
        &request("Say it."),
    );
    assert_eq!(r.expect("chat"), UNICODE);
    assert_eq!(pieces.concat(), UNICODE);
}

/// llama.cpp's `n_cache_reuse` goes only to a server whose `/props` showed it is
/// llama.cpp's (another OpenAI-compatible server may refuse a field it does not know),
/// and not at all when it is turned off.
#[test]
fn openai_asks_llama_cpp_alone_to_reuse_shifted_cache() {
    let sent = |props: Option<usize>, reuse: Option<usize>| {
        let server = FakeServer::openai(FakeConfig {
            props_n_ctx: props,
            context_length: Some(4096),
            ..with_models(&["m"])
        });
        let opts = BackendOptions {
            cache_reuse: reuse,
            ..server.options()
        };
        let b = backend("openai/m", &opts);
        b.context_length().expect("a context length");
        chat(b.as_ref(), &request("hello")).0.expect("an answer");
        server.requests()[0].get("n_cache_reuse").cloned()
    };
    assert_eq!(
        sent(Some(2048), None),
        Some(serde_json::json!(uctx::backend::DEFAULT_CACHE_REUSE))
    );
    assert_eq!(sent(Some(2048), Some(256)), Some(serde_json::json!(256)));
    assert_eq!(sent(Some(2048), Some(0)), None);
    assert_eq!(sent(None, None), None);
}

#[test]
fn openai_context_length_from_props_then_models_then_flag() {
    let server = FakeServer::openai(FakeConfig {
        props_n_ctx: Some(2048),
        context_length: Some(8192),
        ..with_models(&["m"])
    });
    assert_eq!(
        backend("openai/m", &server.options()).context_length().ok(),
        Some(2048)
    );

    let server = FakeServer::openai(FakeConfig {
        context_length: Some(8192),
        ..with_models(&["m"])
    });
    assert_eq!(
        backend("openai/m", &server.options()).context_length().ok(),
        Some(8192)
    );

    let server = FakeServer::openai(FakeConfig {
        context_length: None,
        ..with_models(&["m"])
    });
    let err = backend("openai/m", &server.options()).context_length();
    let err = err.expect_err("nothing reported");
    assert!(
        matches!(err, BackendError::NoContextLength { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--ctx"), "{err}");
    let opts = BackendOptions {
        context_override: Some(1500),
        ..server.options()
    };
    assert_eq!(backend("openai/m", &opts).context_length().ok(), Some(1500));
}

#[test]
fn openai_garbage_is_a_protocol_error() {
    let server = FakeServer::openai(FakeConfig {
        raw_stream: Some("data: {not json\n\n".to_string()),
        ..with_models(&["m"])
    });
    let (r, _) = chat(&*backend("openai/m", &server.options()), &request("Hi."));
    assert!(matches!(r, Err(BackendError::Protocol { .. })), "{r:?}");
}

#[test]
fn openai_whole_answer_from_a_server_that_does_not_stream() {
    let server = FakeServer::openai(FakeConfig {
        ignore_stream: true,
        ..with_models(&["m"])
    });
    let req = request("The cache is redis. Which cache?");
    let mut pieces = Vec::new();
    let r = backend("openai/m", &server.options())
        .chat(&req, &mut |t| pieces.push(t.to_string()))
        .expect("chat");
    assert_eq!(r.text, "The cache is redis.");
    assert_eq!(pieces.concat(), r.text);
    assert_eq!(r.prompt_tokens, Some(reader::prompt_tokens(&req.messages)));
}

// ---- specs and options --------------------------------------------------------------

#[test]
fn specs_pick_the_backend() {
    let opts = BackendOptions::default();
    assert_eq!(backend("reader", &opts).spec(), "reader");
    assert_eq!(
        backend("ollama/qwen2.5:7b", &opts).spec(),
        "ollama/qwen2.5:7b"
    );
    assert_eq!(
        backend("openai/gpt-4o-mini", &opts).spec(),
        "openai/gpt-4o-mini"
    );
    for bad in ["", "gpt", "ollama/", "vllm/m", "openai"] {
        assert!(
            matches!(from_spec(bad, &opts), Err(BackendError::BadSpec { .. })),
            "{bad:?}"
        );
    }
    let reader = backend("reader", &opts);
    assert_eq!(reader.context_length().ok(), Some(4096));
    assert_eq!(reader.health().expect("health").endpoint, "built-in");
}

#[test]
fn flags_win_over_the_environment() {
    let env = |name: &str| match name {
        "OLLAMA_HOST" => Some("gpu:11434".to_string()),
        "OPENAI_BASE_URL" => Some("http://h:1/v1".to_string()),
        "OPENAI_API_KEY" => Some(" ".to_string()),
        _ => None,
    };
    let opts = BackendOptions {
        ollama_host: Some("flag:1".to_string()),
        ..BackendOptions::default()
    }
    .with_env_from(env);
    assert_eq!(opts.ollama_host.as_deref(), Some("flag:1"));
    assert_eq!(opts.openai_base_url.as_deref(), Some("http://h:1/v1"));
    assert_eq!(opts.openai_api_key, None, "blank counts as unset");
}

/// A cancelled request stops reading where it is and returns what came, marked.
#[test]
fn a_cancelled_stream_stops_early_on_both_apis() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for (spec, server) in [
        (
            "ollama/m",
            FakeServer::ollama(FakeConfig {
                delay: Duration::from_millis(40),
                reply: Some("one two three four five six seven eight nine ten".into()),
                ..with_models(&["m"])
            }),
        ),
        (
            "openai/m",
            FakeServer::openai(FakeConfig {
                delay: Duration::from_millis(40),
                reply: Some("one two three four five six seven eight nine ten".into()),
                ..with_models(&["m"])
            }),
        ),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let req = ChatRequest {
            cancel: Some(Arc::clone(&stop)),
            ..request("Count to ten.")
        };
        let b = backend(spec, &server.options());
        let mut pieces = 0;
        let r = b
            .chat(&req, &mut |_| {
                pieces += 1;
                if pieces == 3 {
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .unwrap();
        assert_eq!(
            r.done_reason.as_deref(),
            Some(uctx::backend::INTERRUPTED),
            "{spec}"
        );
        assert!(r.text.starts_with("one"), "{spec}: {:?}", r.text);
        assert!(
            !r.text.contains("ten"),
            "{spec}: read past the cancel: {:?}",
            r.text
        );
    }
}
