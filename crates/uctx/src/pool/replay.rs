//! Walking the log: every record that checks, in order; the damaged
//! stretches between them; and a torn tail (see `docs/format.md`,
//! *Replay and repair*).
//!
//! A record that is short or fails its checksum is either the start of a
//! torn tail (no record that checks follows it: a write that never
//! completed) or damage in the middle of the log (records follow it). To
//! tell them apart the walk searches forward, byte by byte, for the next
//! record: a cheap test of the frame's fields first ([`format::plausible`]),
//! then the checksum, then a full read, and a slice's id must be above every
//! id before the damage. Each offset costs a few byte comparisons; only a
//! frame whose fields agree costs its checksum.

use std::io;
use std::path::Path;

use super::format::{self, Rec, RECORD_HEADER};
use super::storage::Storage;
use super::READ_CHUNK;
use crate::{Error, Result};

/// A stretch of the log in which no record checks, with records that do
/// after it. Replay skips it; a writer refuses to open (run `uctx repair`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// Where the stretch starts in the log, in bytes.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// Records that check after it, to the end of the log.
    pub records_after: u64,
    /// Ids of the slice records that lay there, read from the damaged
    /// bytes where their record frames still line up (unverified: their
    /// checksum failed), and only ids that fit between the neighbours'.
    pub ids: Vec<u64>,
    /// Any slice lost there has an id of at least this: above every slice
    /// before it.
    pub ids_from: u64,
    /// ...and below this, the first slice after it; `None` when no slice
    /// follows it.
    pub ids_before: Option<u64>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bytes {}..{} ({} bytes)",
            self.offset,
            self.offset + self.bytes,
            self.bytes
        )?;
        if !self.ids.is_empty() {
            let ids: Vec<String> = self.ids.iter().map(u64::to_string).collect();
            return write!(
                f,
                ", slice {} (read from the damaged bytes)",
                ids.join(", ")
            );
        }
        match self.ids_before {
            Some(b) if b > self.ids_from => {
                write!(f, ", slice ids {} to {} at most", self.ids_from, b - 1)
            }
            Some(_) => write!(f, ", no slice id is missing around it"),
            None => write!(f, ", slice ids from {} on", self.ids_from),
        }
    }
}

/// The end of the log from the first record that is incomplete or fails
/// its checksum, when no record that checks follows it: a write that never
/// completed. A writer cuts it; a reader ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TornTail {
    /// Where it starts in the log, in bytes.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a torn tail of {} bytes at byte {}",
            self.bytes, self.offset
        )
    }
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// End of the last record that checks.
    pub end: u64,
    /// Records that check.
    pub records: u64,
    /// The id of the first slice record, if any.
    pub first_slice: Option<u64>,
    pub damage: Vec<Damage>,
    pub tail: Option<TornTail>,
}

/// Walk the records in `[start, len)` of `log`, feeding each one that
/// checks to `f` with its offset and bytes. Slices found past damage must
/// have ids of at least `id_floor` (the next id of the records before
/// `start`). A record whose checksum holds but whose fields do not read is
/// corruption, not damage to skip: an error (a newer uctx may have written
/// it).
pub fn walk(
    log: &dyn Storage,
    start: u64,
    len: u64,
    dim: usize,
    id_floor: u64,
    path: &Path,
    mut f: impl FnMut(Rec, u64, &[u8]) -> Result<()>,
) -> Result<Walk> {
    let io = |e| Error::io(format!("cannot read the pool at {}", path.display()), e);
    let mut r = Reader::new(log, len);
    let mut w = Walk {
        end: start,
        ..Walk::default()
    };
    // Records before each damaged stretch, to count those after it.
    let mut before = Vec::new();
    let mut floor = id_floor;
    let mut pos = start;
    while pos < len {
        let Some(rec) = r.record(pos).map_err(io)? else {
            let Some(next) = r.resync(pos + 1, dim, floor).map_err(io)? else {
                w.tail = Some(TornTail {
                    offset: pos,
                    bytes: len - pos,
                });
                break;
            };
            before.push(w.records);
            w.damage.push(Damage {
                offset: pos,
                bytes: next - pos,
                records_after: 0,
                ids: r.frame_ids(pos, next).map_err(io)?,
                ids_from: floor,
                ids_before: None,
            });
            pos = next;
            continue;
        };
        let (_, _, ty) = format::frame(rec);
        let Some(parsed) = format::decode(ty, &rec[RECORD_HEADER..], dim) else {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "record of type {ty} at offset {pos} has a valid checksum but cannot be read; a newer uctx may have written it"
                ),
            });
        };
        // Only slices seen raise the floor, not `NextId`: a compacted log states the
        // next id before its slices, whose ids all lie below it.
        if let Rec::Slice(s) = &parsed {
            w.first_slice.get_or_insert(s.id);
            for d in w.damage.iter_mut().filter(|d| d.ids_before.is_none()) {
                d.ids_before = Some(s.id);
            }
            floor = floor.max(s.id.saturating_add(1));
        }
        let n = rec.len() as u64;
        f(parsed, pos, rec)?;
        w.records += 1;
        pos += n;
        w.end = pos;
    }
    for (d, b) in w.damage.iter_mut().zip(before) {
        d.records_after = w.records - b;
        let (from, upto) = (d.ids_from, d.ids_before.unwrap_or(u64::MAX));
        d.ids.retain(|&id| id >= from && id < upto);
    }
    Ok(w)
}

/// Whether a complete record that checks starts at `at`.
pub fn checks_at(log: &dyn Storage, at: u64, len: u64) -> io::Result<bool> {
    Ok(Reader::new(log, len).record(at)?.is_some())
}

/// Buffered positioned reads of a log of `len` bytes.
struct Reader<'a> {
    log: &'a dyn Storage,
    len: u64,
    buf: Vec<u8>,
    at: u64,
}

impl<'a> Reader<'a> {
    fn new(log: &'a dyn Storage, len: u64) -> Reader<'a> {
        Reader {
            log,
            len,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// Bytes `[pos, pos + n)`; `None` when the file ends first.
    fn bytes(&mut self, pos: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let end = pos.saturating_add(n as u64);
        if end > self.len {
            return Ok(None);
        }
        if pos < self.at || end > self.at + self.buf.len() as u64 {
            let m = (n.max(READ_CHUNK) as u64).min(self.len - pos) as usize;
            self.buf.resize(m, 0);
            self.log.read_at(pos, &mut self.buf)?;
            self.at = pos;
        }
        let o = (pos - self.at) as usize;
        Ok(Some(&self.buf[o..o + n]))
    }

    /// The record at `pos`, when it is complete and its checksum holds.
    fn record(&mut self, pos: u64) -> io::Result<Option<&[u8]>> {
        let Some(head) = self.bytes(pos, RECORD_HEADER)? else {
            return Ok(None);
        };
        let (plen, _, _) = format::frame(head);
        if plen > format::MAX_PAYLOAD {
            return Ok(None);
        }
        Ok(self
            .bytes(pos, RECORD_HEADER + plen)?
            .filter(|r| format::check(r)))
    }

    /// The first offset from `from` on where a record checks and reads,
    /// and, when it is a slice, has an id of at least `floor`.
    fn resync(&mut self, from: u64, dim: usize, floor: u64) -> io::Result<Option<u64>> {
        let mut p = from;
        while p + RECORD_HEADER as u64 <= self.len {
            let n = format::PROBE.min((self.len - p) as usize);
            let plausible = self
                .bytes(p, n)?
                .is_some_and(|head| format::plausible(head, dim));
            if plausible {
                if let Some(rec) = self.record(p)? {
                    let (_, _, ty) = format::frame(rec);
                    match format::decode(ty, &rec[RECORD_HEADER..], dim) {
                        Some(Rec::Slice(s)) if s.id < floor => {}
                        Some(_) => return Ok(Some(p)),
                        None => {}
                    }
                }
            }
            p += 1;
        }
        Ok(None)
    }

    /// Ids of the slice records framed in `[from, to)`, when the frames
    /// line up exactly with `to` (else none).
    fn frame_ids(&mut self, from: u64, to: u64) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut p = from;
        while p < to {
            let Some(head) = self.bytes(p, RECORD_HEADER)? else {
                return Ok(Vec::new());
            };
            let (plen, _, ty) = format::frame(head);
            let next = p.saturating_add((RECORD_HEADER + plen) as u64);
            if next > to {
                return Ok(Vec::new());
            }
            if ty == format::T_SLICE && plen >= 8 {
                if let Some(b) = self.bytes(p + RECORD_HEADER as u64, 8)? {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(b);
                    ids.push(u64::from_le_bytes(id));
                }
            }
            p = next;
        }
        Ok(ids)
    }
}
