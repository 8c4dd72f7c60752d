//! The checkpoint: the replayed state written beside the log (`pool.ckpt`,
//! see `docs/format.md`), so that an open loads it and replays only the log
//! after it.
//!
//! Derived like the index segments: written whole under a temporary name,
//! synced, then renamed over the previous one. It names the log it belongs
//! to (generation, creation time) and the record it ends with (offset,
//! length, checksum); an open takes it only when that record is there in the
//! log and checks. A missing, damaged, stale or foreign checkpoint means a
//! full replay, never a wrong state.
//!
//! The body is a sequence of sections of plain little-endian arrays (the
//! slice table's columns, the namespaces, the witness side map, the
//! dictionaries, each index's tombstones and the vector index's unsealed
//! rows), then a CRC-32 of everything before it.

use std::io;

use super::format::{self, RECORD_HEADER};
use super::le::{get_u32, get_u64};
use super::storage::{Dir, Storage};

/// The checkpoint's file name in the pool directory.
pub const CHECKPOINT_FILE: &str = "pool.ckpt";
/// A checkpoint being written; renamed over [`CHECKPOINT_FILE`] when synced.
pub const CHECKPOINT_TMP: &str = "pool.ckpt.tmp";
const MAGIC: [u8; 8] = *b"UCTXCKPT";
/// The checkpoint's own layout version.
pub const VERSION: u32 = 1;
/// Bytes of the fixed header: magic, version, pool format, then the log
/// identity and the record it ends with.
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 4 + 4;
/// Log bytes appended since the last checkpoint at which a writer writes a
/// new one after a write (or a quarter of the last checkpoint's size, if
/// larger): what an open replays beyond it stays about this small.
pub const EVERY_LOG_BYTES: u64 = 16 << 20;

/// Which log a checkpoint belongs to and how far it covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub generation: u64,
    pub created_ms: u64,
    pub header_len: u64,
    /// The log offset it covers through: replay resumes here.
    pub end: u64,
    /// The last record before `end`: its offset, length and checksum.
    pub last_at: u64,
    pub last_len: u32,
    pub last_crc: u32,
}

/// How an open used the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "checkpoint", rename_all = "snake_case")]
pub enum Opened {
    /// Loaded, then the log replayed from `from` (`replayed` bytes).
    Loaded { from: u64, replayed: u64 },
    /// There was none: the log was replayed whole.
    Missing,
    /// There was one, not used (`why`): the log was replayed whole.
    Rejected { why: String },
}

impl Opened {
    /// Whether the open replayed the whole log.
    pub fn replayed_whole(&self) -> bool {
        !matches!(self, Opened::Loaded { .. })
    }
}

/// Little-endian writer of a checkpoint body.
#[derive(Default)]
pub struct Put {
    pub b: Vec<u8>,
}

impl Put {
    pub fn u8(&mut self, x: u8) {
        self.b.push(x);
    }
    pub fn u32(&mut self, x: u32) {
        self.b.extend_from_slice(&x.to_le_bytes());
    }
    pub fn u64(&mut self, x: u64) {
        self.b.extend_from_slice(&x.to_le_bytes());
    }
    pub fn f32(&mut self, x: f32) {
        self.u32(x.to_bits());
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, x: &[u8]) {
        self.u64(x.len() as u64);
        self.b.extend_from_slice(x);
    }
    /// A length-prefixed array of `u32`.
    pub fn u32s(&mut self, xs: &[u32]) {
        self.words(xs);
    }
    /// A length-prefixed array of `u64`.
    pub fn u64s(&mut self, xs: &[u64]) {
        self.words(xs);
    }
    /// A length-prefixed array of `u16`.
    pub fn u16s(&mut self, xs: &[u16]) {
        self.words(xs);
    }
    /// A length-prefixed array of integers, each little-endian.
    fn words<T: bytemuck::Pod>(&mut self, xs: &[T]) {
        self.u64(xs.len() as u64);
        let bytes: &[u8] = bytemuck::cast_slice(xs);
        if cfg!(target_endian = "little") {
            self.b.extend_from_slice(bytes);
            return;
        }
        for x in bytes.chunks_exact(std::mem::size_of::<T>()) {
            self.b.extend(x.iter().rev());
        }
    }
}

/// Checked little-endian reader of a checkpoint body: every read past the
/// end is `None`.
pub struct Take<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Take<'a> {
    pub fn new(b: &'a [u8]) -> Take<'a> {
        Take { b, at: 0 }
    }
    fn raw(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.raw(1).map(|s| s[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        let v = get_u32(self.b, self.at)?;
        self.at += 4;
        Some(v)
    }
    pub fn u64(&mut self) -> Option<u64> {
        let v = get_u64(self.b, self.at)?;
        self.at += 8;
        Some(v)
    }
    pub fn f32(&mut self) -> Option<f32> {
        self.u32().map(f32::from_bits)
    }
    /// A length (of items `size` bytes each) that fits in what is left.
    fn count(&mut self, size: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n.checked_mul(size)? <= self.b.len() - self.at).then_some(n)
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.count(1)?;
        self.raw(n)
    }
    pub fn u32s(&mut self) -> Option<Vec<u32>> {
        self.words()
    }
    pub fn u64s(&mut self) -> Option<Vec<u64>> {
        self.words()
    }
    pub fn u16s(&mut self) -> Option<Vec<u16>> {
        self.words()
    }
    /// A length-prefixed array of little-endian integers.
    fn words<T: bytemuck::Pod>(&mut self) -> Option<Vec<T>> {
        let size = std::mem::size_of::<T>();
        let n = self.count(size)?;
        let s = self.raw(n * size)?;
        let mut v = vec![T::zeroed(); n];
        let out: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        if cfg!(target_endian = "little") {
            out.copy_from_slice(s);
        } else {
            for (o, c) in out.chunks_exact_mut(size).zip(s.chunks_exact(size)) {
                o.iter_mut().zip(c.iter().rev()).for_each(|(o, c)| *o = *c);
            }
        }
        Some(v)
    }
    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.at == self.b.len()
    }
}

/// A checkpoint to fill: room for the header, then the body goes after it.
pub fn begin() -> Put {
    Put {
        b: vec![0u8; HEADER],
    }
}

/// The whole file: `p`'s body after the header of `mark`, then the
/// checksum.
pub fn finish(mark: &Mark, mut p: Put) -> Vec<u8> {
    let mut h = Put {
        b: Vec::with_capacity(HEADER),
    };
    h.b.extend_from_slice(&MAGIC);
    h.u32(VERSION);
    h.u32(format::VERSION);
    h.u64(mark.generation);
    h.u64(mark.created_ms);
    h.u64(mark.header_len);
    h.u64(mark.end);
    h.u64(mark.last_at);
    h.u32(mark.last_len);
    h.u32(mark.last_crc);
    p.b[..HEADER].copy_from_slice(&h.b);
    let crc = crc32fast::hash(&p.b);
    p.u32(crc);
    p.b
}

/// Write `bytes` as the checkpoint: under a temporary name, synced, then
/// renamed over the old one (which syncs the directory).
pub fn write(dir: &dyn Dir, bytes: &[u8]) -> io::Result<()> {
    dir.remove(CHECKPOINT_TMP)?;
    let f = dir.open(CHECKPOINT_TMP, true)?;
    f.write_at(0, bytes)?;
    f.sync()?;
    drop(f);
    dir.rename(CHECKPOINT_TMP, CHECKPOINT_FILE)
}

/// The checkpoint's bytes, read in one go; `None` when there is none.
pub fn read(dir: &dyn Dir) -> io::Result<Option<Vec<u8>>> {
    if !dir.exists(CHECKPOINT_FILE) {
        return Ok(None);
    }
    let f = match dir.open(CHECKPOINT_FILE, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(f.len()?).map_err(io::Error::other)?;
    let mut b = vec![0u8; len];
    f.read_at(0, &mut b)?;
    Ok(Some(b))
}

/// Check a checkpoint file's frame and checksum; returns its mark and body.
pub fn parse(b: &[u8]) -> Result<(Mark, &[u8]), String> {
    if b.len() < HEADER + 4 || b[..8] != MAGIC {
        return Err("it is not a checkpoint".into());
    }
    let body = b.len() - 4;
    if get_u32(b, body) != Some(crc32fast::hash(&b[..body])) {
        return Err("it fails its checksum".into());
    }
    let mut t = Take::new(&b[8..HEADER]);
    let (version, pool) = (t.u32(), t.u32());
    if version != Some(VERSION) {
        return Err(format!(
            "its layout {} is not read",
            version.unwrap_or_default()
        ));
    }
    if pool != Some(format::VERSION) {
        return Err(format!(
            "it was written for pool format {}",
            pool.unwrap_or_default()
        ));
    }
    let mark = (|| {
        Some(Mark {
            generation: t.u64()?,
            created_ms: t.u64()?,
            header_len: t.u64()?,
            end: t.u64()?,
            last_at: t.u64()?,
            last_len: t.u32()?,
            last_crc: t.u32()?,
        })
    })()
    .ok_or("its header is short")?;
    Ok((mark, &b[HEADER..body]))
}

/// Whether `mark` belongs to the log: the same generation and creation
/// time, its end within the log, and the record it ends with there,
/// checking, with the checksum it names. `Err` says why not.
pub fn belongs(
    mark: &Mark,
    log: &dyn Storage,
    len: u64,
    generation: u64,
    created_ms: u64,
    header_len: u64,
) -> io::Result<Result<(), String>> {
    if mark.generation != generation || mark.created_ms != created_ms {
        return Ok(Err(format!(
            "it belongs to log generation {}, the log is generation {generation}",
            mark.generation
        )));
    }
    if mark.header_len != header_len || mark.end > len || mark.end < header_len {
        return Ok(Err(format!(
            "it covers the log to byte {}, the log holds {len} bytes",
            mark.end
        )));
    }
    if mark.end == header_len {
        return Ok(Ok(()));
    }
    let n = mark.last_len as usize;
    if n < RECORD_HEADER || mark.last_at.checked_add(n as u64) != Some(mark.end) {
        return Ok(Err("its last record does not end where it does".into()));
    }
    let mut rec = vec![0u8; n];
    log.read_at(mark.last_at, &mut rec)?;
    if !format::check(&rec) || format::frame(&rec).1 != mark.last_crc {
        return Ok(Err(format!(
            "the log holds another record at byte {}",
            mark.last_at
        )));
    }
    Ok(Ok(()))
}

/// The checksum field of the record at the start of `rec`.
pub fn crc_of(rec: &[u8]) -> u32 {
    format::frame(rec).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_round_trips_and_a_flip_anywhere_is_refused() {
        let mark = Mark {
            generation: 3,
            created_ms: 9,
            header_len: 50,
            end: 900,
            last_at: 880,
            last_len: 20,
            last_crc: 7,
        };
        let mut p = begin();
        p.u32s(&[1, 2, 3]);
        p.u64s(&[u64::MAX]);
        p.u16s(&[5]);
        p.bytes(b"ns");
        p.f32(0.5);
        let file = finish(&mark, p);
        let (m, body) = parse(&file).unwrap();
        assert_eq!(m, mark);
        let mut t = Take::new(body);
        assert_eq!(t.u32s().unwrap(), vec![1, 2, 3]);
        assert_eq!(t.u64s().unwrap(), vec![u64::MAX]);
        assert_eq!(t.u16s().unwrap(), vec![5]);
        assert_eq!(t.bytes().unwrap(), b"ns");
        assert_eq!(t.f32(), Some(0.5));
        assert!(t.done() && t.u8().is_none());
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert!(parse(&bad).is_err(), "flip at {i}");
        }
        assert!(parse(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn a_length_beyond_the_body_is_refused_not_allocated() {
        let mut p = Put::default();
        p.u64(u64::MAX / 2);
        assert!(Take::new(&p.b).u64s().is_none());
        assert!(Take::new(&p.b).bytes().is_none());
    }
}
