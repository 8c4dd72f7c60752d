//! The writer's durable end, published for read-only handles: `pool.end`.
//!
//! A writer appends a batch, syncs it, and only then writes here how far the log
//! is durable (32 bytes, overwritten in place, never synced: it only has to be
//! visible to other processes, and it never names more than was synced). A
//! read-only handle applies records only up to it, so it never serves a batch
//! that the writer could still cut back after a failed sync, or that a power
//! loss would take. The file names the log it belongs to (generation and
//! creation time); one that names another log, or none at all (a pool written
//! before it existed), leaves readers reading to the log's end as before, and
//! so does a pool whose writer is gone (its log is all there is).

use std::io;
use std::sync::Arc;

use super::le::{get_u32, get_u64};
use super::storage::{Dir, Storage};

pub const END_FILE: &str = "pool.end";
const MAGIC: [u8; 4] = *b"UEND";
const LEN: usize = 32;

/// The marker for the log of `generation` created at `created_ms`, durable to `end`.
pub fn encode(generation: u64, created_ms: u64, end: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..12].copy_from_slice(&generation.to_le_bytes());
    b[12..20].copy_from_slice(&created_ms.to_le_bytes());
    b[20..28].copy_from_slice(&end.to_le_bytes());
    let crc = crc32fast::hash(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What the marker says of one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Durable up to this offset.
    End(u64),
    /// No marker, or one of another log: nothing is known.
    Unknown,
    /// A marker that does not check (read while being rewritten): keep what was
    /// applied, look again next time.
    Unreadable,
}

/// Read the marker through `file` for the log of `generation` created at `created_ms`.
pub fn read(file: &dyn Storage, generation: u64, created_ms: u64) -> Published {
    let mut b = [0u8; LEN];
    if file.read_at(0, &mut b).is_err() {
        return Published::Unknown;
    }
    if b[0..4] != MAGIC || get_u32(&b, 28) != Some(crc32fast::hash(&b[..28])) {
        return Published::Unreadable;
    }
    match (get_u64(&b, 4), get_u64(&b, 12), get_u64(&b, 20)) {
        (Some(g), Some(c), Some(end)) if g == generation && c == created_ms => Published::End(end),
        _ => Published::Unknown,
    }
}

/// The marker file, opened (created by a writer).
pub fn open(dir: &dyn Dir, create: bool) -> io::Result<Arc<dyn Storage>> {
    dir.open(END_FILE, create)
}
