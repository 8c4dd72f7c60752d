//! The pool's in-memory state, rebuilt by replaying the log: live slices,
//! their vectors in one contiguous matrix, and per-namespace row lists.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::format::{Rec, SliceRec};
use super::storage::Storage;
use crate::slice::{SliceMeta, Source};

/// Marks a row whose slice is gone.
const DEAD: u64 = u64::MAX;
/// Scans of at least this many rows run on several threads.
const PARALLEL_ROWS: usize = 65_536;

/// A zstd dictionary, raw and prepared for decompression.
pub struct Dict {
    pub raw: Vec<u8>,
    pub decoder: zstd::dict::DecoderDictionary<'static>,
}

/// What the pool keeps per live slice.
#[derive(Clone, Debug)]
pub struct Entry {
    pub offset: u64,
    pub bytes: u32,
    pub row: u32,
    pub ns: u32,
    pub source: Source,
    pub tokens: u32,
    pub turn: u64,
    pub time_ms: u64,
    pub salience: f32,
    pub uses: u32,
    pub last_used_seq: u64,
    pub pinned: bool,
    pub ext_id: Option<Box<str>>,
}

pub struct State {
    pub dim: usize,
    pub log: Arc<dyn Storage>,
    pub identity: u64,
    pub generation: u64,
    pub header_len: u64,
    /// End of the last complete record: where the next one goes.
    pub end: u64,
    pub next_id: u64,
    pub budget: u64,
    pub entries: BTreeMap<u64, Entry>,
    ns_names: Vec<String>,
    ns_index: HashMap<String, u32>,
    ns_rows: Vec<Vec<u32>>,
    ns_live: Vec<u64>,
    /// Vectors quantised to i8, one row of `dim` per slice, and each row's scale.
    qvecs: Vec<i8>,
    scales: Vec<f32>,
    row_ids: Vec<u64>,
    dead_rows: usize,
    /// Bytes of live slice records.
    pub live_bytes: u64,
    pub tokens: u64,
    /// zstd dictionaries by id, and the one new text is compressed with.
    pub dicts: HashMap<u32, Arc<Dict>>,
    pub current_dict: Option<u32>,
}

#[derive(PartialEq)]
struct Scored(f32, u64);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    /// Reversed, so that a `BinaryHeap` keeps the worst hit on top; among
    /// equal scores the older id ranks first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl State {
    pub fn new(dim: usize, log: Arc<dyn Storage>, generation: u64, header_len: u64) -> State {
        State {
            dim,
            identity: log.identity(),
            log,
            generation,
            header_len,
            end: header_len,
            next_id: 1,
            budget: 0,
            entries: BTreeMap::new(),
            ns_names: Vec::new(),
            ns_index: HashMap::new(),
            ns_rows: Vec::new(),
            ns_live: Vec::new(),
            qvecs: Vec::new(),
            scales: Vec::new(),
            row_ids: Vec::new(),
            dead_rows: 0,
            live_bytes: 0,
            tokens: 0,
            dicts: HashMap::new(),
            current_dict: None,
        }
    }

    /// Apply one record found at `offset`, `len` bytes long.
    pub fn apply(&mut self, rec: &Rec, offset: u64, len: usize) {
        match rec {
            Rec::Slice(s) => self.insert(s, offset, len),
            Rec::Witness(events) => {
                for &(kind, id, seq) in events {
                    if let Some(e) = self.entries.get_mut(&id) {
                        match kind {
                            0 => {
                                e.uses = e.uses.saturating_add(1);
                                e.last_used_seq = e.last_used_seq.max(seq);
                            }
                            1 => e.last_used_seq = e.last_used_seq.max(seq),
                            2 => e.pinned = true,
                            3 => e.pinned = false,
                            _ => {}
                        }
                    }
                }
            }
            Rec::DeleteNs { namespace, upto } => {
                let ids = self.ids_in(namespace, *upto);
                for id in ids {
                    self.remove(id);
                }
            }
            Rec::Evict(ids) => {
                for &id in ids {
                    self.remove(id);
                }
            }
            Rec::Budget(b) => self.budget = *b,
            Rec::Clear { upto } => {
                let ids: Vec<u64> = self.entries.range(..*upto).map(|(id, _)| *id).collect();
                for id in ids {
                    self.remove(id);
                }
            }
            Rec::NextId(n) => self.next_id = self.next_id.max(*n),
            Rec::Dict { id, bytes } => {
                let d = Dict {
                    raw: bytes.clone(),
                    decoder: zstd::dict::DecoderDictionary::copy(bytes),
                };
                self.dicts.insert(*id, Arc::new(d));
                self.current_dict = Some(*id);
            }
        }
        self.end = self.end.max(offset + len as u64);
        self.tidy_rows();
    }

    fn insert(&mut self, s: &SliceRec, offset: u64, len: usize) {
        if self.entries.contains_key(&s.id) {
            self.remove(s.id);
        }
        let ns = match self.ns_index.get(&s.namespace) {
            Some(&i) => i,
            None => {
                let i = self.ns_names.len() as u32;
                self.ns_names.push(s.namespace.clone());
                self.ns_index.insert(s.namespace.clone(), i);
                self.ns_rows.push(Vec::new());
                self.ns_live.push(0);
                i
            }
        };
        let row = self.row_ids.len() as u32;
        self.row_ids.push(s.id);
        if s.vector.len() == self.dim {
            let mut row = vec![0f32; self.dim];
            s.vector.convert_to_f32_slice(&mut row);
            self.scales.push(quantize(&row, &mut self.qvecs));
        } else {
            self.qvecs.resize(self.qvecs.len() + self.dim, 0);
            self.scales.push(0.0);
        }
        self.ns_rows[ns as usize].push(row);
        self.ns_live[ns as usize] += 1;
        self.live_bytes += len as u64;
        self.tokens += s.tokens as u64;
        self.next_id = self.next_id.max(s.id + 1);
        self.entries.insert(
            s.id,
            Entry {
                offset,
                bytes: len as u32,
                row,
                ns,
                source: Source::from_u8(s.source).unwrap_or(Source::Document),
                tokens: s.tokens,
                turn: s.turn,
                time_ms: s.time_ms,
                salience: s.salience,
                uses: s.uses,
                last_used_seq: s.last_used_seq,
                pinned: s.pinned,
                ext_id: s.ext_id.as_deref().map(Box::from),
            },
        );
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            self.row_ids[e.row as usize] = DEAD;
            self.dead_rows += 1;
            self.ns_live[e.ns as usize] -= 1;
            self.live_bytes -= e.bytes as u64;
            self.tokens -= e.tokens as u64;
        }
    }

    fn ids_in(&self, namespace: &str, upto: u64) -> Vec<u64> {
        let Some(&ns) = self.ns_index.get(namespace) else {
            return Vec::new();
        };
        self.ns_rows[ns as usize]
            .iter()
            .map(|&r| self.row_ids[r as usize])
            .filter(|&id| id != DEAD && id < upto)
            .collect()
    }

    /// Drop dead rows from the matrix once they are the majority.
    fn tidy_rows(&mut self) {
        if self.dead_rows < 1024 || self.dead_rows * 2 < self.row_ids.len() {
            return;
        }
        self.rebuild_rows();
    }

    pub fn rebuild_rows(&mut self) {
        let dim = self.dim;
        let mut qvecs = Vec::with_capacity(self.entries.len() * dim);
        let mut scales = Vec::with_capacity(self.entries.len());
        let mut row_ids = Vec::with_capacity(self.entries.len());
        for r in &mut self.ns_rows {
            r.clear();
        }
        for (&id, e) in self.entries.iter_mut() {
            let old = e.row as usize;
            e.row = row_ids.len() as u32;
            row_ids.push(id);
            qvecs.extend_from_slice(&self.qvecs[old * dim..(old + 1) * dim]);
            scales.push(self.scales[old]);
            self.ns_rows[e.ns as usize].push(e.row);
        }
        self.qvecs = qvecs;
        self.scales = scales;
        self.row_ids = row_ids;
        self.dead_rows = 0;
    }

    /// Give back the slack of grown vectors (after a replay).
    pub fn shrink(&mut self) {
        self.qvecs.shrink_to_fit();
        self.scales.shrink_to_fit();
        self.row_ids.shrink_to_fit();
        for r in &mut self.ns_rows {
            r.shrink_to_fit();
        }
    }

    pub fn meta(&self, id: u64) -> Option<SliceMeta> {
        self.entries.get(&id).map(|e| self.to_meta(id, e))
    }

    pub fn to_meta(&self, id: u64, e: &Entry) -> SliceMeta {
        SliceMeta {
            id,
            namespace: self.ns_names[e.ns as usize].clone(),
            source: e.source,
            tokens: e.tokens,
            turn: e.turn,
            ext_id: e.ext_id.as_deref().map(str::to_string),
            time_ms: e.time_ms,
            bytes: e.bytes as u64,
            salience: e.salience,
            uses: e.uses,
            last_used_seq: e.last_used_seq,
            pinned: e.pinned,
        }
    }

    /// Metadata of live slices, in id order; `ns = None` for all.
    pub fn metas(&self, ns: Option<&str>) -> Vec<SliceMeta> {
        match ns {
            None => self
                .entries
                .iter()
                .map(|(&id, e)| self.to_meta(id, e))
                .collect(),
            Some(name) => {
                let Some(&ns) = self.ns_index.get(name) else {
                    return Vec::new();
                };
                let mut ids: Vec<u64> = self.ns_rows[ns as usize]
                    .iter()
                    .map(|&r| self.row_ids[r as usize])
                    .filter(|&id| id != DEAD)
                    .collect();
                ids.sort_unstable();
                ids.iter().filter_map(|id| self.meta(*id)).collect()
            }
        }
    }

    pub fn namespaces(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .ns_names
            .iter()
            .zip(&self.ns_live)
            .filter(|(_, &n)| n > 0)
            .map(|(s, &n)| (s.clone(), n))
            .collect();
        out.sort();
        out
    }

    pub fn live_namespaces(&self) -> u64 {
        self.ns_live.iter().filter(|&&n| n > 0).count() as u64
    }

    pub fn live_in(&self, ns: &str) -> u64 {
        self.ns_index
            .get(ns)
            .map(|&i| self.ns_live[i as usize])
            .unwrap_or(0)
    }

    /// Exact top-`k` by dot product; `ns = None` scans every row, otherwise
    /// only that namespace's rows.
    pub fn search(&self, q: &[f32], k: usize, ns: Option<&str>) -> Vec<(f32, u64)> {
        self.search_with(q, k, ns, k.saturating_mul(4).max(k + 32))
    }

    /// Exact top-`k`: every row in scope is scored with its stored f16
    /// vector (slow; a reference for measuring recall).
    pub fn search_exact(&self, q: &[f32], k: usize, ns: Option<&str>) -> Vec<(f32, u64)> {
        self.search_with(q, k, ns, usize::MAX)
    }

    /// Scan the i8 rows in scope for the best `want` candidates, then rank
    /// those by their exact f16 vectors and keep `k`.
    fn search_with(&self, q: &[f32], k: usize, ns: Option<&str>, want: usize) -> Vec<(f32, u64)> {
        if k == 0 {
            return Vec::new();
        }
        let rows: &[u32] = match ns {
            None => &[],
            Some(name) => match self.ns_index.get(name) {
                Some(&i) => &self.ns_rows[i as usize],
                None => return Vec::new(),
            },
        };
        let n = if ns.is_none() {
            self.row_ids.len()
        } else {
            rows.len()
        };
        let row_at = |i: usize| if ns.is_none() { i } else { rows[i] as usize };
        // Big scans are split over the cores; each part keeps its own top k.
        let mut qq = Vec::with_capacity(self.dim);
        let q_scale = quantize(q, &mut qq);
        let q8 = &qq;
        let want = want.min(n.max(k));
        let threads = if n >= PARALLEL_ROWS {
            std::thread::available_parallelism().map_or(1, |t| t.get().min(8))
        } else {
            1
        };
        let mut heaps: Vec<BinaryHeap<Scored>> = if threads == 1 {
            vec![self.scan(q8, q_scale, want, 0..n, &row_at)]
        } else {
            let per = n.div_ceil(threads);
            std::thread::scope(|sc| {
                let parts: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * per).min(n)..((t + 1) * per).min(n);
                        let row_at = &row_at;
                        sc.spawn(move || self.scan(q8, q_scale, want, range, row_at))
                    })
                    .collect();
                parts
                    .into_iter()
                    .map(|p| p.join().unwrap_or_default())
                    .collect()
            })
        };
        let mut out: Vec<Scored> = heaps.iter_mut().flat_map(|h| h.drain()).collect();
        out.sort();
        out.truncate(want);
        let mut row = vec![0u8; self.dim * 2];
        let mut exact = vec![0f32; self.dim];
        for c in &mut out {
            if let Some(score) = self.exact_score(q, c.1, &mut row, &mut exact) {
                c.0 = score;
            }
        }
        out.sort();
        out.truncate(k);
        out.into_iter().map(|s| (s.0, s.1)).collect()
    }

    /// The dot product of `q` with slice `id`'s stored f16 vector, read
    /// from the log (a page-cache hit for recent or often-read slices).
    fn exact_score(&self, q: &[f32], id: u64, raw: &mut [u8], row: &mut [f32]) -> Option<f32> {
        let e = self.entries.get(&id)?;
        let at = e.offset + (super::format::RECORD_HEADER + super::format::SLICE_FIXED) as u64;
        self.log.read_at(at, raw).ok()?;
        for (x, b) in row.iter_mut().zip(raw.chunks_exact(2)) {
            *x = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        }
        let s = dot(q, row);
        s.is_finite().then_some(s)
    }

    fn scan(
        &self,
        q: &[i8],
        q_scale: f32,
        k: usize,
        range: std::ops::Range<usize>,
        row_at: &(dyn Fn(usize) -> usize + Sync),
    ) -> BinaryHeap<Scored> {
        let mut heap: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
        for i in range {
            let r = row_at(i);
            let id = self.row_ids[r];
            if id == DEAD {
                continue;
            }
            let d = dot_i8(q, &self.qvecs[r * self.dim..(r + 1) * self.dim]);
            let score = d as f32 * q_scale * self.scales[r];
            if !score.is_finite() {
                continue;
            }
            if heap.len() < k {
                heap.push(Scored(score, id));
            } else if let Some(worst) = heap.peek() {
                if Scored(score, id) < *worst {
                    heap.pop();
                    heap.push(Scored(score, id));
                }
            }
        }
        heap
    }
}

/// Append `v` quantised to i8 (symmetric, per row) to `out`; returns the scale.
fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let m = v
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    if m == 0.0 {
        out.extend(std::iter::repeat_n(0i8, v.len()));
        return 0.0;
    }
    let scale = m / 127.0;
    out.extend(v.iter().map(|x| {
        if x.is_finite() {
            (x / scale).round().clamp(-127.0, 127.0) as i8
        } else {
            0
        }
    }));
    scale
}

fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // Sixteen independent lanes so the compiler vectorises the sum.
    let mut acc = [0i32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] as i32 * y[l] as i32;
        }
    }
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| *x as i32 * *y as i32)
        .sum();
    acc.iter().sum::<i32>() + tail
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent lanes so the compiler vectorises the sum.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::storage::{Dir, MemDir};

    fn rec(id: u64, ns: &str, v: &[f32]) -> Rec {
        Rec::Slice(SliceRec {
            id,
            time_ms: 0,
            turn: 0,
            last_used_seq: id,
            tokens: 1,
            salience: 0.5,
            uses: 0,
            source: 0,
            pinned: false,
            namespace: ns.into(),
            ext_id: None,
            text_len: 0,
            dict: None,
            text_z: Vec::new(),
            vector: v.iter().map(|x| f16::from_f32(*x)).collect(),
        })
    }

    #[test]
    fn parallel_scan_matches_a_single_scan() {
        let log = MemDir::new().open("x", true).unwrap();
        let mut s = State::new(4, log, 1, 0);
        let n = PARALLEL_ROWS as u64 + 5000;
        for id in 1..=n {
            let a = (id as f32 * 0.37).sin();
            let b = (id as f32 * 0.11).cos();
            let ns = if id % 2 == 0 { "even" } else { "odd" };
            s.apply(&rec(id, ns, &[a, b, a * b, 0.5]), id * 100, 100);
        }
        s.apply(&Rec::Evict(vec![7, 8, 9]), n * 100 + 100, 10);
        let q = [0.3, -0.8, 0.2, 0.1];
        let got = s.search(&q, 10, None);
        let mut q8 = Vec::new();
        let qs = quantize(&q, &mut q8);
        let all = s.scan(&q8, qs, 10, 0..s.row_ids.len(), &|i| i);
        let mut want = all.into_vec();
        want.sort();
        let want: Vec<(f32, u64)> = want.into_iter().map(|x| (x.0, x.1)).collect();
        // The log here is empty, so no exact re-ranking: the i8 scores stand.
        assert_eq!(got, want);
        assert!(got.iter().all(|(_, id)| ![7, 8, 9].contains(id)));
        let even = s.search(&q, 10, Some("even"));
        assert_eq!(even.len(), 10);
        assert!(even.iter().all(|(_, id)| id % 2 == 0));
        assert!(s.search(&q, 10, Some("none")).is_empty());
    }
}
