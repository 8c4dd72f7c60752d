//! The unit of memory: a slice of about 512 tokens with its provenance.

use serde::{Deserialize, Serialize};

/// Where a slice came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    User,
    Assistant,
    Tool,
    Document,
    Pinned,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::User,
        Source::Assistant,
        Source::Tool,
        Source::Document,
        Source::Pinned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Assistant => "assistant",
            Source::Tool => "tool",
            Source::Document => "document",
            Source::Pinned => "pinned",
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Source::User => 0,
            Source::Assistant => 1,
            Source::Tool => 2,
            Source::Document => 3,
            Source::Pinned => 4,
        }
    }

    pub fn from_u8(v: u8) -> Option<Source> {
        Source::ALL.get(v as usize).copied()
    }
}

impl std::str::FromStr for Source {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Source> {
        Source::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| crate::Error::InvalidInput {
                what: format!(
                    "unknown source {s:?}; use one of user, assistant, tool, document, pinned"
                ),
            })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slice to be written: everything but what the pool assigns.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSlice {
    /// The session (namespace) the slice belongs to.
    pub namespace: String,
    pub source: Source,
    pub text: String,
    /// Tokens in `text`, counted by the encoder's tokenizer.
    pub tokens: u32,
    /// The conversation turn the slice came from (0 when not from a conversation).
    pub turn: u64,
    /// The caller's own id for the unit this slice came from (`ingest --jsonl`).
    pub ext_id: Option<String>,
    /// Importance at write time, in [0, 1]; the witness starts retention here.
    pub salience: f32,
}

/// Metadata the pool keeps for each live slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceMeta {
    /// Pool-wide id, assigned in write order; also the monotonic sequence number.
    pub id: u64,
    pub namespace: String,
    pub source: Source,
    pub tokens: u32,
    pub turn: u64,
    pub ext_id: Option<String>,
    /// Unix time of the write, milliseconds.
    pub time_ms: u64,
    /// Bytes this slice occupies on disk (record and vector), for the budget.
    pub bytes: u64,
    pub salience: f32,
    /// Times a paged-in copy of this slice was used by the model.
    pub uses: u32,
    /// Sequence (pool-wide write counter) of the last use or re-hardening; `id` until then.
    pub last_used_seq: u64,
    /// Pinned slices never fade and are never evicted.
    pub pinned: bool,
}

/// A slice read back from the pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub meta: SliceMeta,
    pub text: String,
}
