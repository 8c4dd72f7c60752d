//! `uctx pool copy`: every live slice of one pool into another, directory or
//! team pool either way.

use uctx::encoder::Encoder;
use uctx::pool::{Scope, Store, WitnessEvent};
use uctx::{Error, NewSlice, Result};

/// Slices read, encoded and appended per batch (one durable write each).
const BATCH: usize = 256;

/// What [`copy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub slices: u64,
    pub pinned: u64,
    /// Uses carried over (each one a `Used` event).
    pub uses: u64,
}

/// Copy every live slice of `src` into `dst`, which must be empty: text and
/// provenance (namespace, source, turn, caller's id, tokens, salience), pins
/// and uses. Vectors are encoded again by `encoder`, the encoder both pools
/// were opened for (so they are the ones `src` holds). Ids are `dst`'s own,
/// in `src`'s order. `progress` gets (done, total) after each batch.
pub fn copy(
    src: &dyn Store,
    dst: &dyn Store,
    encoder: &dyn Encoder,
    progress: &dyn Fn(u64, u64),
) -> Result<Copied> {
    for (pool, what) in [(src, "source"), (dst, "destination")] {
        if pool.encoder_fingerprint() != encoder.fingerprint() {
            return Err(Error::EncoderMismatch {
                pool: format!("{} (the {what})", pool.encoder_fingerprint()),
                current: encoder.fingerprint(),
            });
        }
    }
    let held = dst.stats()?.slices;
    if held > 0 {
        return Err(Error::invalid(format!(
            "{} already holds {held} slices; copy into an empty pool (a new directory, or a database or schema without one)",
            dst.location()
        )));
    }
    let metas = src.metas(Scope::All)?;
    let total = metas.len() as u64;
    let mut done = Copied::default();
    progress(0, total);
    for chunk in metas.chunks(BATCH) {
        let mut slices = Vec::with_capacity(chunk.len());
        for m in chunk {
            // A slice deleted since the listing is not copied.
            if let Some(s) = src.get(m.id)? {
                slices.push(s);
            }
        }
        let texts: Vec<&str> = slices.iter().map(|s| s.text.as_str()).collect();
        let vectors = encoder.encode_batch(&texts);
        let batch: Vec<(NewSlice, Vec<f32>)> = slices
            .iter()
            .zip(vectors)
            .map(|(s, v)| {
                let m = &s.meta;
                let n = NewSlice {
                    namespace: m.namespace.clone(),
                    source: m.source,
                    text: s.text.clone(),
                    tokens: m.tokens,
                    turn: m.turn,
                    ext_id: m.ext_id.clone(),
                    salience: m.salience,
                };
                (n, v)
            })
            .collect();
        let ids = dst.append(&batch)?;
        let mut events = Vec::new();
        for (s, id) in slices.iter().zip(&ids) {
            if s.meta.pinned {
                events.push(WitnessEvent::Pin(*id));
                done.pinned += 1;
            }
            events.extend((0..s.meta.uses).map(|_| WitnessEvent::Used(*id)));
            done.uses += u64::from(s.meta.uses);
        }
        dst.record(&events)?;
        done.slices += ids.len() as u64;
        progress(done.slices, total);
    }
    Ok(done)
}
