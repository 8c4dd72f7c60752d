//! The vector index: approximate nearest neighbours over every live slice.
//!
//! An inverted-file (IVF) index in immutable *segments* plus a *tail*:
//!
//! - The tail holds the newest rows (i8 codes and scales) in memory and is
//!   scanned exactly. When it reaches [`SEAL_ROWS`] live rows the writer
//!   *seals* it into a segment.
//! - A segment is one file (`seg-GEN.ivf`, see `docs/format.md`): rows are
//!   clustered into lists by spherical k-means, stored list by list (and
//!   within a list, namespace by namespace), with the lists' centroids. It
//!   is memory-mapped: its bytes are file pages, not private memory.
//!   Search scores the centroids and scans the best lists.
//! - Segments of one level merge [`FANIN`] at a time into one of the next
//!   level, so a pool of N rows has O(log N) segments; a segment whose rows
//!   are mostly deleted is rewritten without them.
//! - Deleted rows of a segment are tombstones (a set of ids) until then.
//!
//! Segments cover disjoint ranges of slice ids. The log is the source of
//! truth: on open, any live slice no segment covers goes to the tail, and a
//! missing, damaged or stale segment only means more rows in the tail until
//! the writer seals them again. A crash between writing a merged segment and
//! deleting its sources leaves overlapping files; the one covering the wider
//! range (then the newer) wins and the rest are deleted.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::checkpoint::{Put, Take};
use super::le::{pad8, u32_at, u64_at};
use super::storage::{Dir, Mapped};
use super::top::Top;
use super::vector::{dequantize, dots_i8, quantize};
use crate::encoder::{dot, normalize};

/// Segment files are named `seg-GEN.ivf`.
pub const SEGMENT_PREFIX: &str = "seg-";
pub const SEGMENT_SUFFIX: &str = ".ivf";
const MAGIC: [u8; 8] = *b"UCTXIVF1";
const VERSION: u32 = 1;
const HEADER: usize = 64;
/// Live rows in the tail at which it is sealed into a segment.
pub const SEAL_ROWS: usize = 65_536;
/// Segments of one level merged into one of the next.
pub const FANIN: usize = 8;
/// Levels above this are not merged further.
const MAX_LEVEL: u32 = 3;
/// Average rows per list.
const LIST_ROWS: usize = 512;
const MAX_LISTS: usize = 4096;
/// Fraction of a segment's lists each search scans, and the least number.
pub const PROBE_FRACTION: f32 = 0.06;
const MIN_PROBE: usize = 8;
/// A namespace-filtered search scans lists until it has scored at least
/// this many of the namespace's rows in a segment (or all of them).
const MIN_FILTERED_SCAN: usize = 4096;
/// k-means: training sample per list, iterations.
const TRAIN_PER_LIST: usize = 48;
const KMEANS_ITERS: usize = 6;
/// Rows scanned at which a search splits over threads.
const PARALLEL_ROWS: usize = 65_536;

/// One row handed to the index: id, namespace, i8 codes and their scale.
pub struct Row<'a> {
    pub id: u64,
    pub ns: u32,
    pub q: &'a [i8],
    pub scale: f32,
}

/// Rows collected for a segment build.
#[derive(Default)]
pub struct Rows {
    pub ids: Vec<u64>,
    pub ns: Vec<u32>,
    pub scales: Vec<f32>,
    pub q: Vec<i8>,
}

impl Rows {
    fn len(&self) -> usize {
        self.ids.len()
    }
    /// Row `i` as the unit f32 vector its codes stand for.
    fn unit(&self, i: usize, dim: usize, out: &mut [f32]) {
        dequantize(&self.q[i * dim..(i + 1) * dim], self.scales[i], out);
        normalize(out);
    }

    fn push(&mut self, r: Row<'_>) {
        self.ids.push(r.id);
        self.ns.push(r.ns);
        self.scales.push(r.scale);
        self.q.extend_from_slice(r.q);
    }
}

/// The newest rows, scanned exactly; ids ascending.
#[derive(Default)]
struct Tail {
    rows: Rows,
    /// Which rows are deleted, and how many.
    gone: Vec<bool>,
    dead: usize,
}

impl Tail {
    fn push(&mut self, r: Row<'_>) {
        self.rows.push(r);
        self.gone.push(false);
    }

    /// A copy of the live rows whose ids `keep` accepts.
    fn live_rows(&self, dim: usize, keep: impl Fn(u64) -> bool) -> Rows {
        let t = &self.rows;
        let mut out = Rows::default();
        for i in 0..t.len() {
            if !self.gone[i] && keep(t.ids[i]) {
                out.push(Row {
                    id: t.ids[i],
                    ns: t.ns[i],
                    q: &t.q[i * dim..(i + 1) * dim],
                    scale: t.scales[i],
                });
            }
        }
        out
    }

    /// Keep only live rows that `keep` accepts.
    fn retain(&mut self, dim: usize, keep: impl Fn(u64) -> bool) {
        let rows = self.live_rows(dim, keep);
        self.gone = vec![false; rows.len()];
        self.rows = rows;
        self.dead = 0;
    }
}

/// One mapped segment file.
pub struct Segment {
    pub name: String,
    pub gen: u64,
    pub level: u32,
    pub first_id: u64,
    pub last_id: u64,
    pub rows: usize,
    lists: usize,
    dim: usize,
    map: Mapped,
    /// Pool-wide namespace number of each of the segment's namespaces.
    ns_global: Vec<u32>,
    ns_rows: Vec<u64>,
    at_cscales: usize,
    at_centroids: usize,
    at_list_runs: usize,
    at_runs: usize,
    at_ids: usize,
    at_scales: usize,
    at_vecs: usize,
    /// Rows deleted since the segment was written.
    pub dead: usize,
}

fn f32_at(b: &[u8], o: usize) -> f32 {
    f32::from_bits(u32_at(b, o))
}

fn as_i8(b: &[u8]) -> &[i8] {
    bytemuck::cast_slice(b)
}

/// Whether `name` is an installed segment file (not one being written).
pub fn is_segment_file(name: &str) -> bool {
    name.starts_with(SEGMENT_PREFIX) && name.ends_with(SEGMENT_SUFFIX)
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        (*self.map).as_ref()
    }

    /// Parse a mapped segment, checking its header and directories (and,
    /// with `verify`, its checksum: every byte); `intern` maps namespace
    /// names to the pool's numbers.
    fn parse(
        name: &str,
        map: Mapped,
        dim: usize,
        verify: bool,
        intern: &mut dyn FnMut(&str) -> u32,
    ) -> Result<Segment, String> {
        let b = (*map).as_ref();
        if b.len() < HEADER + 4 || b[..8] != MAGIC {
            return Err("not an index segment".into());
        }
        let body = b.len() - 4;
        if verify && !super::segfile::checksum_ok(b) {
            return Err("fails its checksum".into());
        }
        if u32_at(b, 8) != VERSION {
            return Err(format!("segment format {} is not read", u32_at(b, 8)));
        }
        if u32_at(b, 12) as usize != dim {
            return Err("vectors of another dimension".into());
        }
        let gen = u64_at(b, 16);
        let first_id = u64_at(b, 24);
        let last_id = u64_at(b, 32);
        let rows = u64_at(b, 40) as usize;
        let lists = u32_at(b, 48) as usize;
        let level = u32_at(b, 52);
        let ns_count = u32_at(b, 56) as usize;
        let runs = u32_at(b, 60) as usize;
        let mut at = HEADER;
        let mut ns_global = Vec::with_capacity(ns_count);
        let mut ns_rows = Vec::with_capacity(ns_count);
        for _ in 0..ns_count {
            if at + 10 > body {
                return Err("truncated namespace table".into());
            }
            let n = u64_at(b, at);
            let len = u16::from_le_bytes([b[at + 8], b[at + 9]]) as usize;
            at += 10;
            let name = b
                .get(at..at + len)
                .and_then(|s| std::str::from_utf8(s).ok())
                .ok_or("a damaged namespace name")?;
            ns_global.push(intern(name));
            ns_rows.push(n);
            at += len;
        }
        let at_cscales = pad8(at);
        let at_centroids = pad8(at_cscales + 4 * lists);
        let at_list_runs = pad8(at_centroids + lists * dim);
        let at_runs = pad8(at_list_runs + 4 * (lists + 1));
        let at_ids = pad8(at_runs + 8 * (runs + 1));
        let at_scales = pad8(at_ids + 8 * rows);
        let at_vecs = pad8(at_scales + 4 * rows);
        if at_vecs + rows * dim != body || lists == 0 || first_id > last_id {
            return Err("sizes do not match its header".into());
        }
        let seg = Segment {
            name: name.to_string(),
            gen,
            level,
            first_id,
            last_id,
            rows,
            lists,
            dim,
            map,
            ns_global,
            ns_rows,
            at_cscales,
            at_centroids,
            at_list_runs,
            at_runs,
            at_ids,
            at_scales,
            at_vecs,
            dead: 0,
        };
        // Runs must be ordered and inside the rows, or scans would misread.
        let mut prev = 0usize;
        for r in 0..=runs {
            let (ns, start) = seg.run(r);
            if start < prev || start > rows || (r < runs && ns as usize >= ns_count) {
                return Err("a damaged list directory".into());
            }
            prev = start;
        }
        if seg.run(runs).1 != rows {
            return Err("a damaged list directory".into());
        }
        for l in 0..=lists {
            if seg.list_run(l) > runs || (l > 0 && seg.list_run(l) < seg.list_run(l - 1)) {
                return Err("a damaged list directory".into());
            }
        }
        Ok(seg)
    }

    fn list_run(&self, l: usize) -> usize {
        u32_at(self.bytes(), self.at_list_runs + 4 * l) as usize
    }

    /// Run `r`: (segment namespace, first row).
    fn run(&self, r: usize) -> (u32, usize) {
        let b = self.bytes();
        let o = self.at_runs + 8 * r;
        (u32_at(b, o), u32_at(b, o + 4) as usize)
    }

    pub fn id(&self, row: usize) -> u64 {
        u64_at(self.bytes(), self.at_ids + 8 * row)
    }

    fn scale(&self, row: usize) -> f32 {
        f32_at(self.bytes(), self.at_scales + 4 * row)
    }

    fn vector(&self, row: usize) -> &[i8] {
        let o = self.at_vecs + row * self.dim;
        as_i8(&self.bytes()[o..o + self.dim])
    }

    fn centroid_scale(&self, l: usize) -> f32 {
        f32_at(self.bytes(), self.at_cscales + 4 * l)
    }

    /// The segment-local number of pool namespace `g`.
    fn local(&self, g: u32) -> Option<u32> {
        self.ns_global
            .iter()
            .position(|&x| x == g)
            .map(|i| i as u32)
    }

    pub fn file_bytes(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Every row: (row, id, pool namespace).
    fn for_each_row(&self, mut f: impl FnMut(usize, u64, u32)) {
        let runs = self.list_run(self.lists);
        for r in 0..runs {
            let (ns, start) = self.run(r);
            let end = self.run(r + 1).1;
            let g = self.ns_global[ns as usize];
            for row in start..end {
                f(row, self.id(row), g);
            }
        }
    }

    /// Scan rows `[start, end)` into `heap`.
    fn scan(&self, q: &Query<'_>, start: usize, end: usize, heap: &mut Top, buf: &mut Vec<i32>) {
        SCANNED.fetch_add((end - start) as u64, Ordering::Relaxed);
        let o = self.at_vecs + start * self.dim;
        dots_i8(
            q.q8,
            as_i8(&self.bytes()[o..o + (end - start) * self.dim]),
            buf,
        );
        for (row, d) in (start..end).zip(buf.iter()) {
            let score = *d as f32 * q.scale * self.scale(row);
            if heap.would_take(score) {
                let id = self.id(row);
                if self.dead == 0 || !q.dead.contains(&id) {
                    heap.offer(score, id);
                }
            }
        }
    }

    /// Search this segment for `q`, filtered to `q.ns`; exact scans every
    /// row in scope. Part `part.0` of `part.1`: the lists to scan are dealt
    /// out in turn, so that threads can share one big segment.
    fn search(&self, q: &Query<'_>, heap: &mut Top, part: (usize, usize)) {
        let (me, parts) = (part.0, part.1.max(1));
        let local = match q.ns {
            None => None,
            Some(g) => match self.local(g) {
                Some(l) => Some(l),
                None => return,
            },
        };
        let in_scope = local.map_or(self.rows, |l| self.ns_rows[l as usize] as usize);
        let mut buf = Vec::new();
        let mut scan_list = |l: usize, heap: &mut Top| -> usize {
            let (a, b) = (self.list_run(l), self.list_run(l + 1));
            if local.is_none() {
                let (start, end) = (self.run(a).1, self.run(b).1);
                self.scan(q, start, end, heap, &mut buf);
                return end - start;
            }
            let mut n = 0;
            for r in a..b {
                let (ns, start) = self.run(r);
                if Some(ns) == local {
                    let end = self.run(r + 1).1;
                    self.scan(q, start, end, heap, &mut buf);
                    n += end - start;
                }
            }
            n
        };
        if q.exact {
            for l in (me..self.lists).step_by(parts) {
                scan_list(l, heap);
            }
            return;
        }
        let mut cdots = Vec::with_capacity(self.lists);
        let o = self.at_centroids;
        dots_i8(
            q.q8,
            as_i8(&self.bytes()[o..o + self.lists * self.dim]),
            &mut cdots,
        );
        let mut order: Vec<(f32, usize)> = cdots
            .iter()
            .enumerate()
            .map(|(l, d)| (*d as f32 * self.centroid_scale(l), l))
            .collect();
        let probe = probes(self.lists, q.probe);
        let min_scan = if local.is_some() && self.ns_global.len() > 1 {
            MIN_FILTERED_SCAN.min(in_scope) / parts
        } else {
            0
        };
        let by_score = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0);
        if probe < order.len() {
            order.select_nth_unstable_by(probe, by_score);
            order[..probe].sort_unstable_by(by_score);
        }
        let mut scanned = 0usize;
        let mut sorted_rest = false;
        let mut i = 0;
        while i < order.len() {
            if i >= probe && scanned >= min_scan {
                break;
            }
            if i >= probe && !sorted_rest {
                order[probe..].sort_unstable_by(by_score);
                sorted_rest = true;
            }
            if i % parts == me {
                scanned += scan_list(order[i].1, heap);
            }
            i += 1;
        }
    }
}

/// Rows scored by every search in this process (for `uctx bench scale`).
static SCANNED: AtomicU64 = AtomicU64::new(0);

/// Rows scored by every search in this process so far.
pub fn rows_scanned() -> u64 {
    SCANNED.load(Ordering::Relaxed)
}

/// Lists scanned per search in a segment of `lists` lists.
fn probes(lists: usize, fraction: f32) -> usize {
    ((lists as f32 * fraction).ceil() as usize)
        .max(MIN_PROBE)
        .min(lists)
}

/// A query, quantised once.
struct Query<'a> {
    probe: f32,
    q8: &'a [i8],
    scale: f32,
    ns: Option<u32>,
    exact: bool,
    dead: &'a HashSet<u64>,
}

/// What the writer should do next to keep the index in shape.
pub enum Job {
    /// Seal the tail's rows up to and including this id.
    Seal { upto: u64 },
    /// Merge these segments (by name) into one of `level`.
    Merge { names: Vec<String>, level: u32 },
    /// Rewrite this segment without its deleted rows.
    Vacuum { name: String },
}

/// A segment built and written, ready to install.
pub struct Built {
    segment: Option<Segment>,
    replaces: Vec<String>,
    tail_upto: Option<u64>,
}

/// Sizes that shape the index; the defaults suit real pools, tests use
/// small ones to exercise sealing and merging.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Live tail rows at which the tail is sealed into a segment.
    pub seal_rows: usize,
    /// Average rows per list in a segment.
    pub list_rows: usize,
    /// Fraction of a segment's lists a search scans.
    pub probe: f32,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            seal_rows: SEAL_ROWS,
            list_rows: LIST_ROWS,
            probe: PROBE_FRACTION,
        }
    }
}

/// The index. See the module docs.
pub struct Ann {
    dim: usize,
    pub tuning: Tuning,
    segments: Vec<Segment>,
    tail: Tail,
    /// Deleted ids that still sit in a segment.
    dead: HashSet<u64>,
    next_gen: u64,
}

impl Ann {
    pub fn new(dim: usize) -> Ann {
        Ann {
            dim,
            tuning: Tuning::default(),
            segments: Vec::new(),
            tail: Tail::default(),
            dead: HashSet::new(),
            next_gen: 1,
        }
    }

    /// Map the segments in `dir`. Damaged or superseded files are skipped
    /// (and, for a writer, deleted, as are unfinished ones). Returns the
    /// index and the names of the segment files left in the directory.
    pub fn open(
        dir: &dyn Dir,
        dim: usize,
        writer: bool,
        intern: &mut dyn FnMut(&str) -> u32,
    ) -> io::Result<(Ann, Vec<String>)> {
        let opened = super::segfile::open(
            dir,
            writer,
            SEGMENT_PREFIX,
            SEGMENT_SUFFIX,
            |name, map| Segment::parse(name, map, dim, false, intern),
            |s: &Segment| (s.first_id, s.last_id, s.gen),
        )?;
        let mut ann = Ann::new(dim);
        ann.next_gen = opened.max_gen + 1;
        ann.segments = opened.kept;
        Ok((ann, opened.files))
    }

    /// Write the index's state beyond its files to a checkpoint: each
    /// segment (name, id range, rows) with its tombstones, and the tail's
    /// live rows.
    pub fn save(&self, p: &mut Put) {
        let mut dead: Vec<Vec<u64>> = vec![Vec::new(); self.segments.len()];
        for &id in &self.dead {
            let i = self.segments.partition_point(|s| s.last_id < id);
            if let Some(d) = dead.get_mut(i) {
                d.push(id);
            }
        }
        p.u64(self.segments.len() as u64);
        for (s, mut d) in self.segments.iter().zip(dead) {
            d.sort_unstable();
            p.bytes(s.name.as_bytes());
            p.u64(s.first_id);
            p.u64(s.last_id);
            p.u64(s.rows as u64);
            p.u64s(&d);
        }
        let rows = self.tail.live_rows(self.dim, |_| true);
        p.u64s(&rows.ids);
        p.u32s(&rows.ns);
        p.u32s(&rows.scales.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        p.bytes(bytemuck::cast_slice(&rows.q));
    }

    /// Take back what [`Ann::save`] wrote, into an index just opened from
    /// the directory: every segment it names must be there, the same file
    /// (else `Err`: replay the log instead). Tail rows a segment now covers
    /// are left out. Returns the names of the segments it named.
    pub fn restore(&mut self, t: &mut Take<'_>) -> Result<HashSet<String>, String> {
        let short = || "its vector index part is short".to_string();
        let n = t.u64().ok_or_else(short)?;
        let mut known = HashSet::new();
        for _ in 0..n {
            let name = t.bytes().ok_or_else(short)?;
            let name = String::from_utf8_lossy(name).into_owned();
            let (first, last, rows) = (
                t.u64().ok_or_else(short)?,
                t.u64().ok_or_else(short)?,
                t.u64().ok_or_else(short)?,
            );
            let dead = t.u64s().ok_or_else(short)?;
            let Some(s) = self.segments.iter_mut().find(|s| {
                s.name == name && s.first_id == first && s.last_id == last && s.rows as u64 == rows
            }) else {
                return Err(format!("the index segment {name} it names is not there"));
            };
            s.dead = dead.len();
            self.dead.extend(dead);
            known.insert(name);
        }
        let (ids, ns, scales) = (
            t.u64s().ok_or_else(short)?,
            t.u32s().ok_or_else(short)?,
            t.u32s().ok_or_else(short)?,
        );
        let q: &[i8] = bytemuck::cast_slice(t.bytes().ok_or_else(short)?);
        if ns.len() != ids.len()
            || scales.len() != ids.len()
            || q.len() != ids.len() * self.dim
            || ids.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("its vector index tail does not fit together".into());
        }
        for (i, &id) in ids.iter().enumerate() {
            if !self.covers(id) {
                self.tail.push(Row {
                    id,
                    ns: ns[i],
                    q: &q[i * self.dim..(i + 1) * self.dim],
                    scale: f32::from_bits(scales[i]),
                });
            }
        }
        Ok(known)
    }

    /// [`Ann::settle`] for the segments not in `known` only (written after
    /// the checkpoint); ids already tombstoned are not counted again.
    pub fn settle_others(&mut self, known: &HashSet<String>, live: &dyn Fn(u64) -> bool) {
        for s in self
            .segments
            .iter_mut()
            .filter(|s| !known.contains(&s.name))
        {
            let mut dead = Vec::new();
            s.for_each_row(|_, id, _| {
                if !live(id) && !self.dead.contains(&id) {
                    dead.push(id);
                }
            });
            s.dead += dead.len();
            self.dead.extend(dead);
        }
    }

    /// The index's state as text, namespaces by name (for tests).
    pub fn digest(&self, ns_name: &dyn Fn(u32) -> String) -> String {
        let segs: Vec<_> = self
            .segments
            .iter()
            .map(|s| (&s.name, s.first_id, s.last_id, s.rows, s.dead))
            .collect();
        // The rows of segments that are deleted (the set may hold more ids,
        // deleted inside a segment's range but never in it: they change nothing).
        let mut dead = Vec::new();
        for s in &self.segments {
            s.for_each_row(|_, id, _| {
                if self.dead.contains(&id) {
                    dead.push(id);
                }
            });
        }
        dead.sort_unstable();
        let t = &self.tail;
        let tail: Vec<_> = (0..t.rows.len())
            .filter(|&i| !t.gone[i])
            .map(|i| {
                let q = &t.rows.q[i * self.dim..(i + 1) * self.dim];
                (
                    t.rows.ids[i],
                    ns_name(t.rows.ns[i]),
                    t.rows.scales[i].to_bits(),
                    crc32fast::hash(bytemuck::cast_slice(q)),
                )
            })
            .collect();
        format!("ann segments {segs:?} dead {dead:?} tail {tail:?}")
    }

    /// Whether a segment holds (or held) slice `id`.
    pub fn covers(&self, id: u64) -> bool {
        let i = self.segments.partition_point(|s| s.last_id < id);
        self.segments.get(i).is_some_and(|s| s.first_id <= id)
    }

    fn segment_of(&mut self, id: u64) -> Option<&mut Segment> {
        let i = self.segments.partition_point(|s| s.last_id < id);
        self.segments.get_mut(i).filter(|s| s.first_id <= id)
    }

    /// After a replay: the ids a segment holds that the log no longer has
    /// become tombstones.
    pub fn settle(&mut self, live: &dyn Fn(u64) -> bool) {
        for s in &mut self.segments {
            let mut dead = Vec::new();
            s.for_each_row(|_, id, _| {
                if !live(id) {
                    dead.push(id);
                }
            });
            s.dead = dead.len();
            self.dead.extend(dead);
        }
    }

    /// Add a new row to the tail (the caller skips rows a segment covers).
    pub fn push(&mut self, row: Row<'_>) {
        self.tail.push(row);
    }

    /// Delete `id` wherever it is indexed.
    pub fn remove(&mut self, id: u64) {
        if let Ok(i) = self.tail.rows.ids.binary_search(&id) {
            if !self.tail.gone[i] {
                self.tail.gone[i] = true;
                self.tail.dead += 1;
                self.tidy_tail();
            }
            return;
        }
        if let Some(s) = self.segment_of(id) {
            s.dead += 1;
            self.dead.insert(id);
        }
    }

    /// Drop deleted rows from the tail once they are half of it.
    fn tidy_tail(&mut self) {
        let n = self.tail.rows.len();
        if self.tail.dead < 1024 || self.tail.dead * 2 < n {
            return;
        }
        self.tail.retain(self.dim, |_| true);
    }

    pub fn tail_rows(&self) -> usize {
        self.tail.rows.len() - self.tail.dead
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Bytes of every segment file.
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::file_bytes).sum()
    }

    /// Top `k` by dot product with `query` (unit vectors: cosine), among
    /// rows of namespace `ns` (all when `None`). `exact` scans every row.
    pub fn search(&self, query: &[f32], k: usize, ns: Option<u32>, exact: bool) -> Vec<(f32, u64)> {
        if k == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let mut q8 = Vec::with_capacity(self.dim);
        let scale = quantize(query, &mut q8);
        let q = Query {
            probe: self.tuning.probe,
            q8: &q8,
            scale,
            ns,
            exact,
            dead: &self.dead,
        };
        let mut top = Top::new(k);
        let rows: usize = self.segments.iter().map(|s| s.rows).sum();
        let scanned = self.tail.rows.len()
            + if exact {
                rows
            } else {
                (rows as f32 * self.tuning.probe) as usize
            };
        let threads = if scanned >= PARALLEL_ROWS {
            std::thread::available_parallelism().map_or(1, |t| t.get().min(8))
        } else {
            1
        };
        if threads <= 1 {
            self.search_tail(&q, &mut top, (0, 1));
            for s in &self.segments {
                s.search(&q, &mut top, (0, 1));
            }
            return top.into_sorted();
        }
        // Every thread takes its share of every segment's lists.
        let parts: Vec<Top> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let q = &q;
                    let segments = &self.segments;
                    sc.spawn(move || {
                        let mut top = Top::new(k);
                        self.search_tail(q, &mut top, (t, threads));
                        for s in segments {
                            s.search(q, &mut top, (t, threads));
                        }
                        top
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for p in parts {
            top.merge(p);
        }
        top.into_sorted()
    }

    /// Scan part `part.0` of `part.1` of the tail.
    fn search_tail(&self, q: &Query<'_>, top: &mut Top, part: (usize, usize)) {
        let t = &self.tail.rows;
        let per = t.len().div_ceil(part.1.max(1));
        let (start, end) = (
            (part.0 * per).min(t.len()),
            ((part.0 + 1) * per).min(t.len()),
        );
        let mut d = Vec::with_capacity(end - start);
        dots_i8(q.q8, &t.q[start * self.dim..end * self.dim], &mut d);
        for (i, d) in (start..end).zip(d.iter()) {
            if self.tail.gone[i] || q.ns.is_some_and(|g| g != t.ns[i]) {
                continue;
            }
            top.offer(*d as f32 * q.scale * t.scales[i], t.ids[i]);
        }
    }

    /// The next maintenance job, if any.
    /// `over_budget`: rewrite any segment with deleted rows, to free
    /// their bytes.
    pub fn next_job(&self, over_budget: bool) -> Option<Job> {
        let worst = self.segments.iter().max_by_key(|s| s.dead);
        if let Some(s) = worst {
            if s.dead * 2 > s.rows || (over_budget && s.dead > 0) {
                return Some(Job::Vacuum {
                    name: s.name.clone(),
                });
            }
        }
        for level in 0..MAX_LEVEL {
            let same: Vec<&Segment> = self.segments.iter().filter(|s| s.level == level).collect();
            if same.len() >= FANIN {
                return Some(Job::Merge {
                    names: same[..FANIN].iter().map(|s| s.name.clone()).collect(),
                    level: level + 1,
                });
            }
        }
        if self.tail_rows() >= self.tuning.seal_rows.max(1) {
            let t = &self.tail;
            let last = (0..t.rows.len()).rev().find(|&i| !t.gone[i])?;
            return Some(Job::Seal {
                upto: t.rows.ids[last],
            });
        }
        None
    }

    /// Gather a job's rows and plan its file. Cheap: copies the tail's
    /// rows, or shares the source segments' maps.
    pub fn prepare(&self, job: &Job) -> Prepared {
        let (rows, replaces, level, tail_upto, range) = match job {
            Job::Seal { upto } => {
                let rows = self.tail.live_rows(self.dim, |id| id <= *upto);
                let range = (
                    rows.ids.first().copied().unwrap_or(0),
                    rows.ids.last().copied().unwrap_or(0),
                );
                (rows, Vec::new(), 0, Some(*upto), range)
            }
            Job::Merge { names, level } => {
                let (rows, replaces, _, range) = self.gather(names);
                (rows, replaces, *level, None, range)
            }
            Job::Vacuum { name } => {
                let (rows, replaces, level, range) = self.gather(std::slice::from_ref(name));
                (rows, replaces, level, None, range)
            }
        };
        let gen = self.next_gen;
        Prepared {
            list_rows: self.tuning.list_rows.max(1),
            rows,
            replaces,
            level,
            tail_upto,
            range,
            gen,
        }
    }

    /// The live rows of the segments named, in id order; with the names
    /// found, their (lowest) level and the id range they cover.
    fn gather(&self, names: &[String]) -> (Rows, Vec<String>, u32, (u64, u64)) {
        let srcs: Vec<&Segment> = self
            .segments
            .iter()
            .filter(|s| names.contains(&s.name))
            .collect();
        let mut range = (u64::MAX, 0u64);
        let mut all: Vec<(u64, &Segment, usize, u32)> = Vec::new();
        for s in &srcs {
            range.0 = range.0.min(s.first_id);
            range.1 = range.1.max(s.last_id);
            s.for_each_row(|row, id, g| {
                if !self.dead.contains(&id) {
                    all.push((id, s, row, g));
                }
            });
        }
        all.sort_by_key(|x| x.0);
        let mut rows = Rows::default();
        for (id, s, row, g) in all {
            rows.push(Row {
                id,
                ns: g,
                q: s.vector(row),
                scale: s.scale(row),
            });
        }
        let level = srcs.iter().map(|s| s.level).min().unwrap_or(0);
        let replaces = srcs.iter().map(|s| s.name.clone()).collect();
        (rows, replaces, level, range)
    }

    /// Install a built segment: map it, drop the rows it took from the
    /// tail, retire the segments it replaces. Returns the files to delete.
    pub fn install(&mut self, built: Built) -> Vec<String> {
        if let Some(upto) = built.tail_upto {
            self.tail.retain(self.dim, |id| id > upto);
        }
        let mut gone = Vec::new();
        for name in &built.replaces {
            if let Some(pos) = self.segments.iter().position(|s| &s.name == name) {
                let s = self.segments.remove(pos);
                // The new segment left its deleted rows out.
                if s.dead > 0 {
                    s.for_each_row(|_, id, _| {
                        self.dead.remove(&id);
                    });
                }
                gone.push(s.name);
            }
        }
        // Deletes wait on the maintenance lock that the build held, so the new
        // segment holds no deleted row.
        if let Some(seg) = built.segment {
            self.next_gen = self.next_gen.max(seg.gen + 1);
            self.segments.push(seg);
            self.segments.sort_by_key(|s| s.first_id);
        }
        gone
    }
}

/// A job's rows, ready to build without any lock held.
pub struct Prepared {
    list_rows: usize,
    rows: Rows,
    replaces: Vec<String>,
    level: u32,
    tail_upto: Option<u64>,
    range: (u64, u64),
    gen: u64,
}

impl Prepared {
    /// Cluster the rows, write the segment file durably, and map it.
    /// `ns_name` names the pool's namespaces.
    pub fn build(
        self,
        dir: &dyn Dir,
        dim: usize,
        ns_name: &dyn Fn(u32) -> String,
    ) -> io::Result<Built> {
        if self.rows.len() == 0 {
            return Ok(Built {
                segment: None,
                replaces: self.replaces,
                tail_upto: self.tail_upto,
            });
        }
        let lists = (self.rows.len() / self.list_rows).clamp(1, MAX_LISTS);
        let (bytes, names) = encode_segment(
            &self.rows, dim, lists, self.gen, self.level, self.range, ns_name,
        );
        let name = format!("{SEGMENT_PREFIX}{:08}{SEGMENT_SUFFIX}", self.gen);
        let map = super::segfile::write(dir, &name, &bytes)?;
        // The file names the namespaces it was written with.
        let mut intern = |n: &str| names.iter().find(|x| x.0 == n).map_or(u32::MAX, |x| x.1);
        let seg = Segment::parse(&name, map, dim, true, &mut intern).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the index segment just written reads back wrong: {why}"),
            )
        })?;
        Ok(Built {
            segment: Some(seg),
            replaces: self.replaces,
            tail_upto: self.tail_upto,
        })
    }
}

/// Spherical k-means on the rows of `x` (n × dim, unit rows); returns `k`
/// unit centroids. Deterministic.
fn kmeans(x: &[f32], dim: usize, k: usize, iters: usize) -> Vec<f32> {
    let n = x.len() / dim;
    let k = k.min(n).max(1);
    // Spread initial centroids evenly over the sample.
    let mut c: Vec<f32> = (0..k)
        .flat_map(|i| x[(i * n / k) * dim..(i * n / k + 1) * dim].iter().copied())
        .collect();
    let mut assign = vec![0usize; n];
    for _ in 0..iters {
        assign = assign_all(x, &c, dim);
        let mut sum = vec![0f32; k * dim];
        let mut count = vec![0usize; k];
        for (i, &a) in assign.iter().enumerate() {
            count[a] += 1;
            for (s, v) in sum[a * dim..(a + 1) * dim]
                .iter_mut()
                .zip(&x[i * dim..(i + 1) * dim])
            {
                *s += v;
            }
        }
        for j in 0..k {
            if count[j] == 0 {
                // An empty list takes a row from the middle of the largest.
                let big = (0..k).max_by_key(|&b| count[b]).unwrap_or(0);
                if let Some(i) = assign.iter().position(|&a| a == big) {
                    sum[j * dim..(j + 1) * dim].copy_from_slice(&x[i * dim..(i + 1) * dim]);
                }
            }
            normalize(&mut sum[j * dim..(j + 1) * dim]);
        }
        c = sum;
    }
    c
}

/// `pick` of every one of `n` rows, over all cores: `row(i, buf)` puts
/// row `i` in a per-thread buffer of `dim` values, so no more than one row
/// per thread is held as f32.
fn par_pick(
    n: usize,
    dim: usize,
    row: impl Fn(usize, &mut [f32]) + Sync,
    pick: impl Fn(&[f32]) -> usize + Sync,
) -> Vec<usize> {
    let mut out = vec![0usize; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    let (row, pick) = (&row, &pick);
    std::thread::scope(|sc| {
        for (t, part) in out.chunks_mut(per).enumerate() {
            sc.spawn(move || {
                let mut v = vec![0f32; dim];
                for (j, o) in part.iter_mut().enumerate() {
                    row(t * per + j, &mut v);
                    *o = pick(&v);
                }
            });
        }
    });
    out
}

/// Nearest of centroids `c` for every row of `x` (n × dim), over all cores.
fn assign_all(x: &[f32], c: &[f32], dim: usize) -> Vec<usize> {
    par_pick(
        x.len() / dim,
        dim,
        |i, v| v.copy_from_slice(&x[i * dim..(i + 1) * dim]),
        |v| nearest(v, c, dim),
    )
}

fn nearest(v: &[f32], c: &[f32], dim: usize) -> usize {
    let mut best = (f32::NEG_INFINITY, 0);
    for (j, cj) in c.chunks_exact(dim).enumerate() {
        let s = dot(v, cj);
        if s > best.0 {
            best = (s, j);
        }
    }
    best.1
}

/// `pick` of every row of `rows` as a unit f32 vector, over all cores.
fn assign_rows(rows: &Rows, dim: usize, pick: impl Fn(&[f32]) -> usize + Sync) -> Vec<usize> {
    par_pick(rows.len(), dim, |i, v| rows.unit(i, dim, v), pick)
}

/// Centroids for `lists` lists over `rows`: flat k-means for few lists,
/// two-level (coarse clusters, then lists within each) for many, so that
/// training and assignment cost O(sqrt(lists)) per row, not O(lists).
/// Returns the centroids and each row's list.
fn cluster(rows: &Rows, dim: usize, lists: usize) -> (Vec<f32>, Vec<usize>) {
    let n = rows.len();
    let sample_n = (lists * TRAIN_PER_LIST).min(n);
    let mut sample = vec![0f32; sample_n * dim];
    for s in 0..sample_n {
        rows.unit(s * n / sample_n, dim, &mut sample[s * dim..(s + 1) * dim]);
    }
    let coarse_k = (lists as f64).sqrt().ceil() as usize;
    if lists <= 64 || coarse_k * 2 > sample_n {
        let c = kmeans(&sample, dim, lists, KMEANS_ITERS);
        let assign = assign_rows(rows, dim, |v| nearest(v, &c, dim));
        return (c, assign);
    }
    let coarse = kmeans(&sample, dim, coarse_k, KMEANS_ITERS);
    let s_assign = assign_all(&sample, &coarse, dim);
    // Lists per coarse cluster, in proportion to its share of the sample.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); coarse.len() / dim];
    for (i, &a) in s_assign.iter().enumerate() {
        members[a].push(i);
    }
    let mut centroids = Vec::new();
    let mut children: Vec<(usize, usize)> = Vec::new(); // (first list, count)
    for m in &members {
        let k = ((lists * m.len()) as f64 / sample_n as f64)
            .round()
            .max(1.0) as usize;
        let k = k.min(m.len().max(1));
        let first = centroids.len() / dim;
        if m.is_empty() {
            children.push((first, 0));
            continue;
        }
        let mut sub = Vec::with_capacity(m.len() * dim);
        for &i in m {
            sub.extend_from_slice(&sample[i * dim..(i + 1) * dim]);
        }
        let c = kmeans(&sub, dim, k, KMEANS_ITERS);
        children.push((first, c.len() / dim));
        centroids.extend(c);
    }
    let assign = assign_rows(rows, dim, |v| {
        let (mut first, mut count) = children[nearest(v, &coarse, dim)];
        if count == 0 {
            // A coarse cluster the sample left empty: search every list.
            first = 0;
            count = centroids.len() / dim;
        }
        first + nearest(v, &centroids[first * dim..(first + count) * dim], dim)
    });
    (centroids, assign)
}

/// Split every list over twice the average size with k-means of its own
/// rows: a search that probes a few lists then scans about as many rows
/// wherever the query falls (code corpora cluster very unevenly).
fn balance(
    rows: &Rows,
    dim: usize,
    mut c: Vec<f32>,
    mut assign: Vec<usize>,
) -> (Vec<f32>, Vec<usize>) {
    let lists = c.len() / dim;
    let n = assign.len();
    let avg = n.div_ceil(lists.max(1)).max(1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); lists];
    for (i, &a) in assign.iter().enumerate() {
        members[a].push(i);
    }
    let mut v = vec![0f32; dim];
    for (l, m) in members.iter().enumerate() {
        if m.len() <= 2 * avg {
            continue;
        }
        let mut x = Vec::with_capacity(m.len() * dim);
        for &i in m {
            rows.unit(i, dim, &mut v);
            x.extend_from_slice(&v);
        }
        let sub = kmeans(&x, dim, m.len().div_ceil(avg), KMEANS_ITERS);
        let k = sub.len() / dim;
        if k < 2 {
            continue;
        }
        // The first part keeps list l; the rest become new lists.
        let first_new = c.len() / dim;
        c[l * dim..(l + 1) * dim].copy_from_slice(&sub[..dim]);
        c.extend_from_slice(&sub[dim..]);
        for (j, &i) in m.iter().enumerate() {
            let part = nearest(&x[j * dim..(j + 1) * dim], &sub, dim);
            assign[i] = if part == 0 { l } else { first_new + part - 1 };
        }
    }
    (c, assign)
}

/// Lay out a segment file (see `docs/format.md`); returns it with the
/// namespaces it names and their numbers.
fn encode_segment(
    rows: &Rows,
    dim: usize,
    lists: usize,
    gen: u64,
    level: u32,
    range: (u64, u64),
    ns_name: &dyn Fn(u32) -> String,
) -> (Vec<u8>, Vec<(String, u32)>) {
    let n = rows.len();
    let (centroids, assign) = cluster(rows, dim, lists);
    let (centroids, assign) = balance(rows, dim, centroids, assign);
    let lists = centroids.len() / dim;
    // Segment-local namespaces, in order of first appearance.
    let mut ns_local: Vec<u32> = Vec::new();
    let mut ns_rows: Vec<u64> = Vec::new();
    let mut local_of = std::collections::HashMap::new();
    let mut row_ns = Vec::with_capacity(n);
    for &g in &rows.ns {
        let l = *local_of.entry(g).or_insert_with(|| {
            ns_local.push(g);
            ns_rows.push(0);
            ns_local.len() as u32 - 1
        });
        ns_rows[l as usize] += 1;
        row_ns.push(l);
    }
    // Rows ordered by (list, namespace, id).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (assign[i], row_ns[i], rows.ids[i]));
    // Runs of one (list, namespace); list_runs[l] is list l's first run.
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let mut run_list: Vec<usize> = Vec::new();
    let mut prev: Option<(usize, u32)> = None;
    for (pos, &i) in order.iter().enumerate() {
        let key = (assign[i], row_ns[i]);
        if prev != Some(key) {
            runs.push((row_ns[i], pos as u32));
            run_list.push(assign[i]);
            prev = Some(key);
        }
    }
    let list_runs: Vec<u32> = (0..=lists)
        .map(|l| run_list.partition_point(|&x| x < l) as u32)
        .collect();
    let mut b = Vec::with_capacity(HEADER + n * (dim + 12) + lists * (dim + 8));
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(dim as u32).to_le_bytes());
    b.extend_from_slice(&gen.to_le_bytes());
    b.extend_from_slice(&range.0.to_le_bytes());
    b.extend_from_slice(&range.1.to_le_bytes());
    b.extend_from_slice(&(n as u64).to_le_bytes());
    b.extend_from_slice(&(lists as u32).to_le_bytes());
    b.extend_from_slice(&level.to_le_bytes());
    b.extend_from_slice(&(ns_local.len() as u32).to_le_bytes());
    b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    let mut names = Vec::with_capacity(ns_local.len());
    for (g, count) in ns_local.iter().zip(&ns_rows) {
        // Namespaces are at most 65,535 bytes (checked at append).
        let name = ns_name(*g);
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        names.push((name, *g));
    }
    let pad = |b: &mut Vec<u8>| b.resize(pad8(b.len()), 0);
    pad(&mut b);
    let mut cq = Vec::with_capacity(lists * dim);
    let mut cs = Vec::with_capacity(lists);
    for c in centroids.chunks_exact(dim) {
        cs.push(quantize(c, &mut cq));
    }
    for s in &cs {
        b.extend_from_slice(&s.to_le_bytes());
    }
    pad(&mut b);
    b.extend_from_slice(bytemuck::cast_slice(&cq));
    pad(&mut b);
    for x in &list_runs {
        b.extend_from_slice(&x.to_le_bytes());
    }
    pad(&mut b);
    for (ns, start) in runs.iter().chain(std::iter::once(&(u32::MAX, n as u32))) {
        b.extend_from_slice(&ns.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
    }
    pad(&mut b);
    for &i in &order {
        b.extend_from_slice(&rows.ids[i].to_le_bytes());
    }
    pad(&mut b);
    for &i in &order {
        b.extend_from_slice(&rows.scales[i].to_le_bytes());
    }
    pad(&mut b);
    for &i in &order {
        b.extend_from_slice(bytemuck::cast_slice(&rows.q[i * dim..(i + 1) * dim]));
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    (b, names)
}
