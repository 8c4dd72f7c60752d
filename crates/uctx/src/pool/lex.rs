//! The lexical index: BM25 postings over every live slice, on disk.
//!
//! Derived from the log like the vector index ([`super::ann`]), with the
//! same lifecycle:
//!
//! - The *tail* holds the newest slices' postings in memory. Appends add to
//!   it with the text in hand; a process that opens the pool fills it from
//!   the log (the slices no segment holds: at most [`SEAL_DOCS`] or so).
//!   When it holds [`SEAL_DOCS`] live slices the writer *seals* it into a
//!   segment.
//! - A segment is one file (`lex-GEN.bm25`, see `docs/format.md`): the
//!   documents ordered by (namespace, id), a front-coded term dictionary,
//!   and per term a list of (document, term frequency), delta-coded, with a
//!   skip entry every [`BLOCK`] postings. It is memory-mapped. A search
//!   scoped to a namespace decodes only that namespace's stretch of each
//!   list.
//! - [`FANIN`] segments of one level that are next to each other in id
//!   order merge into one of the next level; a segment mostly deleted (or
//!   any with deletions while the pool is over its budget) is rewritten
//!   without them. Deleted slices are a bitset per segment until then, and
//!   are never returned.
//!
//! Segments cover disjoint ranges of ids, and every live slice inside a
//! segment's range is in that segment (seals take the whole tail, merges
//! take neighbours, and a writer that finds a hole, a missing or damaged
//! segment, rebuilds exactly the hole's slices from the log before it
//! writes anything else). The tail holds only slices above every
//! segment's range, except in a reader, which never writes and keeps the
//! slices of a hole in its tail. A missing, damaged or stale segment (one
//! written with other [`ANALYSIS`] rules) therefore costs a rebuild from
//! the log, never a result.
//!
//! Scores are BM25 with the statistics of the whole pool (documents,
//! average length, document frequencies summed over segments and tail;
//! deleted slices count in a segment's frequencies until it is rewritten),
//! with the terms and plural folding of [`crate::lexical`].

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::checkpoint::{Put, Take};
use super::le::{get_u32, get_u64, pad8};
use super::state::State;
use super::storage::{Dir, Mapped};
use super::top::Top;
use super::{Maint, Pool, Scope};
use crate::lexical::{for_each_term, stem, ANALYSIS, B, K1};
use crate::slice::NewSlice;
use crate::Result;

pub const LEX_PREFIX: &str = "lex-";
pub const LEX_SUFFIX: &str = ".bm25";
const MAGIC: [u8; 8] = *b"UCTXLEX1";
const VERSION: u32 = 1;
const HEADER: usize = 96;
/// Live slices in the tail at which it is sealed into a segment.
pub const SEAL_DOCS: usize = 2048;
/// Neighbouring segments of one level merged into one of the next.
pub const FANIN: usize = 8;
/// Levels above this are not merged further.
const MAX_LEVEL: u32 = 4;
/// Postings between two skip entries.
pub const BLOCK: usize = 128;
/// Terms per dictionary block (the first written whole, the rest
/// front-coded against the one before).
const DICT_BLOCK: usize = 32;

/// Whether `name` is an installed lexical segment (not one being written).
pub fn is_segment_file(name: &str) -> bool {
    name.starts_with(LEX_PREFIX) && name.ends_with(LEX_SUFFIX)
}

/// Sizes that shape the index; tests use small ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Live tail slices at which the tail is sealed.
    pub seal_docs: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            seal_docs: SEAL_DOCS,
        }
    }
}

/// The lexical index at a glance.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LexicalStats {
    /// Segment files.
    pub segments: u64,
    /// Slices in them (deleted ones included until rewritten).
    pub segment_docs: u64,
    /// Newest slices, in memory, not yet sealed.
    pub tail_docs: u64,
    /// Bytes of segment files.
    pub bytes: u64,
}

/// What a writer's open rebuilt from the log.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Rebuilt {
    /// Slices whose postings were built from their text in the log.
    pub slices: u64,
    /// Segment files dropped: damaged, of another format or analysis, or
    /// superseded.
    pub dropped: u64,
}

// ---- bytes ----------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// A LEB128 integer at `*pos`, advancing it; `None` past the end or when
/// longer than 64 bits.
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        x |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(x);
        }
    }
    None
}

/// A term's postings: (document, term frequency), documents ascending.
type Postings = Vec<(u32, u32)>;

// ---- documents and the tail ----------------------------------------------

/// A slice's terms, folded and counted: what the index takes in.
pub struct Doc {
    pub id: u64,
    pub ns: u32,
    /// Terms in the text (its BM25 length).
    pub len: u32,
    /// Distinct terms and their frequencies.
    pub terms: Vec<(Box<str>, u32)>,
}

impl Doc {
    pub fn analyze(id: u64, ns: u32, text: &str) -> Doc {
        let mut owned: Vec<(Box<str>, u32)> = Vec::new();
        let mut len = 0u32;
        // Terms borrow a buffer that `for_each_term` reuses: count by owned keys.
        let mut index: HashMap<Box<str>, usize> = HashMap::new();
        for_each_term(text, |t| {
            let t = stem(t);
            len = len.saturating_add(1);
            match index.get(t) {
                Some(&i) => owned[i].1 += 1,
                None => {
                    index.insert(t.into(), owned.len());
                    owned.push((t.into(), 1));
                }
            }
        });
        Doc {
            id,
            ns,
            len,
            terms: owned,
        }
    }
}

struct TailDoc {
    id: u64,
    ns: u32,
    len: u32,
    gone: bool,
    /// (term number, frequency), to rebuild the tail without sealed docs.
    terms: Vec<(u32, u32)>,
}

/// The newest slices' postings, in memory; documents in id order.
#[derive(Default)]
struct Tail {
    tid: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    /// Per term: (document slot, frequency), slots ascending.
    postings: Vec<Vec<(u32, u32)>>,
    docs: Vec<TailDoc>,
    live: usize,
    total_len: u64,
}

impl Tail {
    fn add(&mut self, d: Doc) {
        let slot = self.docs.len() as u32;
        let mut terms = Vec::with_capacity(d.terms.len());
        for (t, tf) in d.terms {
            let next = self.names.len() as u32;
            let tid = *self.tid.entry(t.clone()).or_insert(next);
            if tid == next {
                self.names.push(t);
                self.postings.push(Vec::new());
            }
            self.postings[tid as usize].push((slot, tf));
            terms.push((tid, tf));
        }
        self.docs.push(TailDoc {
            id: d.id,
            ns: d.ns,
            len: d.len,
            gone: false,
            terms,
        });
        self.live += 1;
        self.total_len += u64::from(d.len);
    }

    fn slot(&self, id: u64) -> Option<usize> {
        self.docs.binary_search_by_key(&id, |d| d.id).ok()
    }

    /// Delete `id`; whether the tail held it.
    fn remove(&mut self, id: u64) -> bool {
        let Some(i) = self.slot(id) else {
            return false;
        };
        let d = &mut self.docs[i];
        if !d.gone {
            d.gone = true;
            self.live -= 1;
            self.total_len -= u64::from(d.len);
            let dead = self.docs.len() - self.live;
            if dead >= 1024 && dead * 2 >= self.docs.len() {
                self.retain(|_| true);
            }
        }
        true
    }

    /// Keep only live documents that `keep` accepts.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let old = std::mem::take(self);
        let mut next = Tail::default();
        for d in old.docs {
            if d.gone || !keep(d.id) {
                continue;
            }
            let terms = d
                .terms
                .iter()
                .map(|&(tid, tf)| (old.names[tid as usize].clone(), tf))
                .collect();
            next.add(Doc {
                id: d.id,
                ns: d.ns,
                len: d.len,
                terms,
            });
        }
        *self = next;
    }

    fn df(&self, term: &str) -> u64 {
        self.tid
            .get(term)
            .map_or(0, |&t| self.postings[t as usize].len() as u64)
    }

    fn last_id(&self) -> Option<u64> {
        self.docs.iter().rev().find(|d| !d.gone).map(|d| d.id)
    }
}

// ---- segments -------------------------------------------------------------

/// Where a term's postings are.
#[derive(Clone, Copy, Debug)]
struct TermInfo {
    df: u32,
    off: usize,
    len: usize,
}

/// One mapped segment file, parsed.
pub struct SegFile {
    pub name: String,
    pub gen: u64,
    pub level: u32,
    pub first_id: u64,
    pub last_id: u64,
    pub docs: usize,
    total_len: u64,
    map: Mapped,
    /// Pool-wide number of each of the segment's namespaces, and the first
    /// document of each (entry M is the document count).
    ns_global: Vec<u32>,
    ns_start: Vec<usize>,
    blocks: usize,
    at_ids: usize,
    at_lens: usize,
    at_blocks: usize,
    at_dict: usize,
    dict_len: usize,
    at_post: usize,
    post_len: usize,
}

/// A segment with what was deleted from it since it was written.
struct Seg {
    file: Arc<SegFile>,
    /// Bit per document: deleted.
    dead: Vec<u64>,
    dead_docs: usize,
    dead_len: u64,
}

impl Seg {
    fn new(file: SegFile) -> Seg {
        Seg {
            dead: vec![0; file.docs.div_ceil(64)],
            file: Arc::new(file),
            dead_docs: 0,
            dead_len: 0,
        }
    }

    fn is_dead(&self, ord: usize) -> bool {
        self.dead_docs > 0 && self.dead[ord / 64] & (1 << (ord % 64)) != 0
    }

    fn kill(&mut self, ord: usize) {
        if !self.is_dead(ord) {
            self.dead[ord / 64] |= 1 << (ord % 64);
            self.dead_docs += 1;
            self.dead_len += u64::from(self.file.len(ord));
        }
    }
}

impl SegFile {
    fn bytes(&self) -> &[u8] {
        (*self.map).as_ref()
    }

    pub fn file_bytes(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Parse a mapped segment, checking its header and directories (and,
    /// with `verify`, its checksum: every byte); `intern` maps namespace
    /// names to the pool's numbers.
    fn parse(
        name: &str,
        map: Mapped,
        verify: bool,
        intern: &mut dyn FnMut(&str) -> u32,
    ) -> std::result::Result<SegFile, String> {
        let b = (*map).as_ref();
        if b.len() < HEADER + 4 || b[..8] != MAGIC {
            return Err("not a lexical segment".into());
        }
        let body = b.len() - 4;
        let field = |o| get_u32(b, o).unwrap_or(0);
        let wide = |o| get_u64(b, o).unwrap_or(0);
        if verify && !super::segfile::checksum_ok(b) {
            return Err("fails its checksum".into());
        }
        if field(8) != VERSION {
            return Err(format!("segment format {} is not read", field(8)));
        }
        if field(12) != ANALYSIS {
            return Err(format!("written with analysis {}", field(12)));
        }
        let docs = wide(40) as usize;
        let ns_count = field(68) as usize;
        let blocks = field(72) as usize;
        let dict_len = wide(80) as usize;
        let post_len = wide(88) as usize;
        let mut at = HEADER;
        let mut ns_global = Vec::with_capacity(ns_count);
        let mut ns_start = vec![0usize];
        for _ in 0..ns_count {
            let n = get_u64(b, at).ok_or("truncated namespace table")? as usize;
            let len = b.get(at + 8..at + 10).ok_or("truncated namespace table")?;
            let len = u16::from_le_bytes([len[0], len[1]]) as usize;
            at += 10;
            let name = b
                .get(at..at + len)
                .and_then(|s| std::str::from_utf8(s).ok())
                .ok_or("a damaged namespace name")?;
            ns_global.push(intern(name));
            let end = ns_start[ns_start.len() - 1].saturating_add(n);
            ns_start.push(end);
            at += len;
        }
        let at_ids = pad8(at);
        let at_lens = at_ids.saturating_add(docs.saturating_mul(8));
        let at_blocks = pad8(at_lens.saturating_add(docs.saturating_mul(4)));
        let at_dict = at_blocks.saturating_add(blocks.saturating_add(1).saturating_mul(8));
        let at_post = pad8(at_dict.saturating_add(dict_len));
        let seg = SegFile {
            name: name.to_string(),
            gen: wide(16),
            level: field(64),
            first_id: wide(24),
            last_id: wide(32),
            docs,
            total_len: wide(56),
            map: map.clone(),
            ns_global,
            ns_start,
            blocks,
            at_ids,
            at_lens,
            at_blocks,
            at_dict,
            dict_len,
            at_post,
            post_len,
        };
        if at_post.saturating_add(post_len) != body
            || seg.ns_start[ns_count] != docs
            || seg.first_id > seg.last_id
        {
            return Err("sizes do not match its header".into());
        }
        let mut prev = 0;
        for i in 0..=blocks {
            let o = seg.block_at(i);
            if o < prev || o > dict_len || (i == 0 && o != 0) {
                return Err("a damaged term dictionary".into());
            }
            prev = o;
        }
        Ok(seg)
    }

    pub fn id(&self, ord: usize) -> u64 {
        get_u64(self.bytes(), self.at_ids + 8 * ord).unwrap_or(0)
    }

    fn len(&self, ord: usize) -> u32 {
        get_u32(self.bytes(), self.at_lens + 4 * ord).unwrap_or(0)
    }

    fn block_at(&self, i: usize) -> usize {
        get_u64(self.bytes(), self.at_blocks + 8 * i).unwrap_or(0) as usize
    }

    fn dict(&self) -> &[u8] {
        &self.bytes()[self.at_dict..self.at_dict + self.dict_len]
    }

    fn post(&self) -> &[u8] {
        &self.bytes()[self.at_post..self.at_post + self.post_len]
    }

    /// Documents `[lo, hi)` of pool namespace `g` (all when `None`).
    fn range(&self, g: Option<u32>) -> Option<(usize, usize)> {
        match g {
            None => Some((0, self.docs)),
            Some(g) => {
                let l = self.ns_global.iter().position(|&x| x == g)?;
                Some((self.ns_start[l], self.ns_start[l + 1]))
            }
        }
    }

    /// The document number of slice `id` of pool namespace `g`.
    fn ord_of(&self, id: u64, g: u32) -> Option<usize> {
        let (lo, hi) = self.range(Some(g))?;
        let (mut a, mut b) = (lo, hi);
        while a < b {
            let m = (a + b) / 2;
            match self.id(m).cmp(&id) {
                std::cmp::Ordering::Less => a = m + 1,
                std::cmp::Ordering::Greater => b = m,
                std::cmp::Ordering::Equal => return Some(m),
            }
        }
        None
    }

    /// The first term of dictionary block `i`.
    fn block_first(&self, i: usize) -> Option<&[u8]> {
        let d = self.dict();
        let mut pos = self.block_at(i);
        let _prefix = varint(d, &mut pos)?;
        let n = varint(d, &mut pos)? as usize;
        d.get(pos..pos + n)
    }

    fn lookup(&self, term: &[u8]) -> Option<TermInfo> {
        if self.blocks == 0 {
            return None;
        }
        // The last block whose first term is at most `term`.
        let (mut a, mut b) = (0usize, self.blocks);
        while a + 1 < b {
            let m = (a + b) / 2;
            if self.block_first(m)? <= term {
                a = m;
            } else {
                b = m;
            }
        }
        let mut c = Cursor::at_block(self, a);
        while let Some(info) = c.advance() {
            match c.term.as_slice().cmp(term) {
                std::cmp::Ordering::Equal => return Some(info),
                std::cmp::Ordering::Greater => return None,
                std::cmp::Ordering::Less => {}
            }
            if c.block != a {
                return None;
            }
        }
        None
    }

    /// Call `f(doc, tf)` for the postings of `info` with documents in
    /// `[lo, hi)`, ascending. Stops quietly at anything malformed.
    fn postings(&self, info: TermInfo, lo: usize, hi: usize, mut f: impl FnMut(usize, u32)) {
        let mut w = PostingCursor::new(self, info, lo, hi);
        while w.doc != END {
            f(w.doc, w.tf);
            w.next();
        }
    }
}

/// Past the last posting.
const END: usize = usize::MAX;

/// A cursor over one term's postings in a segment, the documents in `[lo, hi)`
/// ascending: the current one is `doc` (`END` past the last, or at anything
/// malformed) with its frequency `tf`. [`PostingCursor::seek`] jumps over whole blocks by
/// their skip entries.
struct PostingCursor<'a> {
    p: &'a [u8],
    df: usize,
    /// Skip entries (one a block; none for a list of one block).
    nb: usize,
    /// Postings decoded so far.
    n: usize,
    pos: usize,
    prev: usize,
    hi: usize,
    doc: usize,
    tf: u32,
}

impl<'a> PostingCursor<'a> {
    fn new(seg: &'a SegFile, info: TermInfo, lo: usize, hi: usize) -> PostingCursor<'a> {
        let p = seg.post().get(info.off..info.off + info.len).unwrap_or(&[]);
        let df = if p.is_empty() { 0 } else { info.df as usize };
        let nb = if df > BLOCK { df.div_ceil(BLOCK) } else { 0 };
        let mut w = PostingCursor {
            p,
            df,
            nb,
            n: 0,
            pos: 8 * nb,
            prev: 0,
            hi: hi.min(seg.docs),
            doc: 0,
            tf: 0,
        };
        w.next();
        w.seek(lo);
        w
    }

    /// The first document of block `j`.
    fn first(&self, j: usize) -> usize {
        get_u32(self.p, 8 * j).unwrap_or(0) as usize
    }

    fn next(&mut self) {
        if self.n >= self.df {
            self.doc = END;
            return;
        }
        if self.nb > 0 && self.n.is_multiple_of(BLOCK) {
            let j = self.n / BLOCK;
            self.prev = self.first(j);
            self.pos = 8 * self.nb + get_u32(self.p, 8 * j + 4).unwrap_or(0) as usize;
        }
        let Some(x) = varint(self.p, &mut self.pos) else {
            self.doc = END;
            return;
        };
        let tf = if x & 1 == 1 {
            1
        } else {
            match varint(self.p, &mut self.pos) {
                Some(t) => t.min(u64::from(u32::MAX)) as u32,
                None => {
                    self.doc = END;
                    return;
                }
            }
        };
        self.n += 1;
        let doc = self.prev.saturating_add((x >> 1) as usize);
        if doc >= self.hi {
            self.doc = END;
            return;
        }
        (self.prev, self.doc, self.tf) = (doc, doc, tf);
    }

    /// Move to the first document at or after `target`.
    fn seek(&mut self, target: usize) {
        if self.doc >= target {
            return;
        }
        if self.nb > 0 {
            // The last block whose first document is at most `target`, if it is
            // past the current one: every posting before it is smaller.
            let cur = self.n.saturating_sub(1) / BLOCK;
            let (mut a, mut b) = (cur + 1, self.nb);
            while a < b {
                let m = (a + b) / 2;
                if self.first(m) <= target {
                    a = m + 1;
                } else {
                    b = m;
                }
            }
            if a - 1 > cur {
                self.n = (a - 1) * BLOCK;
                self.next();
            }
        }
        while self.doc < target {
            self.next();
        }
    }
}

/// A walk over a segment's dictionary in term order.
struct Cursor<'a> {
    seg: &'a SegFile,
    block: usize,
    in_block: usize,
    pos: usize,
    next_off: usize,
    term: Vec<u8>,
}

impl<'a> Cursor<'a> {
    fn at_block(seg: &'a SegFile, block: usize) -> Cursor<'a> {
        Cursor {
            seg,
            block,
            in_block: 0,
            pos: seg.block_at(block),
            next_off: 0,
            term: Vec::new(),
        }
    }

    /// The next term (into `self.term`) and where its postings are.
    fn advance(&mut self) -> Option<TermInfo> {
        let d = self.seg.dict();
        if self.block >= self.seg.blocks {
            return None;
        }
        if self.in_block == DICT_BLOCK || self.pos >= self.seg.block_at(self.block + 1) {
            self.block += 1;
            self.in_block = 0;
            if self.block >= self.seg.blocks {
                return None;
            }
            self.pos = self.seg.block_at(self.block);
        }
        let prefix = varint(d, &mut self.pos)? as usize;
        let n = varint(d, &mut self.pos)? as usize;
        let suffix = d.get(self.pos..self.pos + n)?;
        self.pos += n;
        if prefix > self.term.len() {
            return None;
        }
        self.term.truncate(prefix);
        self.term.extend_from_slice(suffix);
        let df = varint(d, &mut self.pos)? as u32;
        let len = varint(d, &mut self.pos)? as usize;
        let off = if self.in_block == 0 {
            varint(d, &mut self.pos)? as usize
        } else {
            self.next_off
        };
        self.in_block += 1;
        self.next_off = off + len;
        Some(TermInfo { df, off, len })
    }
}

/// Lay out a segment file (see `docs/format.md`). `docs` are (id, pool
/// namespace, length) in document order, grouped by namespace; `terms`
/// yields each term, in byte order, with its postings (document,
/// frequency) ascending. Returns the bytes and the namespaces named.
fn encode_segment(
    docs: &[(u64, u32, u32)],
    gen: u64,
    level: u32,
    range: (u64, u64),
    ns_name: &dyn Fn(u32) -> String,
    terms: &mut dyn FnMut() -> Option<(Vec<u8>, Postings)>,
) -> (Vec<u8>, Vec<(String, u32)>) {
    let mut dict = Vec::new();
    let mut post = Vec::new();
    let mut block_offsets: Vec<u64> = Vec::new();
    let mut prev_term: Vec<u8> = Vec::new();
    let mut count = 0u64;
    while let Some((term, plist)) = terms() {
        if plist.is_empty() {
            continue;
        }
        let first_in_block = (count as usize).is_multiple_of(DICT_BLOCK);
        if first_in_block {
            block_offsets.push(dict.len() as u64);
        }
        let prefix = if first_in_block {
            0
        } else {
            prev_term
                .iter()
                .zip(&term)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let off = post.len();
        let df = plist.len();
        let nb = if df > BLOCK { df.div_ceil(BLOCK) } else { 0 };
        let table = post.len();
        post.resize(table + 8 * nb, 0);
        let data = post.len();
        let mut prev = 0u32;
        for (i, &(doc, tf)) in plist.iter().enumerate() {
            if nb > 0 && i.is_multiple_of(BLOCK) {
                let j = i / BLOCK;
                let at = table + 8 * j;
                post[at..at + 4].copy_from_slice(&doc.to_le_bytes());
                let rel = (post.len() - data) as u32;
                post[at + 4..at + 8].copy_from_slice(&rel.to_le_bytes());
                prev = doc;
            }
            let delta = u64::from(doc - prev);
            put_varint(&mut post, (delta << 1) | u64::from(tf == 1));
            if tf != 1 {
                put_varint(&mut post, u64::from(tf));
            }
            prev = doc;
        }
        put_varint(&mut dict, prefix as u64);
        put_varint(&mut dict, (term.len() - prefix) as u64);
        dict.extend_from_slice(&term[prefix..]);
        put_varint(&mut dict, df as u64);
        put_varint(&mut dict, (post.len() - off) as u64);
        if first_in_block {
            put_varint(&mut dict, off as u64);
        }
        prev_term = term;
        count += 1;
    }
    block_offsets.push(dict.len() as u64);
    // Namespaces, in document order.
    let mut runs: Vec<(u32, u64)> = Vec::new();
    for &(_, ns, _) in docs {
        match runs.last_mut() {
            Some(r) if r.0 == ns => r.1 += 1,
            _ => runs.push((ns, 1)),
        }
    }
    let total_len: u64 = docs.iter().map(|d| u64::from(d.2)).sum();
    let mut b = Vec::with_capacity(HEADER + docs.len() * 12 + dict.len() + post.len() + 64);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&ANALYSIS.to_le_bytes());
    b.extend_from_slice(&gen.to_le_bytes());
    b.extend_from_slice(&range.0.to_le_bytes());
    b.extend_from_slice(&range.1.to_le_bytes());
    b.extend_from_slice(&(docs.len() as u64).to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&total_len.to_le_bytes());
    b.extend_from_slice(&level.to_le_bytes());
    b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    b.extend_from_slice(&((block_offsets.len() - 1) as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(dict.len() as u64).to_le_bytes());
    b.extend_from_slice(&(post.len() as u64).to_le_bytes());
    debug_assert_eq!(b.len(), HEADER);
    let mut names = Vec::with_capacity(runs.len());
    for &(g, n) in &runs {
        // Namespaces are at most 65,535 bytes (checked at append).
        let name = ns_name(g);
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        names.push((name, g));
    }
    let pad = |b: &mut Vec<u8>| b.resize(pad8(b.len()), 0);
    pad(&mut b);
    for &(id, _, _) in docs {
        b.extend_from_slice(&id.to_le_bytes());
    }
    for &(_, _, len) in docs {
        b.extend_from_slice(&len.to_le_bytes());
    }
    pad(&mut b);
    for o in &block_offsets {
        b.extend_from_slice(&o.to_le_bytes());
    }
    b.extend_from_slice(&dict);
    pad(&mut b);
    b.extend_from_slice(&post);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    (b, names)
}

// ---- the index ------------------------------------------------------------

/// What the writer should do next to keep the index in shape.
enum Job {
    Seal,
    Merge { names: Vec<String>, level: u32 },
    Vacuum { name: String },
}

/// A job's documents, ready to build without any lock held.
pub struct Prepared {
    source: Source,
    replaces: Vec<String>,
    level: u32,
    tail_upto: Option<u64>,
    range: (u64, u64),
    gen: u64,
}

enum Source {
    /// Documents (id, ns, len) and each term's postings by document slot.
    Docs {
        docs: Vec<(u64, u32, u32)>,
        terms: Vec<(Box<str>, Postings)>,
    },
    /// Segments with their deletion bitsets.
    Segments(Vec<(Arc<SegFile>, Vec<u64>)>),
}

/// A segment written, ready to install.
pub struct Built {
    seg: Option<SegFile>,
    replaces: Vec<String>,
    tail_upto: Option<u64>,
}

/// The index. See the module docs.
pub struct Lex {
    pub tuning: Tuning,
    segs: Vec<Seg>,
    tail: Tail,
    next_gen: u64,
    /// Every live slice with an id up to this is in a segment or the tail.
    scanned_upto: u64,
    /// Whether the tail holds slices below a segment's range (a writer
    /// whose rebuild of a hole failed): it is not sealed then.
    tail_has_holes: bool,
    /// Files dropped on open, and what the writer's open rebuilt.
    dropped: u64,
    rebuilt: Option<Rebuilt>,
    /// Tail size at which to try maintenance again after a failure.
    pub retry_at: usize,
    /// Held while the tail is filled from the log: one filler at a time,
    /// so the tail stays in id order.
    filling: Arc<std::sync::Mutex<()>>,
}

impl Lex {
    pub fn new() -> Lex {
        Lex {
            tuning: Tuning::default(),
            segs: Vec::new(),
            tail: Tail::default(),
            next_gen: 1,
            scanned_upto: 0,
            tail_has_holes: false,
            dropped: 0,
            rebuilt: None,
            retry_at: 0,
            filling: Arc::default(),
        }
    }

    /// Map the segments in `dir`. Damaged, stale or superseded files are
    /// skipped (and, for a writer, deleted, as are unfinished ones).
    /// Returns the index and the names of the segment files left.
    pub fn open(
        dir: &dyn Dir,
        writer: bool,
        intern: &mut dyn FnMut(&str) -> u32,
    ) -> io::Result<(Lex, Vec<String>)> {
        let opened = super::segfile::open(
            dir,
            writer,
            LEX_PREFIX,
            LEX_SUFFIX,
            |name, map| SegFile::parse(name, map, false, intern),
            |s: &SegFile| (s.first_id, s.last_id, s.gen),
        )?;
        let mut lex = Lex::new();
        lex.next_gen = opened.max_gen + 1;
        lex.segs = opened.kept.into_iter().map(Seg::new).collect();
        lex.dropped = opened.rejected as u64;
        Ok((lex, opened.files))
    }

    /// After a replay: `live_in(first, last)` counts the live slices in a
    /// range and `live(id)` tells one; every segment document no longer live
    /// becomes deleted.
    pub fn settle(&mut self, live_in: &dyn Fn(u64, u64) -> usize, live: &dyn Fn(u64) -> bool) {
        for s in &mut self.segs {
            let f = s.file.clone();
            // Every live slice in the range is in the segment: equal counts
            // mean nothing of it was deleted.
            if live_in(f.first_id, f.last_id) >= f.docs {
                continue;
            }
            for ord in 0..f.docs {
                if !live(f.id(ord)) {
                    s.kill(ord);
                }
            }
        }
    }

    /// Write each segment (name, id range, documents) with its deleted
    /// documents to a checkpoint. The tail is not saved: it is filled from
    /// the log, as on any open.
    pub fn save(&self, p: &mut Put) {
        p.u64(self.segs.len() as u64);
        for s in &self.segs {
            p.bytes(s.file.name.as_bytes());
            p.u64(s.file.first_id);
            p.u64(s.file.last_id);
            p.u64(s.file.docs as u64);
            p.u64s(if s.dead_docs > 0 { &s.dead } else { &[] });
        }
    }

    /// Take back the deletions [`Lex::save`] wrote for the segments that are
    /// still there, the same files; returns their names. A segment it names
    /// that is gone is a hole, rebuilt from the log as on any open.
    pub fn restore(&mut self, t: &mut Take<'_>) -> Option<std::collections::HashSet<String>> {
        let n = t.u64()?;
        let mut known = std::collections::HashSet::new();
        for _ in 0..n {
            let name = String::from_utf8_lossy(t.bytes()?).into_owned();
            let (first, last, docs) = (t.u64()?, t.u64()?, t.u64()?);
            let words = t.u64s()?;
            let Some(s) = self.segs.iter_mut().find(|s| {
                s.file.name == name
                    && s.file.first_id == first
                    && s.file.last_id == last
                    && s.file.docs as u64 == docs
            }) else {
                continue;
            };
            if !words.is_empty() && words.len() != s.dead.len() {
                return None;
            }
            for (w, &bits) in words.iter().enumerate().filter(|(_, &b)| b != 0) {
                for b in 0..64 {
                    let ord = w * 64 + b;
                    if bits & (1 << b) != 0 && ord < s.file.docs {
                        s.kill(ord);
                    }
                }
            }
            known.insert(name);
        }
        Some(known)
    }

    /// [`Lex::settle`] for the segments not in `known` only.
    pub fn settle_others(
        &mut self,
        known: &std::collections::HashSet<String>,
        live_in: &dyn Fn(u64, u64) -> usize,
        live: &dyn Fn(u64) -> bool,
    ) {
        for s in self
            .segs
            .iter_mut()
            .filter(|s| !known.contains(&s.file.name))
        {
            let f = s.file.clone();
            if live_in(f.first_id, f.last_id) >= f.docs - s.dead_docs {
                continue;
            }
            for ord in 0..f.docs {
                if !live(f.id(ord)) {
                    s.kill(ord);
                }
            }
        }
    }

    /// The index's state beyond its tail as text (for tests): each
    /// segment with its deletions.
    pub fn digest(&self) -> String {
        let segs: Vec<_> = self
            .segs
            .iter()
            .map(|s| {
                let dead: Vec<usize> = (0..s.file.docs).filter(|&o| s.is_dead(o)).collect();
                (
                    &s.file.name,
                    s.file.first_id,
                    s.file.last_id,
                    dead,
                    s.dead_len,
                )
            })
            .collect();
        let tail: Vec<u64> = self
            .tail
            .docs
            .iter()
            .filter(|d| !d.gone)
            .map(|d| d.id)
            .collect();
        format!("lex segments {segs:?} tail {tail:?}")
    }

    /// The segment whose range holds `id`.
    fn seg_of(&self, id: u64) -> Option<usize> {
        let i = self.segs.partition_point(|s| s.file.last_id < id);
        self.segs
            .get(i)
            .filter(|s| s.file.first_id <= id)
            .map(|_| i)
    }

    /// Ranges of ids above `after`, up to `upto`, that no segment covers.
    fn holes(&self, after: u64, upto: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut from = after.saturating_add(1);
        for s in &self.segs {
            if s.file.last_id < from {
                continue;
            }
            if s.file.first_id > from {
                out.push((from, (s.file.first_id - 1).min(upto)));
            }
            from = s.file.last_id.saturating_add(1);
            if from > upto {
                break;
            }
        }
        if from <= upto {
            out.push((from, upto));
        }
        out.retain(|r| r.0 <= r.1);
        out
    }

    fn top_covered(&self) -> u64 {
        self.segs.last().map_or(0, |s| s.file.last_id)
    }

    /// Delete slice `id` of pool namespace `ns` wherever it is indexed.
    pub fn remove(&mut self, id: u64, ns: u32) {
        if self.tail.remove(id) {
            return;
        }
        if let Some(i) = self.seg_of(id) {
            let s = &mut self.segs[i];
            if let Some(ord) = s.file.ord_of(id, ns) {
                s.kill(ord);
            }
        }
    }

    /// Add slices (ascending ids above every one indexed) to the tail.
    fn add(&mut self, docs: Vec<Doc>) {
        for d in docs {
            if d.id <= self.scanned_upto {
                continue;
            }
            if d.id <= self.top_covered() {
                self.tail_has_holes = true;
            }
            self.scanned_upto = d.id;
            self.tail.add(d);
        }
    }

    pub fn file_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.file.file_bytes()).sum()
    }

    /// Bytes of segment files per slice they hold, for the budget.
    pub fn bytes_per_doc(&self) -> u64 {
        let docs: usize = self.segs.iter().map(|s| s.file.docs).sum();
        self.file_bytes().checked_div(docs as u64).unwrap_or(0)
    }

    pub fn stats(&self) -> LexicalStats {
        LexicalStats {
            segments: self.segs.len() as u64,
            segment_docs: self.segs.iter().map(|s| s.file.docs as u64).sum(),
            tail_docs: self.tail.live as u64,
            bytes: self.file_bytes(),
        }
    }

    /// The `k` best slices for `query` among namespace `ns` (all when
    /// `None`), best first, as (id, BM25 score); ties go to the smaller id.
    /// The query's function words ([`crate::lexical::STOPWORDS`]) count only
    /// when it has no other term.
    pub fn search(&self, query: &str, k: usize, ns: Option<u32>) -> Vec<(u64, f32)> {
        let mut qterms: Vec<String> = Vec::new();
        let mut function: Vec<String> = Vec::new();
        for_each_term(query, |t| {
            let list = if crate::lexical::is_stopword(t) {
                &mut function
            } else {
                &mut qterms
            };
            let t = stem(t);
            if !list.iter().any(|q| q == t) {
                list.push(t.to_string());
            }
        });
        if qterms.is_empty() {
            qterms = function;
        }
        let live: usize = self
            .segs
            .iter()
            .map(|s| s.file.docs - s.dead_docs)
            .sum::<usize>()
            + self.tail.live;
        if k == 0 || live == 0 || qterms.is_empty() {
            return Vec::new();
        }
        let total: u64 = self
            .segs
            .iter()
            .map(|s| s.file.total_len - s.dead_len)
            .sum::<u64>()
            + self.tail.total_len;
        let n = live as f32;
        let avg = (total as f32 / n).max(1.0);
        // Each term's postings in each segment, and its idf over the pool.
        let infos: Vec<Vec<Option<TermInfo>>> = self
            .segs
            .iter()
            .map(|s| qterms.iter().map(|t| s.file.lookup(t.as_bytes())).collect())
            .collect();
        let idf: Vec<f32> = qterms
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let df = infos
                    .iter()
                    .filter_map(|x| x[i])
                    .map(|x| u64::from(x.df))
                    .sum::<u64>()
                    + self.tail.df(t);
                let df = (df as f32).min(n);
                if df == 0.0 {
                    0.0
                } else {
                    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
                }
            })
            .collect();
        let score = |idf: f32, tf: u32, len: u32| {
            let tf = tf as f32;
            idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len as f32 / avg))
        };
        let mut best = Top::new(k);
        for (s, infos) in self.segs.iter().zip(&infos) {
            let Some((lo, hi)) = s.file.range(ns) else {
                continue;
            };
            max_score(s, infos, &idf, lo, hi, &score, &mut best);
        }
        let t = &self.tail;
        let mut acc: HashMap<u32, f32> = HashMap::new();
        for (q, &idf) in qterms.iter().zip(&idf) {
            let Some(&tid) = t.tid.get(q.as_str()) else {
                continue;
            };
            for &(slot, tf) in &t.postings[tid as usize] {
                let d = &t.docs[slot as usize];
                if d.gone || ns.is_some_and(|g| g != d.ns) {
                    continue;
                }
                *acc.entry(slot).or_insert(0.0) += score(idf, tf, d.len);
            }
        }
        for (slot, s) in acc {
            best.offer(s, t.docs[slot as usize].id);
        }
        best.into_sorted()
            .into_iter()
            .map(|(score, id)| (id, score))
            .collect()
    }

    /// The next maintenance job, if any. `over_budget`: rewrite any segment
    /// with deleted slices, to free their bytes.
    fn next_job(&self, over_budget: bool) -> Option<Job> {
        if let Some(s) = self.segs.iter().max_by_key(|s| s.dead_docs) {
            if s.dead_docs * 2 > s.file.docs || (over_budget && s.dead_docs > 0) {
                return Some(Job::Vacuum {
                    name: s.file.name.clone(),
                });
            }
        }
        // FANIN neighbours of one level: merging only neighbours keeps
        // every live slice of a segment's range inside it.
        for level in 0..MAX_LEVEL {
            let mut run: Vec<&Seg> = Vec::new();
            for s in &self.segs {
                if s.file.level == level {
                    run.push(s);
                    if run.len() == FANIN {
                        return Some(Job::Merge {
                            names: run.iter().map(|s| s.file.name.clone()).collect(),
                            level: level + 1,
                        });
                    }
                } else {
                    run.clear();
                }
            }
        }
        if !self.tail_has_holes && self.tail.live >= self.tuning.seal_docs.max(1) {
            return Some(Job::Seal);
        }
        None
    }

    fn prepare(&self, job: &Job) -> Prepared {
        let gen = self.next_gen;
        match job {
            Job::Seal => {
                let upto = self.tail.last_id().unwrap_or(0);
                Prepared::of_tail(&self.tail, gen, Some(upto))
            }
            Job::Merge { names, level } => self.gather(names, *level, gen),
            Job::Vacuum { name } => {
                let level = self
                    .segs
                    .iter()
                    .find(|s| &s.file.name == name)
                    .map_or(0, |s| s.file.level);
                self.gather(std::slice::from_ref(name), level, gen)
            }
        }
    }

    fn gather(&self, names: &[String], level: u32, gen: u64) -> Prepared {
        let srcs: Vec<&Seg> = self
            .segs
            .iter()
            .filter(|s| names.contains(&s.file.name))
            .collect();
        let range = (
            srcs.iter().map(|s| s.file.first_id).min().unwrap_or(0),
            srcs.iter().map(|s| s.file.last_id).max().unwrap_or(0),
        );
        Prepared {
            source: Source::Segments(
                srcs.iter()
                    .map(|s| (s.file.clone(), s.dead.clone()))
                    .collect(),
            ),
            replaces: srcs.iter().map(|s| s.file.name.clone()).collect(),
            level,
            tail_upto: None,
            range,
            gen,
        }
    }

    /// Install a built segment; returns the files to delete.
    fn install(&mut self, built: Built) -> Vec<String> {
        if let Some(upto) = built.tail_upto {
            self.tail.retain(|id| id > upto);
        }
        let mut gone = Vec::new();
        for name in &built.replaces {
            if let Some(pos) = self.segs.iter().position(|s| &s.file.name == name) {
                gone.push(self.segs.remove(pos).file.name.clone());
            }
        }
        // Deletes wait on the maintenance lock that the build held.
        if let Some(seg) = built.seg {
            self.next_gen = self.next_gen.max(seg.gen + 1);
            self.segs.push(Seg::new(seg));
            self.segs.sort_by_key(|s| s.file.first_id);
        }
        gone
    }
}

impl Default for Lex {
    fn default() -> Lex {
        Lex::new()
    }
}

/// Keep the `k` best of `hits`, best first; ties to the smaller id.
/// Offer `best` every live document of segment `s` in `[lo, hi)` that can be among
/// its best, scored exactly as a full scan would (each term's part added in query
/// order), by MaxScore: the query's terms sorted by the most any one posting can add
/// (`idf * (K1 + 1)`); the cheapest terms whose bounds together cannot reach the
/// current threshold only confirm documents the others found, by seeking, and a
/// document is dropped as soon as what it holds plus what is left to look at falls
/// below the threshold.
fn max_score(
    s: &Seg,
    infos: &[Option<TermInfo>],
    idf: &[f32],
    lo: usize,
    hi: usize,
    score: &dyn Fn(f32, u32, u32) -> f32,
    best: &mut Top,
) {
    // A bound a hair above the most a posting can add, against rounding.
    let bound = |idf: f32| idf * (K1 + 1.0) * (1.0 + 1e-4) + 1e-6;
    let mut terms: Vec<(usize, f32, PostingCursor<'_>)> = infos
        .iter()
        .enumerate()
        .filter_map(|(q, info)| {
            let w = PostingCursor::new(&s.file, (*info)?, lo, hi);
            (w.doc != END).then(|| (q, bound(idf[q]), w))
        })
        .collect();
    if terms.is_empty() {
        return;
    }
    terms.sort_by(|a, b| a.1.total_cmp(&b.1));
    // below[j]: the bounds of terms[..j] together.
    let mut below = vec![0f32; terms.len() + 1];
    for (j, t) in terms.iter().enumerate() {
        below[j + 1] = below[j] + t.1;
    }
    let mut part = vec![0f32; idf.len()];
    loop {
        let theta = best.threshold();
        // terms[..e] cannot reach the threshold on their own.
        let e = below.partition_point(|&b| b < theta).saturating_sub(1);
        if e >= terms.len() {
            return;
        }
        let d = terms[e..].iter().map(|t| t.2.doc).min().unwrap_or(END);
        if d == END {
            return;
        }
        let len = s.file.len(d);
        let mut held = 0f32;
        for t in &mut terms[e..] {
            if t.2.doc == d {
                let c = score(idf[t.0], t.2.tf, len);
                part[t.0] = c;
                held += c;
                t.2.next();
            }
        }
        let mut dropped = false;
        for j in (0..e).rev() {
            if held + below[j + 1] < theta {
                dropped = true;
                break;
            }
            let t = &mut terms[j];
            t.2.seek(d);
            if t.2.doc == d {
                let c = score(idf[t.0], t.2.tf, len);
                part[t.0] = c;
                held += c;
            }
        }
        if !dropped && !s.is_dead(d) {
            let total = part.iter().fold(0f32, |a, &c| a + c);
            best.offer(total, s.file.id(d));
        }
        part.iter_mut().for_each(|c| *c = 0.0);
    }
}

impl Prepared {
    /// A seal of every live document of `tail` (`upto`: drop them from the
    /// pool's tail once installed; `None` for a rebuilt hole).
    fn of_tail(tail: &Tail, gen: u64, tail_upto: Option<u64>) -> Prepared {
        let mut order: Vec<usize> = (0..tail.docs.len())
            .filter(|&i| !tail.docs[i].gone)
            .collect();
        order.sort_by_key(|&i| (tail.docs[i].ns, tail.docs[i].id));
        let mut ord_of = vec![u32::MAX; tail.docs.len()];
        for (o, &i) in order.iter().enumerate() {
            ord_of[i] = o as u32;
        }
        let docs: Vec<(u64, u32, u32)> = order
            .iter()
            .map(|&i| (tail.docs[i].id, tail.docs[i].ns, tail.docs[i].len))
            .collect();
        let mut tids: Vec<u32> = (0..tail.names.len() as u32).collect();
        tids.sort_by(|a, b| tail.names[*a as usize].cmp(&tail.names[*b as usize]));
        let terms = tids
            .into_iter()
            .map(|t| {
                let mut p: Vec<(u32, u32)> = tail.postings[t as usize]
                    .iter()
                    .filter(|(slot, _)| ord_of[*slot as usize] != u32::MAX)
                    .map(|&(slot, tf)| (ord_of[slot as usize], tf))
                    .collect();
                p.sort_unstable();
                (tail.names[t as usize].clone(), p)
            })
            .collect();
        let range = (
            docs.iter().map(|d| d.0).min().unwrap_or(0),
            docs.iter().map(|d| d.0).max().unwrap_or(0),
        );
        Prepared {
            source: Source::Docs { docs, terms },
            replaces: Vec::new(),
            level: 0,
            tail_upto,
            range,
            gen,
        }
    }

    /// Write the segment file durably and map it. `ns_name` names the
    /// pool's namespaces.
    fn build(self, dir: &dyn Dir, ns_name: &dyn Fn(u32) -> String) -> io::Result<Built> {
        let Prepared {
            source,
            replaces,
            level,
            tail_upto,
            range,
            gen,
        } = self;
        let empty = Built {
            seg: None,
            replaces: replaces.clone(),
            tail_upto,
        };
        let (bytes, names) = match source {
            Source::Docs { docs, terms } => {
                if docs.is_empty() {
                    return Ok(empty);
                }
                let mut it = terms.into_iter().map(|(t, p)| (t.as_bytes().to_vec(), p));
                encode_segment(&docs, gen, level, range, ns_name, &mut || it.next())
            }
            Source::Segments(srcs) => {
                // Live documents of every source, in (namespace, id) order.
                let mut all: Vec<(u32, u64, usize, usize)> = Vec::new();
                for (si, (f, dead)) in srcs.iter().enumerate() {
                    for l in 0..f.ns_global.len() {
                        for ord in f.ns_start[l]..f.ns_start[l + 1] {
                            if dead[ord / 64] & (1 << (ord % 64)) == 0 {
                                all.push((f.ns_global[l], f.id(ord), si, ord));
                            }
                        }
                    }
                }
                if all.is_empty() {
                    return Ok(empty);
                }
                all.sort_unstable_by_key(|x| (x.0, x.1));
                let mut remap: Vec<Vec<u32>> =
                    srcs.iter().map(|(f, _)| vec![u32::MAX; f.docs]).collect();
                let docs: Vec<(u64, u32, u32)> = all
                    .iter()
                    .enumerate()
                    .map(|(new, &(g, id, si, ord))| {
                        remap[si][ord] = new as u32;
                        (id, g, srcs[si].0.len(ord))
                    })
                    .collect();
                drop(all);
                let mut cursors: Vec<(Cursor<'_>, Option<TermInfo>)> = srcs
                    .iter()
                    .map(|(f, _)| {
                        let mut c = Cursor::at_block(f, 0);
                        let info = c.advance();
                        (c, info)
                    })
                    .collect();
                let mut next = || {
                    let term = cursors
                        .iter()
                        .filter(|c| c.1.is_some())
                        .map(|c| c.0.term.clone())
                        .min()?;
                    let mut p: Vec<(u32, u32)> = Vec::new();
                    for (si, (c, info)) in cursors.iter_mut().enumerate() {
                        let Some(i) = *info else { continue };
                        if c.term != term {
                            continue;
                        }
                        let map = &remap[si];
                        c.seg.postings(i, 0, usize::MAX, |doc, tf| {
                            if map[doc] != u32::MAX {
                                p.push((map[doc], tf));
                            }
                        });
                        *info = c.advance();
                    }
                    p.sort_unstable();
                    Some((term, p))
                };
                encode_segment(&docs, gen, level, range, ns_name, &mut next)
            }
        };
        let name = format!("{LEX_PREFIX}{gen:08}{LEX_SUFFIX}");
        let map = super::segfile::write(dir, &name, &bytes)?;
        let mut intern = |n: &str| names.iter().find(|x| x.0 == n).map_or(u32::MAX, |x| x.1);
        let seg = SegFile::parse(&name, map, true, &mut intern).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the lexical segment just written reads back wrong: {why}"),
            )
        })?;
        Ok(Built {
            seg: Some(seg),
            replaces,
            tail_upto,
        })
    }
}

// ---- the pool's side ------------------------------------------------------

/// Map the lexical segments of `dir` into `state`, after its replay: what the
/// log no longer holds is deleted.
pub(super) fn open_into(state: &mut State, dir: &dyn Dir, writer: bool) -> io::Result<()> {
    let (mut lex, _) = Lex::open(dir, writer, &mut |n| state.intern(n))?;
    lex.settle(&|a, b| state.live_range(a, b).count(), &|id| {
        state.contains(id)
    });
    state.lex = lex;
    Ok(())
}

/// Slices read from the log per step when filling the index.
const CATCH_UP_BATCH: usize = 1024;

impl Pool {
    /// The `k` best slices for `query` by BM25 in `scope`, best first, as
    /// (id, score). Deleted and evicted slices are never returned.
    pub fn lexical_search(
        &self,
        query: &str,
        k: usize,
        scope: Scope<'_>,
    ) -> Result<Vec<(u64, f32)>> {
        self.auto_refresh()?;
        self.lex_catch_up(None)?;
        let s = self.read();
        let Some(ns) = s.scope(scope.name()) else {
            return Ok(Vec::new());
        };
        Ok(s.lex.search(query, k, ns))
    }

    /// The lexical index at a glance.
    pub fn lexical_stats(&self) -> LexicalStats {
        let _ = self.auto_refresh();
        let _ = self.lex_catch_up(None);
        self.read().lex.stats()
    }

    /// What this writer's open rebuilt of the lexical index from the log:
    /// `None` when nothing was missing (a small unsealed tail aside).
    pub fn lexical_rebuilt(&self) -> Option<Rebuilt> {
        self.read().lex.rebuilt.clone()
    }

    /// Slices that this read-only handle indexed from the log because no
    /// segment holds them (an older pool, or a missing or damaged segment
    /// that the next writer rebuilds).
    pub fn lexical_unsealed(&self) -> u64 {
        self.read().lex.tail.live as u64
    }

    /// Change the lexical index's shape (tests: small seals).
    #[doc(hidden)]
    pub fn set_lexical_tuning(&self, tuning: Tuning) {
        self.write_state().lex.tuning = tuning;
    }

    /// Add an appended batch (already committed, ids from `first`) to the tail.
    pub(super) fn lex_appended(&self, batch: &[(NewSlice, Vec<f32>)], first: u64) {
        let ns: Vec<u32> = {
            let s = self.read();
            if s.lex.scanned_upto + 1 != first {
                return;
            }
            batch
                .iter()
                .map(|(n, _)| s.ns_number(&n.namespace).unwrap_or(u32::MAX))
                .collect()
        };
        let docs: Vec<Doc> = batch
            .iter()
            .zip(ns)
            .enumerate()
            .map(|(i, ((n, _), g))| Doc::analyze(first + i as u64, g, &n.text))
            .collect();
        // Never beside a catch-up, which may be reading these same slices
        // from the log (and sealing what it read) on the maintenance thread.
        let filling = self.read().lex.filling.clone();
        let _one = filling.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = self.write_state();
        // Only when everything before is indexed; otherwise the next
        // catch-up reads these from the log.
        if docs.first().is_some_and(|d| d.id == s.lex.scanned_upto + 1) {
            s.lex.add(docs);
        }
    }

    /// Read every live slice that neither a segment nor the tail holds from
    /// the log into the index. A writer builds a segment for each hole
    /// below the top of the segments' ranges (and reports it); the rest
    /// goes to the tail.
    pub(super) fn lex_catch_up(&self, mut writer: Option<&mut Maint>) -> Result<()> {
        let filling = self.read().lex.filling.clone();
        let _one = filling.lock().unwrap_or_else(|p| p.into_inner());
        let (holes, upto) = {
            let s = self.read();
            let upto = s.next_id.saturating_sub(1);
            if s.lex.scanned_upto >= upto {
                return Ok(());
            }
            (s.lex.holes(s.lex.scanned_upto, upto), upto)
        };
        let mut from_log = 0u64;
        for (a, b) in holes {
            let ids: Vec<(u64, u32)> = self.read().live_range(a, b).map(|e| (e.id, e.ns)).collect();
            let below = {
                let s = self.read();
                b < s.lex.top_covered()
            };
            let per = CATCH_UP_BATCH.max(self.read().lex.tuning.seal_docs);
            for chunk in ids.chunks(per) {
                let docs = self.lex_read(chunk)?;
                from_log += docs.len() as u64;
                if writer.is_some() && below {
                    // A hole: its own segment, so that no range overlaps.
                    let mut t = Tail::default();
                    for d in docs {
                        t.add(d);
                    }
                    let (gen, names) = {
                        let mut s = self.write_state();
                        let g = s.lex.next_gen;
                        s.lex.next_gen += 1;
                        (g, s.namespaces_all().to_vec())
                    };
                    let built = Prepared::of_tail(&t, gen, None).build(&*self.dir, &|g| {
                        names.get(g as usize).cloned().unwrap_or_default()
                    });
                    match built {
                        Ok(b) => {
                            self.write_state().lex.install(b);
                        }
                        Err(e) => {
                            // Searchable from the tail until a writer rebuilds it.
                            let mut s = self.write_state();
                            s.lex.tail_has_holes = true;
                            let mut rest: Vec<Doc> = Vec::new();
                            for d in t.docs.iter().filter(|d| !d.gone) {
                                rest.push(Doc {
                                    id: d.id,
                                    ns: d.ns,
                                    len: d.len,
                                    terms: d
                                        .terms
                                        .iter()
                                        .map(|&(tid, tf)| (t.names[tid as usize].clone(), tf))
                                        .collect(),
                                });
                            }
                            for d in rest {
                                s.lex.tail.add(d);
                            }
                            return Err(self.write_error("write a lexical segment", e));
                        }
                    }
                } else {
                    let mut s = self.write_state();
                    for d in docs {
                        // Deleted meanwhile: not indexed.
                        if s.contains(d.id) && s.lex.tail.slot(d.id).is_none() {
                            if d.id <= s.lex.top_covered() {
                                s.lex.tail_has_holes = true;
                            }
                            s.lex.tail.add(d);
                        }
                    }
                }
                if let Some(w) = writer.as_deref_mut() {
                    // Seal as the tail fills, so that a rebuild holds one
                    // segment's worth in memory at a time.
                    self.lex_jobs(w, false)?;
                }
            }
        }
        let mut s = self.write_state();
        s.lex.scanned_upto = s.lex.scanned_upto.max(upto);
        if writer.is_some() && (from_log >= s.lex.tuning.seal_docs as u64 || s.lex.dropped > 0) {
            let dropped = s.lex.dropped;
            let r = s.lex.rebuilt.get_or_insert_with(Rebuilt::default);
            r.slices += from_log;
            r.dropped = dropped;
        }
        Ok(())
    }

    /// The terms of slices `ids` (with their namespaces), read from the log.
    fn lex_read(&self, ids: &[(u64, u32)]) -> Result<Vec<Doc>> {
        let mut out = Vec::with_capacity(ids.len());
        for &(id, ns) in ids {
            let rec = { self.read().read_record(id) };
            let Some(rec) = rec else { continue };
            let rec = rec.map_err(|e| self.corrupt(e.to_string()))?;
            let text = self.text_of(&rec)?;
            out.push(Doc::analyze(id, ns, &text));
        }
        Ok(out)
    }

    /// Keep the lexical index in shape (the writer, after each write).
    pub(super) fn maintain_lexical(&self, w: &mut Maint) -> Result<()> {
        self.lex_catch_up(Some(&mut *w))?;
        let over = {
            let s = self.read();
            s.bytes_on_disk() > s.budget
        };
        self.lex_jobs(w, over)
    }

    fn lex_jobs(&self, _w: &mut Maint, over: bool) -> Result<()> {
        loop {
            let (prepared, names) = {
                let s = self.read();
                if s.lex.tail.live < s.lex.retry_at {
                    return Ok(());
                }
                let Some(job) = s.lex.next_job(over) else {
                    return Ok(());
                };
                (s.lex.prepare(&job), s.namespaces_all().to_vec())
            };
            let built = prepared.build(&*self.dir, &|g| {
                names.get(g as usize).cloned().unwrap_or_default()
            });
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    let mut s = self.write_state();
                    s.lex.retry_at = s.lex.tail.live + s.lex.tuning.seal_docs / 4;
                    return Err(self.write_error("write a lexical segment", e));
                }
            };
            let gone = {
                let mut s = self.write_state();
                s.lex.retry_at = 0;
                s.lex.install(built)
            };
            for name in gone {
                self.dir
                    .remove(&name)
                    .map_err(|e| self.write_error("remove a merged lexical segment", e))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::storage::MemDir;

    fn tail_of(texts: &[(u64, u32, &str)]) -> Lex {
        let mut lex = Lex::new();
        lex.add(
            texts
                .iter()
                .map(|&(id, ns, t)| Doc::analyze(id, ns, t))
                .collect(),
        );
        lex
    }

    /// The same documents sealed into segments of `per` documents each.
    fn sealed(texts: &[(u64, u32, &str)], per: usize) -> Lex {
        let dir = MemDir::new();
        let mut lex = Lex::new();
        for chunk in texts.chunks(per) {
            lex.add(
                chunk
                    .iter()
                    .map(|&(id, ns, t)| Doc::analyze(id, ns, t))
                    .collect(),
            );
            let p = lex.prepare(&Job::Seal);
            let b = p.build(&dir, &|g| format!("ns{g}")).unwrap();
            lex.install(b);
        }
        lex
    }

    fn corpus() -> Vec<(u64, u32, String)> {
        let words = [
            "port", "server", "falcon", "pasta", "lunch", "cats", "dog", "api", "kernel", "memory",
            "page", "fault", "8080", "東", "京",
        ];
        (1..=700u64)
            .map(|i| {
                let mut t = String::new();
                for j in 0..(3 + i % 7) {
                    t.push_str(words[((i * 7 + j * 13) % words.len() as u64) as usize]);
                    t.push(' ');
                }
                if i % 50 == 0 {
                    t.push_str(" zebra");
                }
                (i, (i % 3) as u32, t)
            })
            .collect()
    }

    #[test]
    fn segments_score_exactly_as_the_tail() {
        let c = corpus();
        let texts: Vec<(u64, u32, &str)> = c.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
        let tail = tail_of(&texts);
        let segs = sealed(&texts, 150);
        assert_eq!(segs.segs.len(), 5);
        for q in [
            "port server",
            "zebra cats",
            "東京 api",
            "dogs 8080 falcon",
            "nothing",
        ] {
            for ns in [None, Some(0), Some(2), Some(9)] {
                let a = tail.search(q, 25, ns);
                let b = segs.search(q, 25, ns);
                assert_eq!(a.len(), b.len(), "{q} {ns:?}");
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.0, y.0, "{q} {ns:?}");
                    assert!((x.1 - y.1).abs() < 1e-5);
                }
                if let Some(g) = ns {
                    let by_id: HashMap<u64, u32> = texts.iter().map(|t| (t.0, t.1)).collect();
                    assert!(b.iter().all(|h| by_id[&h.0] == g));
                }
            }
        }
        let z = segs.search("zebra", 100, None);
        assert_eq!(z.len(), 14, "every slice with the rare term");
    }

    #[test]
    fn pruned_search_returns_what_a_full_scan_returns() {
        // Long lists (many skip blocks), a skewed vocabulary, small k: the cases in
        // which MaxScore skips the most. The tail scores every posting.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let texts: Vec<(u64, u32, String)> = (1..=6000u64)
            .map(|i| {
                let words: Vec<String> = (0..3 + rand(40))
                    .map(|_| {
                        // Word w with probability about 1/(w+1): a few very common.
                        let r = rand(400) + 1;
                        let w = rand(r);
                        format!("w{w}")
                    })
                    .collect();
                (i, (i % 4) as u32, words.join(" "))
            })
            .collect();
        let texts: Vec<(u64, u32, &str)> =
            texts.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
        let tail = tail_of(&texts);
        let segs = sealed(&texts, 2500);
        assert_eq!(segs.segs.len(), 3);
        let mut checked = 0;
        for q in 0..200 {
            let query: Vec<String> = (0..1 + q % 6).map(|_| format!("w{}", rand(300))).collect();
            let query = query.join(" ");
            for k in [1, 3, 10] {
                for ns in [None, Some(1)] {
                    let a = tail.search(&query, k, ns);
                    let b = segs.search(&query, k, ns);
                    assert_eq!(a, b, "{query:?} k={k} {ns:?}");
                    checked += a.len();
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn merges_keep_every_live_document_and_drop_deleted_ones() {
        let c = corpus();
        let texts: Vec<(u64, u32, &str)> = c.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
        let mut segs = sealed(&texts, 100);
        segs.remove(50, 2);
        segs.remove(100, 1);
        let before = segs.search("zebra", 100, None);
        assert!(before.iter().all(|h| h.0 != 50 && h.0 != 100));
        let dir = MemDir::new();
        let names: Vec<String> = segs.segs.iter().map(|s| s.file.name.clone()).collect();
        let p = segs.gather(&names, 1, 99);
        let b = p.build(&dir, &|g| format!("ns{g}")).unwrap();
        segs.install(b);
        assert_eq!(segs.segs.len(), 1);
        assert_eq!(segs.segs[0].file.docs, 698);
        let after = segs.search("zebra", 100, None);
        assert_eq!(
            before.iter().map(|h| h.0).collect::<Vec<_>>(),
            after.iter().map(|h| h.0).collect::<Vec<_>>()
        );
        // Long lists with skip entries, entered in the middle of a namespace.
        let ns1 = segs.search("port", 1000, Some(1));
        let tail = tail_of(
            &texts
                .iter()
                .copied()
                .filter(|t| t.0 != 50 && t.0 != 100)
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            ns1.iter().map(|h| h.0).collect::<Vec<_>>(),
            tail.search("port", 1000, Some(1))
                .iter()
                .map(|h| h.0)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_damaged_segment_is_not_read() {
        let dir = MemDir::new();
        let mut lex = tail_of(&[(1, 0, "alpha beta"), (2, 0, "beta gamma")]);
        let b = lex
            .prepare(&Job::Seal)
            .build(&dir, &|_| "a".into())
            .unwrap();
        lex.install(b);
        let name = lex.segs[0].file.name.clone();
        let (ok, files) = Lex::open(&dir, false, &mut |_| 0).unwrap();
        assert_eq!((ok.segs.len(), files.len()), (1, 1));
        let f = dir.open(&name, false).unwrap();
        let mut b = vec![0u8; 1];
        f.read_at(100, &mut b).unwrap();
        f.write_at(100, &[b[0] ^ 0x40]).unwrap();
        let (bad, files) = Lex::open(&dir, true, &mut |_| 0).unwrap();
        assert!(bad.segs.is_empty() && files.is_empty());
        assert_eq!(bad.dropped, 1);
        assert!(!dir.exists(&name), "a writer deletes it");
    }

    #[test]
    fn ranks_the_matching_document_first() {
        let ix = tail_of(&[
            (1, 0, "the port of the api server is 8080"),
            (2, 0, "we decided to call the project falcon"),
            (3, 0, "lunch was pasta again"),
        ]);
        let hits = ix.search("which port does the API use?", 3, None);
        assert_eq!(hits[0].0, 1);
        assert!(hits.iter().all(|h| h.0 != 3), "no shared term, no hit");
        assert_eq!(ix.search("FALCON", 1, None)[0].0, 2);
    }

    #[test]
    fn a_plural_finds_its_singular() {
        let ix = tail_of(&[(1, 0, "the cat sat on the mat"), (2, 0, "dogs bark")]);
        assert_eq!(ix.search("Cats", 1, None)[0].0, 1);
        assert_eq!(ix.search("dog", 1, None)[0].0, 2);
    }

    #[test]
    fn removed_documents_are_not_found() {
        let mut ix = tail_of(&[(1, 0, "alpha beta"), (2, 0, "beta gamma")]);
        ix.remove(1, 0);
        assert!(ix.search("alpha", 5, None).is_empty());
        assert_eq!(ix.search("beta", 5, None).len(), 1);
        ix.remove(42, 0);
        assert_eq!(ix.stats().tail_docs, 1);
    }

    #[test]
    fn rarer_terms_weigh_more() {
        let mut docs: Vec<(u64, u32, &str)> =
            (1..=10).map(|i| (i, 0, "common words here")).collect();
        docs.push((100, 0, "common zebra"));
        docs.push((101, 0, "common common common"));
        assert_eq!(tail_of(&docs).search("common zebra", 1, None)[0].0, 100);
    }

    #[test]
    fn varints_round_trip_and_refuse_garbage() {
        let mut b = Vec::new();
        for x in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            b.clear();
            put_varint(&mut b, x);
            let mut pos = 0;
            assert_eq!(varint(&b, &mut pos), Some(x));
            assert_eq!(pos, b.len());
        }
        assert_eq!(varint(&[0x80, 0x80], &mut 0), None);
        assert_eq!(varint(&[0xff; 11], &mut 0), None);
    }
}
