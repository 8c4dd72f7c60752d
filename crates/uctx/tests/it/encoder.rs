//! The bundled static encoder: agreement with the Python `model2vec` package, determinism,
//! Unicode, ranking, and errors.

use std::sync::OnceLock;

use uctx::encoder::{dot, Encoder, StaticEncoder};

fn model() -> &'static StaticEncoder {
    static MODEL: OnceLock<StaticEncoder> = OnceLock::new();
    MODEL.get_or_init(|| StaticEncoder::bundled().expect("the bundled model loads"))
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    tokens: usize,
    vector: Vec<f32>,
}

#[test]
fn matches_python_model2vec_reference_vectors() {
    let raw = include_str!("../data/encoder_reference.json");
    let reference: Reference = serde_json::from_str(raw).unwrap();
    assert!(reference.cases.len() >= 5);
    for case in &reference.cases {
        let got = model().encode(&case.text);
        assert_eq!(got.len(), case.vector.len(), "{:?}", case.text);
        let max_diff = got
            .iter()
            .zip(&case.vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max_diff < 1e-4,
            "{:?}: differs from model2vec by {max_diff}",
            case.text
        );
        assert!(dot(&got, &case.vector) > 0.9999, "{:?}", case.text);
        assert_eq!(
            model().count_tokens(&case.text),
            case.tokens,
            "{:?}",
            case.text
        );
    }
}

#[test]
fn unit_vectors_of_256_dims_and_a_stable_fingerprint() {
    let m = model();
    assert_eq!(m.dim(), 256);
    let v = m.encode("a perfectly ordinary sentence");
    assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
    let fp = m.fingerprint();
    assert!(fp.starts_with(uctx::encoder::BUNDLED_NAME), "{fp}");
    assert!(fp.ends_with(":256"), "{fp}");
    assert_eq!(fp, StaticEncoder::bundled().unwrap().fingerprint());
}

#[test]
fn empty_and_whitespace_encode_to_zero() {
    for text in ["", " ", "\n\t  \r\n"] {
        let v = model().encode(text);
        assert_eq!(v.len(), 256);
        assert!(v.iter().all(|&x| x == 0.0), "{text:?}");
        assert_eq!(model().count_tokens(text), 0);
    }
}

#[test]
fn deterministic_across_calls_and_thread_counts() {
    let texts: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "document {i}: the build of stage {} uses port {}",
                i % 7,
                8000 + i
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let one_by_one: Vec<Vec<f32>> = refs.iter().map(|t| model().encode(t)).collect();
    let batch = model().encode_batch(&refs);
    assert_eq!(
        batch, one_by_one,
        "batch (several threads) equals one by one"
    );
    // A fresh copy of the model starts with cold caches on every thread.
    let fresh = StaticEncoder::bundled().unwrap();
    let from_threads: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = refs
            .chunks(7)
            .map(|chunk| {
                let fresh = &fresh;
                s.spawn(move || chunk.iter().map(|t| fresh.encode(t)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(from_threads, one_by_one);
}

#[test]
fn unicode_texts_do_not_collapse() {
    let texts = [
        "café au lait",
        "東京は日本の首都です",
        "北京烤鸭很好吃",
        "Здравствуй, мир",
        "🎉",
        "🚀",
        "🎉🎉 party",
        "naïve résumé",
    ];
    let vecs: Vec<Vec<f32>> = texts.iter().map(|t| model().encode(t)).collect();
    for (i, a) in vecs.iter().enumerate() {
        assert!(
            (dot(a, a) - 1.0).abs() < 1e-4,
            "{:?} is not a unit vector",
            texts[i]
        );
        for (j, b) in vecs.iter().enumerate().skip(i + 1) {
            assert!(
                dot(a, b) < 0.98,
                "{:?} and {:?} collapse to one vector",
                texts[i],
                texts[j]
            );
        }
    }
}

#[test]
fn related_text_ranks_above_unrelated() {
    let cases = [
        (
            "which port does the web server listen on?",
            "the HTTP server accepts connections on port 8080",
            "my grandmother bakes apple pie every sunday",
        ),
        (
            "what did we name the database?",
            "we decided to call the postgres database orders_prod",
            "the weather was sunny at the beach",
        ),
        (
            "how do I fix a segmentation fault in C?",
            "a null pointer dereference crashes the program with SIGSEGV",
            "the orchestra played a symphony by Beethoven",
        ),
        (
            "When did Caroline go to the support group?",
            "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
            "Melanie: I painted a lake sunrise last year, it's special to me.",
        ),
    ];
    for (query, related, unrelated) in cases {
        let q = model().encode(query);
        let r = dot(&q, &model().encode(related));
        let u = dot(&q, &model().encode(unrelated));
        assert!(r > u + 0.05, "{query:?}: related {r} vs unrelated {u}");
    }
}

#[test]
fn long_texts_are_encoded_whole() {
    let head = "the quick brown fox jumps over the lazy dog. ".repeat(200);
    let a = format!("{head} kubernetes deployment manifests");
    let b = format!("{head} chocolate cake recipes");
    assert!(model().count_tokens(&a) > 2000);
    assert_ne!(model().encode(&a), model().encode(&b), "the tail counts");
}

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let err = StaticEncoder::load(&missing).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no-such-model"), "{msg}");
    assert!(msg.contains("bundled"), "names the fix: {msg}");

    std::fs::create_dir(&missing).unwrap();
    let msg = StaticEncoder::load(&missing).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn corrupt_table_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    model().save(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let msg = StaticEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn saved_directory_loads_back_as_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    model().save(dir.path()).unwrap();
    let loaded = StaticEncoder::load(dir.path()).unwrap();
    assert_eq!(loaded.fingerprint(), model().fingerprint());
    for text in ["hello world", "東京", "fn main() {}"] {
        let a = loaded.encode(text);
        let b = model().encode(text);
        assert!(dot(&a, &b) > 0.99999, "{text:?}");
    }
}
