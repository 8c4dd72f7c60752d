//! One error type for the engine; every message a user can meet names the fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid input: {what}")]
    InvalidInput { what: String },
    #[error("the pool at {path} is locked by {holder} — close that process first, or open the pool read-only")]
    Locked { path: PathBuf, holder: String },
    #[error("the pool at {path} is corrupt: {detail} — run `uctx doctor --pool {path}` or restore a copy")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{log} is damaged at byte {offset}: {bytes} bytes hold no record that checks, and {records_after} records that do follow them{} — nothing was changed; run `uctx repair --pool {pool}` to rewrite the log with every record that checks (the damaged file is kept beside it)", more_damage(*.more))]
    Damaged {
        /// The damaged log file.
        log: PathBuf,
        /// Where the first damaged stretch starts, in bytes.
        offset: u64,
        bytes: u64,
        /// Records that check after it.
        records_after: u64,
        /// Damaged stretches after the first.
        more: usize,
        pool: PathBuf,
    },
    #[error("the pool at {path} has format version {found}; this uctx reads version {supported} — {fix}")]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
        fix: String,
    },
    #[error("vector dimension mismatch: expected {expected}, got {got}")]
    DimMismatch { expected: usize, got: usize },
    #[error("the pool was written with encoder {pool} but the current encoder is {current} — pass the same --encoder, or run `uctx reembed` to re-encode the pool")]
    EncoderMismatch { pool: String, current: String },
    #[error("encoder: {0}")]
    Encoder(String),
    #[error("the encoder model at {path} cannot be used: {detail} — pass a Model2Vec directory (tokenizer.json, model.safetensors, config.json), or leave out --encoder to use the bundled model")]
    EncoderModel { path: PathBuf, detail: String },
    #[error("{0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("the window of {window} tokens cannot hold {needed} tokens of {what} — {fix}")]
    WindowTooSmall {
        window: usize,
        needed: usize,
        what: String,
        fix: String,
    },
    #[error("the team pool at {location}: {detail} — {fix}")]
    Server {
        /// The pool's URL, without its password.
        location: String,
        detail: String,
        fix: String,
    },
    #[error("the pool is read-only: {0}")]
    ReadOnly(String),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn invalid(what: impl Into<String>) -> Error {
        Error::InvalidInput { what: what.into() }
    }
}

fn more_damage(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " (and one more damaged stretch after it)".into(),
        n => format!(" (and {n} more damaged stretches after it)"),
    }
}
