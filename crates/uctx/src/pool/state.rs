//! The pool's in-memory state, rebuilt by replaying the log (or loaded from
//! the checkpoint, then the log after it): a compact table of live slices
//! (20 bytes each, sorted by id), the namespaces, and the vector index
//! ([`Ann`]). Text, time and external ids stay in the log and are read from
//! it on demand.

use std::collections::HashMap;
use std::sync::Arc;

use super::ann::{Ann, Row};
use super::checkpoint::{Put, Take};
use super::format::{self, Rec, SliceRec, RECORD_HEADER};
use super::lex::Lex;
use super::replay::{Damage, TornTail, Walk};
use super::storage::Storage;
use crate::slice::{SliceMeta, Source};
use crate::witness::Standing;

/// A zstd dictionary, raw and prepared for decompression.
pub struct Dict {
    pub raw: Vec<u8>,
    pub decoder: zstd::dict::DecoderDictionary<'static>,
}

const PINNED: u8 = 1;
const DEAD: u8 = 2;
/// A turn the table's 32 bits cannot hold: read it from the record.
const TURN_IN_RECORD: u32 = u32::MAX;
/// Bits of the flags byte that hold the source.
const SOURCE_SHIFT: u8 = 2;

/// One slice as the table hands it out.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub id: u64,
    pub offset: u64,
    pub bytes: u32,
    pub tokens: u32,
    pub ns: u32,
    /// Salience quantised to 1/255 (the record holds the exact value).
    pub salience: f32,
    /// The turn, or [`TURN_IN_RECORD`] when it does not fit.
    turn: u32,
    flags: u8,
}

impl Entry {
    pub fn pinned(&self) -> bool {
        self.flags & PINNED != 0
    }
    fn dead(&self) -> bool {
        self.flags & DEAD != 0
    }
    fn source(&self) -> u8 {
        self.flags >> SOURCE_SHIFT
    }
    /// The turn, when the table holds it (`None`: read the record).
    pub fn turn(&self) -> Option<u64> {
        (self.turn != TURN_IN_RECORD).then_some(self.turn as u64)
    }
}

/// A run of entries whose ids and offsets are stored as `u32` deltas from
/// the run's first.
#[derive(Clone, Copy, Debug)]
struct Block {
    first: usize,
    id: u64,
    offset: u64,
}

/// Every slice applied, in id order (ids, and so log offsets, increase with
/// position): 24 bytes a slice in columns, ids and offsets as deltas.
#[derive(Default)]
struct Table {
    blocks: Vec<Block>,
    id: Vec<u32>,
    offset: Vec<u32>,
    bytes: Vec<u32>,
    tokens: Vec<u32>,
    turn: Vec<u32>,
    ns: Vec<u16>,
    salience: Vec<u8>,
    flags: Vec<u8>,
}

impl Table {
    fn len(&self) -> usize {
        self.id.len()
    }

    fn block_of(&self, i: usize) -> &Block {
        let b = self.blocks.partition_point(|b| b.first <= i);
        &self.blocks[b - 1]
    }

    fn get(&self, i: usize) -> Entry {
        let b = self.block_of(i);
        Entry {
            id: b.id + self.id[i] as u64,
            offset: b.offset + self.offset[i] as u64,
            bytes: self.bytes[i],
            tokens: self.tokens[i],
            ns: self.ns[i] as u32,
            salience: self.salience[i] as f32 / 255.0,
            turn: self.turn[i],
            flags: self.flags[i],
        }
    }

    /// Append `e`, whose id and offset exceed every entry's.
    fn push(&mut self, e: &Entry) {
        let fits = self.blocks.last().is_some_and(|b| {
            e.id >= b.id
                && e.offset >= b.offset
                && e.id - b.id <= u32::MAX as u64
                && e.offset - b.offset <= u32::MAX as u64
        });
        if !fits {
            self.blocks.push(Block {
                first: self.len(),
                id: e.id,
                offset: e.offset,
            });
        }
        let b = self.blocks[self.blocks.len() - 1];
        self.id.push((e.id - b.id) as u32);
        self.offset.push((e.offset - b.offset) as u32);
        self.bytes.push(e.bytes);
        self.tokens.push(e.tokens);
        self.turn.push(e.turn);
        self.ns.push(e.ns as u16);
        self.salience
            .push((e.salience.clamp(0.0, 1.0) * 255.0).round() as u8);
        self.flags.push(e.flags);
    }

    /// Index of the entry with `id` (live or not).
    fn find(&self, id: u64) -> Option<usize> {
        let b = self.blocks.partition_point(|b| b.id <= id);
        if b == 0 {
            return None;
        }
        let blk = self.blocks[b - 1];
        let end = self.blocks.get(b).map_or(self.len(), |n| n.first);
        let delta = id - blk.id;
        if delta > u32::MAX as u64 {
            return None;
        }
        let run = &self.id[blk.first..end];
        run.binary_search(&(delta as u32))
            .ok()
            .map(|j| blk.first + j)
    }

    /// Index of the first entry with an id of at least `id`.
    fn lower_bound(&self, id: u64) -> usize {
        let b = self.blocks.partition_point(|b| b.id <= id);
        if b == 0 {
            return 0;
        }
        let blk = self.blocks[b - 1];
        let end = self.blocks.get(b).map_or(self.len(), |n| n.first);
        let delta = id - blk.id;
        if delta > u32::MAX as u64 {
            return end;
        }
        let run = &self.id[blk.first..end];
        blk.first + run.partition_point(|&x| x < delta as u32)
    }

    fn last_id(&self) -> Option<u64> {
        (self.len() > 0).then(|| self.get(self.len() - 1).id)
    }

    /// Rebuild from `entries` (in id and offset order).
    fn rebuild(entries: impl Iterator<Item = Entry>) -> Table {
        let mut t = Table::default();
        for e in entries {
            t.push(&e);
        }
        t.shrink();
        t
    }

    /// Write the columns to a checkpoint.
    fn save(&self, p: &mut Put) {
        let firsts: Vec<u64> = self.blocks.iter().map(|b| b.first as u64).collect();
        let ids: Vec<u64> = self.blocks.iter().map(|b| b.id).collect();
        let offsets: Vec<u64> = self.blocks.iter().map(|b| b.offset).collect();
        p.u64s(&firsts);
        p.u64s(&ids);
        p.u64s(&offsets);
        p.u32s(&self.id);
        p.u32s(&self.offset);
        p.u32s(&self.bytes);
        p.u32s(&self.tokens);
        p.u32s(&self.turn);
        p.u16s(&self.ns);
        p.bytes(&self.salience);
        p.bytes(&self.flags);
    }

    /// Read the columns back; `None` when they do not fit together.
    fn load(t: &mut Take<'_>) -> Option<Table> {
        let (firsts, ids, offsets) = (t.u64s()?, t.u64s()?, t.u64s()?);
        let table = Table {
            blocks: Vec::new(),
            id: t.u32s()?,
            offset: t.u32s()?,
            bytes: t.u32s()?,
            tokens: t.u32s()?,
            turn: t.u32s()?,
            ns: t.u16s()?,
            salience: t.bytes()?.to_vec(),
            flags: t.bytes()?.to_vec(),
        };
        let n = table.id.len();
        let columns = [
            table.offset.len(),
            table.bytes.len(),
            table.tokens.len(),
            table.turn.len(),
            table.ns.len(),
            table.salience.len(),
            table.flags.len(),
        ];
        if columns.iter().any(|&c| c != n)
            || ids.len() != firsts.len()
            || offsets.len() != firsts.len()
            || (n > 0) == firsts.is_empty()
        {
            return None;
        }
        let mut table = table;
        for k in 0..firsts.len() {
            let first = usize::try_from(firsts[k]).ok()?;
            let end = match firsts.get(k + 1) {
                Some(&f) => usize::try_from(f).ok()?,
                None => n,
            };
            // Blocks start at 0 and follow each other, none empty; ids
            // increase within and across them (lookups are binary searches).
            if (k == 0 && first != 0) || first >= end || end > n {
                return None;
            }
            let run = &table.id[first..end];
            if run[0] != 0 || run.windows(2).any(|w| w[0] >= w[1]) {
                return None;
            }
            let last = ids[k].checked_add(run[run.len() - 1] as u64)?;
            if ids.get(k + 1).is_some_and(|&next| next <= last) {
                return None;
            }
            table.blocks.push(Block {
                first,
                id: ids[k],
                offset: offsets[k],
            });
        }
        Some(table)
    }

    fn shrink(&mut self) {
        self.blocks.shrink_to_fit();
        self.id.shrink_to_fit();
        self.offset.shrink_to_fit();
        self.bytes.shrink_to_fit();
        self.tokens.shrink_to_fit();
        self.turn.shrink_to_fit();
        self.ns.shrink_to_fit();
        self.salience.shrink_to_fit();
        self.flags.shrink_to_fit();
    }
}

/// Uses and last use of a slice the witness has touched (most never are).
#[derive(Clone, Copy, Debug, Default)]
struct Touch {
    uses: u32,
    last_used_seq: u64,
}

pub struct State {
    pub dim: usize,
    pub log: Arc<dyn Storage>,
    pub identity: u64,
    pub generation: u64,
    /// The log header's creation time (with the generation, which log
    /// this is).
    pub created_ms: u64,
    pub header_len: u64,
    /// End of the last complete record: where the next one goes.
    pub end: u64,
    /// Where the record that ends at `end` starts.
    pub last_record: u64,
    /// The log offset the newest checkpoint covers through (0: none), and
    /// that checkpoint's size: a writer writes the next one when the log has
    /// grown enough past it.
    pub checkpoint_end: u64,
    pub checkpoint_bytes: u64,
    pub next_id: u64,
    pub budget: u64,
    /// Every slice applied, in id order; deleted ones are flagged until
    /// they are swept out.
    entries: Table,
    dead_entries: usize,
    touched: HashMap<u64, Touch>,
    ns_names: Vec<String>,
    ns_index: HashMap<String, u32>,
    ns_live: Vec<u64>,
    pub ann: Ann,
    /// The lexical index (BM25 postings).
    pub lex: Lex,
    /// The identity of the checkpoint file when this state was loaded
    /// (`None`: there was none): a reader loads again when it changes.
    pub checkpoint_identity: Option<u64>,
    /// Bytes of live slice records.
    pub live_bytes: u64,
    pub tokens: u64,
    /// zstd dictionaries by id, and the one new text is compressed with.
    pub dicts: HashMap<u32, Arc<Dict>>,
    pub current_dict: Option<u32>,
    /// Damaged stretches the replay skipped (a reader's; a writer refuses
    /// to open on damage).
    pub damage: Vec<Damage>,
    /// The torn tail after `end`, as of the last walk.
    pub tail: Option<TornTail>,
    /// The log's length when it was last walked.
    pub walked_to: u64,
}

impl State {
    pub fn new(dim: usize, log: Arc<dyn Storage>, generation: u64, header_len: u64) -> State {
        State {
            dim,
            identity: log.identity(),
            log,
            generation,
            created_ms: 0,
            header_len,
            end: header_len,
            last_record: header_len,
            checkpoint_end: 0,
            checkpoint_bytes: 0,
            next_id: 1,
            budget: 0,
            entries: Table::default(),
            dead_entries: 0,
            touched: HashMap::new(),
            ns_names: Vec::new(),
            ns_index: HashMap::new(),
            ns_live: Vec::new(),
            ann: Ann::new(dim),
            lex: Lex::new(),
            checkpoint_identity: None,
            live_bytes: 0,
            tokens: 0,
            dicts: HashMap::new(),
            current_dict: None,
            damage: Vec::new(),
            tail: None,
            walked_to: header_len,
        }
    }

    /// Take in what a walk of the log up to `len` found, after the records
    /// it fed to [`State::apply`].
    pub fn walked(&mut self, w: Walk, len: u64) {
        for d in &mut self.damage {
            d.records_after += w.records;
            if d.ids_before.is_none() {
                d.ids_before = w.first_slice;
            }
        }
        self.damage.extend(w.damage);
        self.tail = w.tail;
        self.end = self.end.max(w.end);
        self.walked_to = len;
    }

    /// Bytes of the log, the indexes' segment files and the checkpoint.
    pub fn bytes_on_disk(&self) -> u64 {
        self.end + self.ann.file_bytes() + self.lex.file_bytes() + self.checkpoint_bytes
    }

    /// Write what replay derived from the log (all but the indexes, which
    /// save their own parts) to a checkpoint.
    pub fn save(&self, p: &mut Put) {
        p.u64(self.dim as u64);
        p.u64(self.next_id);
        p.u64(self.budget);
        p.u64(self.live_bytes);
        p.u64(self.tokens);
        p.u64(self.dead_entries as u64);
        p.u64(self.current_dict.map_or(0, |d| d as u64 + 1));
        self.entries.save(p);
        let mut touched: Vec<(&u64, &Touch)> = self.touched.iter().collect();
        touched.sort_by_key(|t| *t.0);
        p.u64s(&touched.iter().map(|t| *t.0).collect::<Vec<_>>());
        p.u32s(&touched.iter().map(|t| t.1.uses).collect::<Vec<_>>());
        p.u64s(
            &touched
                .iter()
                .map(|t| t.1.last_used_seq)
                .collect::<Vec<_>>(),
        );
        p.u64(self.ns_names.len() as u64);
        for n in &self.ns_names {
            p.bytes(n.as_bytes());
        }
        p.u64s(&self.ns_live);
        let mut dicts: Vec<(&u32, &Arc<Dict>)> = self.dicts.iter().collect();
        dicts.sort_by_key(|d| *d.0);
        p.u64(dicts.len() as u64);
        for (id, d) in dicts {
            p.u32(*id);
            p.bytes(&d.raw);
        }
    }

    /// Restore what [`State::save`] wrote into a fresh state (`State::new`).
    /// `None` when the parts do not fit together.
    pub fn load(&mut self, t: &mut Take<'_>) -> Option<()> {
        if t.u64()? != self.dim as u64 {
            return None;
        }
        self.next_id = t.u64()?;
        self.budget = t.u64()?;
        self.live_bytes = t.u64()?;
        self.tokens = t.u64()?;
        self.dead_entries = usize::try_from(t.u64()?).ok()?;
        let dict = t.u64()?;
        self.current_dict = match dict {
            0 => None,
            d => Some(u32::try_from(d - 1).ok()?),
        };
        self.entries = Table::load(t)?;
        let (ids, uses, last) = (t.u64s()?, t.u32s()?, t.u64s()?);
        if uses.len() != ids.len() || last.len() != ids.len() {
            return None;
        }
        self.touched = ids
            .iter()
            .zip(uses.iter().zip(&last))
            .map(|(&id, (&uses, &last_used_seq))| {
                (
                    id,
                    Touch {
                        uses,
                        last_used_seq,
                    },
                )
            })
            .collect();
        let names = usize::try_from(t.u64()?).ok()?;
        if names > Self::MAX_NAMESPACES {
            return None;
        }
        for _ in 0..names {
            let name = std::str::from_utf8(t.bytes()?).ok()?;
            self.intern(name);
        }
        let live = t.u64s()?;
        if live.len() != self.ns_names.len() || self.ns_names.len() != names {
            return None;
        }
        self.ns_live = live;
        let dicts = t.u64()?;
        for _ in 0..dicts {
            let id = t.u32()?;
            let raw = t.bytes()?.to_vec();
            let decoder = zstd::dict::DecoderDictionary::copy(&raw);
            self.dicts.insert(id, Arc::new(Dict { raw, decoder }));
        }
        let flags = &self.entries.flags;
        let dead = flags.iter().filter(|&&f| f & DEAD != 0).count();
        let ns_ok = self.entries.ns.iter().all(|&n| (n as usize) < names);
        if dead != self.dead_entries
            || !ns_ok
            || self
                .current_dict
                .is_some_and(|d| !self.dicts.contains_key(&d))
        {
            return None;
        }
        Some(())
    }

    /// Everything replay derives, namespaces by name, as text (tests
    /// compare a load from the checkpoint with a full replay).
    pub fn digest(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "end {} last {} next {} budget {} live_bytes {} tokens {} len {} dict {:?}",
            self.end,
            self.last_record,
            self.next_id,
            self.budget,
            self.live_bytes,
            self.tokens,
            self.len(),
            self.current_dict
        );
        let mut dicts: Vec<(u32, usize)> =
            self.dicts.iter().map(|(k, d)| (*k, d.raw.len())).collect();
        dicts.sort_unstable();
        let _ = writeln!(o, "dicts {dicts:?}");
        for e in self.live() {
            let (uses, last) = self.uses(e.id);
            let _ = writeln!(
                o,
                "{} @{}+{} t{} {} s{:.3} f{} turn{:?} u{uses} l{last}",
                e.id,
                e.offset,
                e.bytes,
                e.tokens,
                self.ns_name(e.ns),
                e.salience,
                e.flags,
                e.turn()
            );
        }
        let mut touched: Vec<_> = self
            .touched
            .iter()
            .map(|(k, t)| (*k, t.uses, t.last_used_seq))
            .collect();
        touched.sort_unstable();
        let _ = writeln!(o, "touched {touched:?}");
        let _ = writeln!(o, "namespaces {:?}", self.namespaces());
        let _ = writeln!(o, "{}", self.ann.digest(&|g| self.ns_name(g).to_string()));
        let _ = writeln!(o, "{}", self.lex.digest());
        o
    }

    /// Namespaces a pool can hold (numbers are kept in 16 bits).
    pub const MAX_NAMESPACES: usize = 1 << 16;

    /// The first of `names` there is no room for, counting the new names
    /// before it; `None` when all fit.
    pub fn no_room_for<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        let mut new = std::collections::HashSet::new();
        names.into_iter().find(|&n| {
            !self.ns_index.contains_key(n)
                && new.insert(n)
                && self.ns_names.len() + new.len() > Self::MAX_NAMESPACES
        })
    }

    /// The number of namespace `name`, made when new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ns_index.get(name) {
            return i;
        }
        let i = self.ns_names.len() as u32;
        self.ns_names.push(name.to_string());
        self.ns_index.insert(name.to_string(), i);
        self.ns_live.push(0);
        i
    }

    /// Every namespace name, by number (including emptied ones).
    pub fn namespaces_all(&self) -> &[String] {
        &self.ns_names
    }

    pub fn ns_name(&self, ns: u32) -> &str {
        self.ns_names.get(ns as usize).map_or("", String::as_str)
    }

    /// Apply one record found at `offset`, `len` bytes long.
    pub fn apply(&mut self, rec: &Rec, offset: u64, len: usize) {
        match rec {
            Rec::Slice(s) => self.insert(s, offset, len),
            Rec::Witness(events) => {
                for &(kind, id, seq) in events {
                    let Some(i) = self.position(id) else {
                        continue;
                    };
                    match kind {
                        0 | 1 => {
                            let t = self.touched.entry(id).or_insert(Touch {
                                uses: 0,
                                last_used_seq: id,
                            });
                            if kind == 0 {
                                t.uses = t.uses.saturating_add(1);
                            }
                            t.last_used_seq = t.last_used_seq.max(seq);
                        }
                        2 => self.entries.flags[i] |= PINNED,
                        3 => self.entries.flags[i] &= !PINNED,
                        _ => {}
                    }
                }
            }
            Rec::DeleteNs { namespace, upto } => {
                for id in self.ids_in(Some(namespace), *upto) {
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
                for id in self.ids_in(None, *upto) {
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
        if offset + len as u64 >= self.end {
            self.end = offset + len as u64;
            self.last_record = offset;
        }
        self.sweep();
    }

    fn insert(&mut self, s: &SliceRec, offset: u64, len: usize) {
        if self.position(s.id).is_some() {
            self.remove(s.id);
        }
        let ns = self.intern(&s.namespace);
        let e = Entry {
            id: s.id,
            offset,
            bytes: len as u32,
            tokens: s.tokens,
            ns,
            salience: s.salience,
            turn: u32::try_from(s.turn)
                .ok()
                .filter(|&t| t != TURN_IN_RECORD)
                .unwrap_or(TURN_IN_RECORD),
            flags: u8::from(s.pinned) | (s.source.min(63) << SOURCE_SHIFT),
        };
        // Ids (and offsets) arrive in increasing order: appends, and
        // compacted logs. Anything else rebuilds the table in order.
        let in_order = self.entries.len() == 0
            || (self.entries.last_id().is_some_and(|l| l < s.id)
                && self.entries.get(self.entries.len() - 1).offset < offset);
        if in_order {
            self.entries.push(&e);
        } else {
            let mut all: Vec<Entry> = (0..self.entries.len())
                .map(|i| self.entries.get(i))
                .filter(|x| !x.dead())
                .collect();
            all.push(e);
            all.sort_by_key(|x| x.id);
            self.dead_entries = 0;
            self.entries = Table::rebuild(all.into_iter());
        }
        if s.uses != 0 || s.last_used_seq != s.id {
            self.touched.insert(
                s.id,
                Touch {
                    uses: s.uses,
                    last_used_seq: s.last_used_seq,
                },
            );
        }
        if s.vector.len() == self.dim && !self.ann.covers(s.id) {
            self.ann.push(Row {
                id: s.id,
                ns,
                q: &s.vector,
                scale: s.scale,
            });
        }
        self.ns_live[ns as usize] += 1;
        self.live_bytes += len as u64;
        self.tokens += s.tokens as u64;
        self.next_id = self.next_id.max(s.id + 1);
    }

    /// Index of live slice `id` in `entries`.
    fn position(&self, id: u64) -> Option<usize> {
        self.entries
            .find(id)
            .filter(|&i| self.entries.flags[i] & DEAD == 0)
    }

    pub fn get(&self, id: u64) -> Option<Entry> {
        self.position(id).map(|i| self.entries.get(i))
    }

    pub fn contains(&self, id: u64) -> bool {
        self.position(id).is_some()
    }

    fn remove(&mut self, id: u64) {
        let Some(i) = self.position(id) else {
            return;
        };
        self.entries.flags[i] |= DEAD;
        let e = self.entries.get(i);
        self.dead_entries += 1;
        self.touched.remove(&id);
        self.ns_live[e.ns as usize] -= 1;
        self.live_bytes -= e.bytes as u64;
        self.tokens -= e.tokens as u64;
        self.ann.remove(id);
        self.lex.remove(id, e.ns);
    }

    /// Drop deleted entries once they are half the table.
    fn sweep(&mut self) {
        if self.dead_entries < 1024 || self.dead_entries * 2 < self.entries.len() {
            return;
        }
        self.sweep_now();
    }

    pub fn sweep_now(&mut self) {
        let t = &self.entries;
        let live = (0..t.len()).map(|i| t.get(i)).filter(|e| !e.dead());
        self.entries = Table::rebuild(live);
        self.dead_entries = 0;
    }

    /// Give back the slack of grown tables (after a replay).
    pub fn shrink(&mut self) {
        self.entries.shrink();
        self.touched.shrink_to_fit();
    }

    /// Live slices, in id order.
    pub fn live(&self) -> impl DoubleEndedIterator<Item = Entry> + '_ {
        (0..self.entries.len())
            .map(|i| self.entries.get(i))
            .filter(|e| !e.dead())
    }

    pub fn len(&self) -> usize {
        self.entries.len() - self.dead_entries
    }

    /// Point live slices at their places in a new log: `moves` holds
    /// (id, offset, bytes) in id order.
    pub fn relocate(&mut self, moves: &[(u64, u64, u32)]) {
        let mut live = Vec::with_capacity(moves.len());
        for &(id, offset, bytes) in moves {
            if let Some(mut e) = self.get(id) {
                e.offset = offset;
                e.bytes = bytes;
                live.push(e);
            }
        }
        self.live_bytes = live.iter().map(|e| e.bytes as u64).sum();
        self.entries = Table::rebuild(live.into_iter());
        self.dead_entries = 0;
    }

    /// The number of namespace `ns` (`Some(None)` for every namespace);
    /// `None` when no slice was ever written to it.
    pub fn scope(&self, ns: Option<&str>) -> Option<Option<u32>> {
        match ns {
            Some(name) => self.ns_index.get(name).map(|&n| Some(n)),
            None => Some(None),
        }
    }

    /// Ids of the live slices of namespace `ns` (all when `None`) that `keep`
    /// accepts, in id order.
    pub fn live_ids(&self, ns: Option<&str>, keep: impl Fn(&Entry) -> bool) -> Vec<u64> {
        let Some(ns) = self.scope(ns) else {
            return Vec::new();
        };
        self.live()
            .filter(|e| ns.is_none_or(|n| e.ns == n) && keep(e))
            .map(|e| e.id)
            .collect()
    }

    /// Ids of live slices below `upto`, in namespace `ns` (all when `None`).
    fn ids_in(&self, ns: Option<&str>, upto: u64) -> Vec<u64> {
        let Some(ns) = self.scope(ns) else {
            return Vec::new();
        };
        self.live()
            .take_while(|e| e.id < upto)
            .filter(|e| ns.is_none_or(|n| e.ns == n))
            .map(|e| e.id)
            .collect()
    }

    pub fn uses(&self, id: u64) -> (u32, u64) {
        self.touched
            .get(&id)
            .map_or((0, id), |t| (t.uses, t.last_used_seq))
    }

    /// Bytes a slice takes in the index segments: its row of codes, id
    /// and scale, and its share of the lexical segments.
    pub fn index_row_bytes(&self) -> u64 {
        self.dim as u64 + 12 + self.lex.bytes_per_doc()
    }

    /// The number of namespace `name`, if a slice was ever written to it.
    pub fn ns_number(&self, name: &str) -> Option<u32> {
        self.ns_index.get(name).copied()
    }

    /// The highest turn of the live slices of namespace `ns`, asking the
    /// log only for a turn the table cannot hold.
    pub fn last_turn(&self, ns: &str) -> std::io::Result<Option<u64>> {
        let Some(g) = self.ns_number(ns) else {
            return Ok(None);
        };
        let mut best: Option<u64> = None;
        for e in self.live().filter(|e| e.ns == g) {
            let turn = match e.turn() {
                Some(t) => t,
                None => match self.read_record(e.id) {
                    Some(r) => r?.turn,
                    None => continue,
                },
            };
            best = Some(best.map_or(turn, |b| b.max(turn)));
        }
        Ok(best)
    }

    /// Live slices with ids in `[from, to]`, in id order.
    pub fn live_range(&self, from: u64, to: u64) -> impl Iterator<Item = Entry> + '_ {
        let t = &self.entries;
        (t.lower_bound(from)..t.len())
            .map(|i| t.get(i))
            .take_while(move |e| e.id <= to)
            .filter(|e| !e.dead())
    }

    /// What the witness weighs for every live slice; each slice's bytes
    /// include its row in the index.
    pub fn standings(&self) -> Vec<Standing> {
        let row = self.index_row_bytes();
        self.live()
            .map(|e| {
                let (uses, last_used_seq) = self.uses(e.id);
                Standing {
                    id: e.id,
                    bytes: e.bytes as u64 + row,
                    salience: e.salience,
                    uses,
                    last_used_seq,
                    pinned: e.pinned(),
                }
            })
            .collect()
    }

    /// The slice record of live slice `id`, read from the log and checked.
    pub fn read_record(&self, id: u64) -> Option<std::io::Result<SliceRec>> {
        let e = self.get(id)?;
        let mut buf = vec![0u8; e.bytes as usize];
        if let Err(err) = self.log.read_at(e.offset, &mut buf) {
            return Some(Err(err));
        }
        let rec = if format::check(&buf) {
            format::decode_slice(&buf[RECORD_HEADER..], self.dim)
        } else {
            None
        };
        Some(rec.filter(|r| r.id == id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("slice {id} at offset {} fails its checksum", e.offset),
            )
        }))
    }

    /// Metadata of live slice `id` (turn, time and external id come from
    /// its record in the log).
    pub fn meta(&self, id: u64) -> Option<SliceMeta> {
        let rec = self.read_record(id)?.ok()?;
        self.meta_of(&rec)
    }

    /// Metadata of live slice `rec.id`, given its record already read.
    pub fn meta_of(&self, rec: &SliceRec) -> Option<SliceMeta> {
        let id = rec.id;
        let e = self.get(id)?;
        let (uses, last_used_seq) = self.uses(id);
        Some(SliceMeta {
            id,
            namespace: self.ns_name(e.ns).to_string(),
            source: Source::from_u8(e.source()).unwrap_or(Source::Document),
            tokens: e.tokens,
            turn: rec.turn,
            ext_id: rec.ext_id.clone(),
            time_ms: rec.time_ms,
            bytes: e.bytes as u64,
            salience: rec.salience,
            uses,
            last_used_seq,
            pinned: e.pinned(),
        })
    }

    /// Metadata of live slices, in id order; `ns = None` for all.
    pub fn metas(&self, ns: Option<&str>) -> Vec<SliceMeta> {
        let Some(ns) = self.scope(ns) else {
            return Vec::new();
        };
        self.live()
            .filter(|e| ns.is_none_or(|n| e.ns == n))
            .filter_map(|e| self.meta(e.id))
            .collect()
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

    /// Top-`k` by dot product through the index; `ns = None` searches every
    /// namespace. `exact` scores every row in scope (the reference that the
    /// index's recall is measured against).
    pub fn search(&self, q: &[f32], k: usize, ns: Option<&str>, exact: bool) -> Vec<(f32, u64)> {
        let Some(ns) = self.scope(ns) else {
            return Vec::new();
        };
        self.ann.search(q, k, ns, exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::storage::{Dir, MemDir};
    use crate::pool::vector::quantize;

    fn rec(id: u64, ns: &str, v: &[f32]) -> Rec {
        let mut q = Vec::new();
        let scale = quantize(v, &mut q);
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
            scale,
            vector: q,
        })
    }

    #[test]
    fn the_table_spans_offsets_and_ids_past_32_bits() {
        let mut t = Table::default();
        let mut want = Vec::new();
        let (mut id, mut off) = (1u64, 0u64);
        for i in 0..2000u64 {
            id += if i % 500 == 499 {
                5_000_000_000
            } else {
                1 + i % 3
            };
            off += if i % 700 == 699 { 6 << 30 } else { 1000 + i };
            let e = Entry {
                id,
                offset: off,
                bytes: 900 + i as u32,
                tokens: i as u32,
                ns: (i % 7) as u32,
                salience: 0.6,
                turn: i as u32,
                flags: PINNED | (3 << SOURCE_SHIFT),
            };
            t.push(&e);
            want.push(e);
        }
        assert!(t.blocks.len() > 1);
        for (i, e) in want.iter().enumerate() {
            assert_eq!(t.find(e.id), Some(i));
            let g = t.get(i);
            assert_eq!(
                (g.id, g.offset, g.bytes, g.tokens, g.ns),
                (e.id, e.offset, e.bytes, e.tokens, e.ns)
            );
            assert!(g.pinned() && g.source() == 3 && (g.salience - 0.6).abs() < 0.01);
            assert_eq!(t.find(e.id + 5_000_000_000 * 7), None);
        }
        assert_eq!(t.find(0), None);
    }

    #[test]
    fn a_slice_out_of_order_still_lands_in_place() {
        let log = MemDir::new().open("x", true).unwrap();
        let mut s = State::new(4, log, 1, 0);
        for id in [1u64, 2, 5] {
            s.apply(&rec(id, "a", &[1.0, 0.0, 0.0, 0.0]), id * 100, 100);
        }
        s.apply(&rec(3, "a", &[0.0, 1.0, 0.0, 0.0]), 50, 100);
        let ids: Vec<u64> = s.live().map(|e| e.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 5]);
        assert_eq!(s.get(3).unwrap().offset, 50);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn tail_search_filters_deletes_and_namespaces() {
        let log = MemDir::new().open("x", true).unwrap();
        let mut s = State::new(4, log, 1, 0);
        for id in 1..=5000u64 {
            let a = (id as f32 * 0.37).sin();
            let b = (id as f32 * 0.11).cos();
            let ns = if id % 2 == 0 { "even" } else { "odd" };
            s.apply(&rec(id, ns, &[a, b, a * b, 0.5]), id * 100, 100);
        }
        let q = [0.3, -0.8, 0.2, 0.1];
        let best = s.search(&q, 1, None, true)[0].1;
        s.apply(&Rec::Evict(vec![best]), 600_000, 10);
        let got = s.search(&q, 10, None, false);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|(_, id)| *id != best));
        assert!(got.windows(2).all(|w| w[0].0 >= w[1].0));
        let even = s.search(&q, 10, Some("even"), false);
        assert_eq!(even.len(), 10);
        assert!(even.iter().all(|(_, id)| id % 2 == 0));
        assert!(s.search(&q, 10, Some("none"), false).is_empty());
        assert_eq!(s.len(), 4999);
        assert!(!s.contains(best));
    }
}
