//! Re-encoding a pool written by another encoder.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use uctx::encoder::{Encoder, StaticEncoder};
use uctx::memory::{reembed, Memory, Unit};
use uctx::pool::{Pool, Scope, WitnessEvent};
use uctx::{Error, Source};

/// A small encoder of its own: character-trigram hashing into 32 dimensions.
struct Trigrams;

impl Encoder for Trigrams {
    fn dim(&self) -> usize {
        32
    }
    fn fingerprint(&self) -> String {
        "test-trigrams:32".into()
    }
    fn encode(&self, text: &str) -> Vec<f32> {
        let chars: Vec<char> = text.to_lowercase().chars().collect();
        let mut v = vec![0f32; 32];
        for w in chars.windows(3) {
            let h = w
                .iter()
                .fold(7u32, |h, c| h.wrapping_mul(31).wrapping_add(*c as u32));
            v[(h % 32) as usize] += 1.0;
        }
        uctx::encoder::normalize(&mut v);
        v
    }
    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

#[test]
fn reembed_moves_a_pool_to_another_encoder_keeping_text_and_pins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let bundled: Arc<dyn Encoder> = Arc::new(StaticEncoder::bundled().unwrap());
    {
        let m = Memory::open(&path, Arc::clone(&bundled), true, false, None).unwrap();
        let ids = m
            .write(&[
                Unit {
                    namespace: "a",
                    source: Source::User,
                    text: "The gateway port is 8443.",
                    turn: 1,
                    ext_id: None,
                },
                Unit {
                    namespace: "b",
                    source: Source::Document,
                    text: "Onions simmer slowly.",
                    turn: 0,
                    ext_id: Some("notes.md"),
                },
            ])
            .unwrap();
        m.pool().record(&[WitnessEvent::Pin(ids[1])]).unwrap();
    }
    let other: Arc<dyn Encoder> = Arc::new(Trigrams);
    match Memory::open(&path, Arc::clone(&other), false, false, None) {
        Err(Error::EncoderMismatch { pool, current }) => {
            assert_eq!(pool, bundled.fingerprint());
            assert_eq!(current, other.fingerprint());
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a pool opened with another encoder"),
    }
    assert_eq!(
        Pool::inspect(&path).unwrap(),
        (bundled.fingerprint(), bundled.dim())
    );

    let done = reembed(
        &path,
        Arc::clone(&other),
        &|_, _| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(done.slices, 2);
    assert_eq!(Pool::inspect(&path).unwrap(), (other.fingerprint(), 32));
    let m = Memory::open(&path, other, false, false, None).unwrap();
    let metas = m.pool().metas(Scope::All).unwrap();
    assert_eq!(metas.len(), 2);
    let doc = metas.iter().find(|x| x.namespace == "b").unwrap();
    assert!(doc.pinned, "pins survive");
    assert_eq!(doc.ext_id.as_deref(), Some("notes.md"));
    let hits = m.recall("gateway port", 1, Scope::Namespace("a")).unwrap();
    assert_eq!(hits[0].slice.text, "The gateway port is 8443.");
    assert!(!dir.path().join("pool.reembed").exists());
    assert!(!dir.path().join("pool.reembed-old").exists());
}
