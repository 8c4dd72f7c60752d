//! `uctx pool copy`: every live slice of one pool into another, directory or
//! team pool either way.

use uctx::encoder::Encoder;
use uctx::pool::{Scope, Store, WitnessEvent};
use uctx::{Error, NewSlice, Result, Slice};

/// Slices read, encoded and appended per batch (one durable write each).
const BATCH: usize = 256;

/// What [`copy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub slices: u64,
    pub pinned: u64,
    /// Uses carried over.
    pub uses: u64,
    /// Whether the destination kept the source's ids (a team pool does; a
    /// directory gives its own, in the same order).
    pub kept_ids: bool,
    /// Slices an earlier, interrupted copy had already brought over (its
    /// highest id was the last one).
    pub resumed: u64,
}

/// Copy every live slice of `src` into `dst`: text and provenance (namespace,
/// source, turn, caller's id, tokens, salience), pins and uses. Vectors are
/// encoded again by `encoder`, the encoder both pools were opened for (so they
/// are the ones `src` holds). A destination that keeps ids ([`Store::import`],
/// a team pool) gets the source's ids, write times and last uses, each batch
/// with its witness state in one transaction, and a copy cut short resumes
/// after the highest id it holds; a directory gives ids of its own, in
/// `src`'s order, and must be empty. `progress` gets (done, total) after each
/// batch.
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
    let metas = src.metas(Scope::All)?;
    let held = dst.ids(Scope::All)?;
    // An empty import asks whether `dst` keeps ids, writing nothing.
    let keeps = dst.import(&[])?;
    let mut done = Copied {
        kept_ids: keeps,
        ..Copied::default()
    };
    let mut from = 0;
    if let Some(&last) = held.last() {
        if !keeps {
            return Err(Error::invalid(format!(
                "{} already holds {} slices; copy into an empty pool (a new directory, or a database or schema without one)",
                dst.location(),
                held.len()
            )));
        }
        // A copy cut short: what it holds is the start of the source, id for id.
        let source: std::collections::HashSet<u64> = metas.iter().map(|m| m.id).collect();
        let same_last = match (src.get(last)?, dst.get(last)?) {
            (Some(a), Some(b)) => a.text == b.text && a.meta.namespace == b.meta.namespace,
            _ => false,
        };
        if !same_last || !held.iter().all(|id| source.contains(id)) {
            return Err(Error::invalid(format!(
                "{} already holds {} slices that are not an interrupted copy of {}; copy into an empty pool (a new directory, or a database or schema without one)",
                dst.location(),
                held.len(),
                src.location()
            )));
        }
        from = metas.partition_point(|m| m.id <= last);
        done.resumed = held.len() as u64;
    }
    let total = metas.len() as u64;
    progress(done.resumed, total);
    for chunk in metas[from..].chunks(BATCH) {
        let mut slices = Vec::with_capacity(chunk.len());
        for m in chunk {
            // A slice deleted since the listing is not copied.
            if let Some(s) = src.get(m.id)? {
                slices.push(s);
            }
        }
        let texts: Vec<&str> = slices.iter().map(|s| s.text.as_str()).collect();
        let vectors = encoder.encode_batch(&texts);
        let batch: Vec<(Slice, Vec<f32>)> = slices.into_iter().zip(vectors).collect();
        if !keeps {
            append_renumbered(dst, &batch)?;
        } else if !dst.import(&batch)? {
            return Err(Error::invalid(format!(
                "{} took an empty import and then refused slices",
                dst.location()
            )));
        }
        for (s, _) in &batch {
            done.pinned += u64::from(s.meta.pinned);
            done.uses += u64::from(s.meta.uses);
        }
        done.slices += batch.len() as u64;
        progress(done.resumed + done.slices, total);
    }
    Ok(done)
}

/// Append `batch` with `dst`'s own ids, then its pins and uses as witness events.
fn append_renumbered(dst: &dyn Store, batch: &[(Slice, Vec<f32>)]) -> Result<()> {
    let new: Vec<(NewSlice, Vec<f32>)> = batch
        .iter()
        .map(|(s, v)| (crate::unwritten(s), v.clone()))
        .collect();
    let ids = dst.append(&new)?;
    let mut events = Vec::new();
    for ((s, _), id) in batch.iter().zip(&ids) {
        if s.meta.pinned {
            events.push(WitnessEvent::Pin(*id));
        }
        events.extend((0..s.meta.uses).map(|_| WitnessEvent::Used(*id)));
    }
    dst.record(&events)
}
