//! Text → unit vector. Stateless, deterministic, never touches the network.

use crate::Result;

mod static_model;
pub use static_model::{StaticEncoder, BUNDLED_DIM, BUNDLED_FINGERPRINT, BUNDLED_NAME};

/// An embedding model: text in, L2-normalized vector of [`Encoder::dim`] floats out.
///
/// Implementations are deterministic (same text → same vector, across runs and
/// thread counts) and handle any Unicode; empty or whitespace-only text encodes
/// to the zero vector.
pub trait Encoder: Send + Sync {
    /// Dimension of every vector this encoder returns.
    fn dim(&self) -> usize;

    /// A stable identity of the model (name, content hash, dimension), recorded in a pool
    /// so that a pool is never searched with vectors from another model.
    fn fingerprint(&self) -> String;

    /// Encode one text.
    fn encode(&self, text: &str) -> Vec<f32>;

    /// Encode many texts; the default encodes them one by one.
    fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// Tokens in `text` as the encoder's tokenizer counts them (no special tokens).
    fn count_tokens(&self, text: &str) -> usize;
}

/// Cosine similarity of two unit vectors (their dot product).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent lanes so the compiler vectorises the sum.
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Scale `v` to unit length in place; a zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Check a vector's dimension against the encoder's.
pub fn check_dim(expected: usize, v: &[f32]) -> Result<()> {
    if v.len() == expected {
        Ok(())
    } else {
        Err(crate::Error::DimMismatch {
            expected,
            got: v.len(),
        })
    }
}
