//! The context pool: a directory on disk, the single source of truth.
//!
//! CONTRACT (the rest of the engine relies on exactly this API):
//! - `Pool` is `Send + Sync`; many sessions in one process share one `Arc<Pool>`.
//! - `append` returns only after the batch is durable (survives kill -9).
//! - ids are assigned in write order, strictly increasing, never reused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::slice::{NewSlice, Slice, SliceMeta};
use crate::witness::{self, WitnessParams};
use crate::{Error, Result};

pub mod ann;
pub mod bench;
pub mod checkpoint;
mod durable;
mod forget;
pub mod format;
mod le;
pub mod lex;
mod lock;
mod repair;
mod replay;
mod segfile;
mod state;
pub mod storage;
mod store;
mod top;
pub mod vector;

use format::{Header, HeaderError, Rec, SliceRec, RECORD_HEADER};
use lock::WriterLock;
use state::State;
use storage::{Dir, FileDir, Storage};

pub use checkpoint::{Opened as CheckpointUse, CHECKPOINT_FILE};
pub use lex::{LexicalStats, Rebuilt};
pub use lock::{set_purpose, LOCK_FILE};
pub use repair::{Repaired, Verified, DAMAGED_PREFIX};
pub use replay::{Damage, TornTail};
pub use store::Store;

/// The log of record, inside the pool directory.
pub const LOG_FILE: &str = "pool.log";
pub use durable::END_FILE;
/// A compacted log being written; renamed over [`LOG_FILE`] when complete.
const COMPACT_FILE: &str = "pool.log.compact";
/// A new pool's first log being written.
const NEW_FILE: &str = "pool.log.new";
/// Budget given to a new pool when none is asked for.
pub const DEFAULT_BUDGET: u64 = 5 << 30;
/// zstd level for slice text.
const ZSTD_LEVEL: i32 = 3;
/// Bytes read per step while replaying the log.
const READ_CHUNK: usize = 8 << 20;
/// Live slices needed before a zstd dictionary is trained on them.
const DICT_MIN_SLICES: usize = 1000;
/// Size of a trained dictionary.
const DICT_BYTES: usize = 64 << 10;
/// Texts sampled to train it.
const DICT_SAMPLES: usize = 4000;
/// Dead bytes below this never trigger a compaction on their own.
const MIN_DEAD_TO_COMPACT: u64 = 8 << 20;

/// How to open a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Create the pool if the directory holds none.
    pub create: bool,
    /// Open for reading only: takes no lock, refuses writes.
    pub read_only: bool,
    /// Byte budget for everything on disk; `None` keeps the stored budget (default 5 GB on create).
    pub budget_bytes: Option<u64>,
    /// Identity and dimension of the encoder whose vectors this pool holds.
    pub encoder_fingerprint: String,
    pub dim: usize,
}

/// Which namespaces a search covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every namespace (a shared pool).
    All,
    /// One session's slices only.
    Namespace(&'a str),
}

impl<'a> Scope<'a> {
    /// The namespace searched, `None` for every one.
    pub fn name(self) -> Option<&'a str> {
        match self {
            Scope::All => None,
            Scope::Namespace(n) => Some(n),
        }
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub score: f32,
    pub meta: SliceMeta,
}

/// Something the witness learned about a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitnessEvent {
    /// A paged-in copy was used by the model (its content showed up in the answer).
    Used(u64),
    /// The slice was paged in again because it became relevant again.
    Recalled(u64),
    Pin(u64),
    Unpin(u64),
}

/// Totals for `uctx status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PoolStats {
    pub slices: u64,
    pub tokens: u64,
    pub bytes_on_disk: u64,
    pub budget_bytes: u64,
    pub namespaces: u64,
}

/// The vector index at a glance.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IndexStats {
    /// Sealed segment files.
    pub segments: u64,
    /// Rows in them (deleted ones included until rewritten).
    pub segment_rows: u64,
    /// Newest rows, searched exactly, not yet sealed.
    pub tail_rows: u64,
    /// Bytes of segment files.
    pub bytes: u64,
}

/// The writer's side: serialises every mutation.
struct Writer {
    /// Set when a sync failed: what is on disk is unknown until reopened.
    poisoned: Option<String>,
    /// A compressor loaded with the current dictionary.
    compressor: Option<(u32, zstd::bulk::Compressor<'static>)>,
    /// Live slices at which to try training a dictionary (again).
    dict_retry_at: usize,
}

/// The maintenance side: eviction, compaction, index seals and merges and
/// checkpoints take this lock, one at a time. Appends never do (they take
/// only the [`Writer`]); deletes do, so that an index segment being built
/// never gains a deleted row. Order: this lock, then the writer, then the
/// state.
struct Maint {
    /// Tail rows at which to try index maintenance again after a failure.
    index_retry_at: usize,
}

/// What the writer's maintenance thread is asked to do, and has done.
#[derive(Default)]
struct Flags {
    /// A write asked for a pass the thread has not started yet.
    pending: bool,
    running: bool,
    /// The pool is being dropped: run what is pending, then end.
    stop: bool,
    /// Passes started and finished.
    started: u64,
    finished: u64,
}

#[derive(Default)]
struct Signal {
    flags: Mutex<Flags>,
    cv: Condvar,
}

impl Signal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: std::sync::MutexGuard<'a, Flags>) -> std::sync::MutexGuard<'a, Flags> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }
}

impl Writer {
    /// Compress `text` with dictionary `dict` (or none).
    fn compress(&mut self, text: &[u8], dict: Option<(u32, &[u8])>) -> std::io::Result<Vec<u8>> {
        let Some((id, raw)) = dict else {
            return zstd::bulk::compress(text, ZSTD_LEVEL);
        };
        if self.compressor.as_ref().map(|c| c.0) != Some(id) {
            self.compressor = Some((
                id,
                zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, raw)?,
            ));
        }
        match &mut self.compressor {
            Some((_, c)) => c.compress(text),
            None => zstd::bulk::compress(text, ZSTD_LEVEL),
        }
    }
}

/// The context pool. See the module docs for the contract.
///
/// A writer owns a maintenance thread: every write asks it for a pass
/// (eviction, compaction, index seals and merges, checkpoints), and the
/// write returns without waiting for it. [`Pool::settle`] waits for it;
/// dropping the pool runs what is pending, then ends the thread.
pub struct Pool {
    core: Arc<PoolCore>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for Pool {
    type Target = PoolCore;
    fn deref(&self) -> &PoolCore {
        &self.core
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(h) = self.worker.take() {
            self.signal.lock().stop = true;
            self.signal.cv.notify_all();
            let _ = h.join();
        }
    }
}

/// What a [`Pool`] handle shares with its maintenance thread.
#[doc(hidden)]
pub struct PoolCore {
    path: PathBuf,
    dir: Arc<dyn Dir>,
    read_only: bool,
    fingerprint: String,
    params: WitnessParams,
    writer: Mutex<Writer>,
    state: RwLock<State>,
    /// The torn tail this handle's open cut (a writer's).
    cut: Option<TornTail>,
    /// How the latest load used the checkpoint.
    checkpoint_use: Mutex<checkpoint::Opened>,
    /// Where the writer publishes its durable end ([`durable`]); a reader
    /// opens it once it exists.
    end_file: Mutex<Option<Arc<dyn Storage>>>,
    /// A directory of real files, whose `LOCK` says whether a writer lives (a
    /// reader bounds itself by the published end only while one does).
    on_disk: bool,
    maintenance_error: Mutex<Option<String>>,
    maint: Mutex<Maint>,
    signal: Signal,
    _lock: Option<WriterLock>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Pool {
    /// Open (or create) the pool in directory `dir`. A writer takes the
    /// directory's lock; a second writer gets [`Error::Locked`].
    pub fn open(dir: &Path, opts: PoolOptions) -> Result<Pool> {
        if !dir.join(LOG_FILE).exists() {
            if !opts.create || opts.read_only {
                return Err(no_pool(dir));
            }
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io(
                    format!("cannot create the pool directory {}", dir.display()),
                    e,
                )
            })?;
        }
        let lock = if opts.read_only {
            None
        } else {
            Some(WriterLock::acquire(dir)?)
        };
        Pool::open_inner(Arc::new(FileDir::new(dir)), dir, opts, lock, true)
    }

    /// The encoder fingerprint and vector dimension a pool was written with,
    /// read from its header alone (no lock, no replay).
    pub fn inspect(dir: &Path) -> Result<(String, usize)> {
        if !dir.join(LOG_FILE).exists() {
            return Err(no_pool(dir));
        }
        let log = FileDir::new(dir)
            .open(LOG_FILE, false)
            .map_err(|e| Error::io(format!("cannot read the pool at {}", dir.display()), e))?;
        let (header, _) = read_header(&*log, dir)?;
        Ok((header.fingerprint, header.dim as usize))
    }

    /// Open a pool on any [`Dir`] (in memory, fault-injecting). Takes no OS
    /// lock: the caller guarantees a single writer. `path` only names the
    /// pool in messages.
    pub fn open_with(dir: Arc<dyn Dir>, path: &Path, opts: PoolOptions) -> Result<Pool> {
        Pool::open_inner(dir, path, opts, None, false)
    }

    fn open_inner(
        dir: Arc<dyn Dir>,
        path: &Path,
        opts: PoolOptions,
        lock: Option<WriterLock>,
        on_disk: bool,
    ) -> Result<Pool> {
        let io = |what: &str, e| Error::io(format!("{what} in the pool at {}", path.display()), e);
        if !opts.read_only {
            dir.remove(COMPACT_FILE)
                .map_err(|e| io("cannot remove a stale compaction file", e))?;
            dir.remove(NEW_FILE)
                .map_err(|e| io("cannot remove a stale new log", e))?;
            dir.remove(repair::REPAIR_FILE)
                .map_err(|e| io("cannot remove an unfinished repair", e))?;
            dir.remove(checkpoint::CHECKPOINT_TMP)
                .map_err(|e| io("cannot remove an unfinished checkpoint", e))?;
        }
        if !dir.exists(LOG_FILE) {
            if !opts.create || opts.read_only {
                return Err(no_pool(path));
            }
            if opts.dim == 0 || opts.dim > u32::MAX as usize {
                return Err(Error::invalid(format!(
                    "cannot create a pool for vectors of dimension {}; the encoder must report its dimension",
                    opts.dim
                )));
            }
            let header = Header {
                version: format::VERSION,
                dim: opts.dim as u32,
                generation: 1,
                created_ms: now_ms(),
                fingerprint: opts.encoder_fingerprint.clone(),
            };
            let mut b = header.encode();
            format::encode(
                &Rec::Budget(opts.budget_bytes.unwrap_or(DEFAULT_BUDGET)),
                &mut b,
            );
            let f = dir
                .open(NEW_FILE, true)
                .map_err(|e| io("cannot create the log", e))?;
            f.write_at(0, &b)
                .and_then(|_| f.sync())
                .map_err(|e| io("cannot write the new log", e))?;
            dir.rename(NEW_FILE, LOG_FILE)
                .map_err(|e| io("cannot install the new log", e))?;
        }
        let log = dir
            .open(LOG_FILE, false)
            .map_err(|e| io("cannot open the log", e))?;
        let end_file = durable::open(&*dir, !opts.read_only).ok();
        let published = end_file
            .as_deref()
            .filter(|_| opts.read_only && (!on_disk || lock::writer_alive(path)));
        let Loaded {
            state,
            header,
            cut,
            checkpoint: checkpoint_use,
        } = load(&*dir, log, path, !opts.read_only, true, published)?;
        if header.fingerprint != opts.encoder_fingerprint {
            return Err(Error::EncoderMismatch {
                pool: header.fingerprint,
                current: opts.encoder_fingerprint,
            });
        }
        if header.dim as usize != opts.dim {
            return Err(Error::DimMismatch {
                expected: header.dim as usize,
                got: opts.dim,
            });
        }
        let core = PoolCore {
            path: path.to_path_buf(),
            dir,
            read_only: opts.read_only,
            fingerprint: header.fingerprint,
            params: WitnessParams::default(),
            writer: Mutex::new(Writer {
                poisoned: None,
                compressor: None,
                dict_retry_at: DICT_MIN_SLICES,
            }),
            state: RwLock::new(state),
            cut,
            checkpoint_use: Mutex::new(checkpoint_use),
            end_file: Mutex::new(end_file),
            on_disk,
            maintenance_error: Mutex::new(None),
            maint: Mutex::new(Maint { index_retry_at: 0 }),
            signal: Signal::default(),
            _lock: lock,
        };
        let mut pool = Pool {
            core: Arc::new(core),
            worker: None,
        };
        if !opts.read_only {
            pool.publish_end();
        }
        if let Some(b) = opts.budget_bytes {
            if !opts.read_only && b != pool.read().budget {
                pool.set_budget(b)?;
            }
        }
        if !opts.read_only {
            // Catch the index up with the log (after a crash, or when its
            // files were lost): seal what the tail holds beyond a segment.
            let mut m = pool.lock_maint();
            pool.maintain_locked(&mut m);
            // A full replay (no checkpoint, a stale or damaged one, a pool of
            // an older format) is paid once: the next open loads this one.
            if pool.checkpoint_use().replayed_whole() {
                if let Err(e) = pool.write_checkpoint(&mut m) {
                    *pool
                        .maintenance_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            }
            drop(m);
            let handle = Pool {
                core: pool.core.clone(),
                worker: None,
            };
            let worker = std::thread::Builder::new()
                .name("uctx-maintain".into())
                .spawn(move || handle.run_maintenance())
                .map_err(|e| Error::io("cannot start the pool's maintenance thread", e))?;
            pool.worker = Some(worker);
        }
        Ok(pool)
    }

    /// The maintenance thread: a pass each time a write asks for one, until
    /// the pool is dropped (what is pending then still runs).
    fn run_maintenance(self) {
        loop {
            {
                let mut f = self.signal.lock();
                while !f.pending && !f.stop {
                    f = self.signal.wait(f);
                }
                if !f.pending {
                    return;
                }
                f.pending = false;
                f.running = true;
                f.started += 1;
            }
            let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.maintain()));
            if pass.is_err() {
                *self
                    .maintenance_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some("a maintenance pass stopped on an internal error".into());
            }
            let mut f = self.signal.lock();
            f.running = false;
            f.finished += 1;
            self.signal.cv.notify_all();
        }
    }

    /// Ask the maintenance thread for a pass (a writer's, after a write).
    fn kick(&self) {
        self.signal.lock().pending = true;
        self.signal.cv.notify_all();
    }

    /// Wait until the maintenance thread has nothing left to do: every
    /// write so far has had its pass. A reader returns at once.
    pub fn settle(&self) {
        if self.worker.is_none() {
            return;
        }
        let mut f = self.signal.lock();
        while f.pending || f.running {
            f = self.signal.wait(f);
        }
    }

    /// Ask for a pass and wait until one that began after the asking has
    /// finished, so that it saw every write acknowledged before it (a pass
    /// already running may have begun before them).
    fn wait_for_fresh_pass(&self) {
        if self.worker.is_none() {
            return;
        }
        let mut f = self.signal.lock();
        f.pending = true;
        self.signal.cv.notify_all();
        let want = f.started + 1;
        while f.finished < want {
            f = self.signal.wait(f);
        }
    }

    fn lock_maint(&self) -> std::sync::MutexGuard<'_, Maint> {
        self.maint.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, Writer>> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "the pool at {} was opened read-only; open it without --read-only to write",
                self.path.display()
            )));
        }
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &w.poisoned {
            return Err(Error::io(
                format!(
                    "the pool at {} stopped accepting writes after a failed sync ({why}); reopen it",
                    self.path.display()
                ),
                std::io::Error::other("writes refused until the pool is reopened"),
            ));
        }
        Ok(w)
    }

    /// Write `recs` at the end of the log, sync, and apply them. On failure
    /// the log is cut back to where it was.
    fn commit(&self, w: &mut Writer, recs: &[Rec], what: &str) -> Result<()> {
        let (log, end) = {
            let s = self.read();
            (s.log.clone(), s.end)
        };
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(recs.len());
        for r in recs {
            let at = buf.len();
            let n = format::encode(r, &mut buf);
            spans.push((end + at as u64, n));
        }
        if let Err(e) = log.write_at(end, &buf) {
            if let Err(t) = log.truncate(end) {
                w.poisoned = Some(format!("cutting a failed write back failed: {t}"));
            }
            return Err(self.write_error(what, e));
        }
        if let Err(e) = log.sync() {
            w.poisoned = Some(e.to_string());
            return Err(self.write_error(what, e));
        }
        let mut s = self.write_state();
        for (r, (at, n)) in recs.iter().zip(spans) {
            s.apply(r, at, n);
        }
        drop(s);
        self.publish_end();
        Ok(())
    }

    fn write_error(&self, what: &str, e: std::io::Error) -> Error {
        let fix = if e.raw_os_error() == Some(libc::ENOSPC) {
            "the disk is full: free space, or lower the pool's budget"
        } else {
            "check the disk; nothing written before this was lost"
        };
        Error::io(
            format!(
                "cannot {what} in the pool at {} — {fix}",
                self.path.display()
            ),
            e,
        )
    }

    /// Append slices durably; returns their ids, in order, once synced.
    pub fn append(&self, batch: &[(NewSlice, Vec<f32>)]) -> Result<Vec<u64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let dim = self.read().dim;
        for (s, v) in batch {
            if v.len() != dim {
                return Err(Error::DimMismatch {
                    expected: dim,
                    got: v.len(),
                });
            }
            if s.namespace.len() > u16::MAX as usize {
                return Err(Error::invalid(
                    "a namespace longer than 65,535 bytes; use a shorter name",
                ));
            }
            if s.ext_id
                .as_ref()
                .is_some_and(|x| x.len() > u16::MAX as usize)
            {
                return Err(Error::invalid(
                    "an id longer than 65,535 bytes; use a shorter id",
                ));
            }
            if s.text.len() > u32::MAX as usize / 2 {
                return Err(Error::invalid(
                    "a slice text over 2 GB; cut it into smaller slices",
                ));
            }
        }
        {
            let s = self.read();
            if let Some(n) = s.no_room_for(batch.iter().map(|(n, _)| n.namespace.as_str())) {
                return Err(Error::invalid(format!(
                    "the pool holds {} namespaces, its most; cannot add {n:?}: delete unused namespaces (`uctx clear --namespace`)",
                    state::State::MAX_NAMESPACES,
                )));
            }
        }
        // A tenth over the budget: the maintenance thread has fallen behind;
        // wait for a pass that sees every write so far before adding more
        // (never while holding the writer, which the pass needs).
        if self.over_hard_limit() {
            self.wait_for_fresh_pass();
        }
        let mut w = self.lock_writer()?;
        let first = self.read().next_id;
        let time_ms = now_ms();
        let mut recs = Vec::with_capacity(batch.len() + 1);
        let dict = match self.train_dict(&mut w, batch) {
            Some((id, raw)) => {
                recs.push(Rec::Dict {
                    id,
                    bytes: raw.clone(),
                });
                Some((id, Arc::new(raw)))
            }
            None => {
                let s = self.read();
                s.current_dict
                    .and_then(|id| s.dicts.get(&id).map(|d| (id, Arc::new(d.raw.clone()))))
            }
        };
        for (i, (s, v)) in batch.iter().enumerate() {
            let id = first + i as u64;
            let text_z = w
                .compress(
                    s.text.as_bytes(),
                    dict.as_ref().map(|(id, raw)| (*id, raw.as_slice())),
                )
                .map_err(|e| Error::io("cannot compress slice text", e))?;
            let mut q = Vec::with_capacity(dim);
            let scale = vector::quantize(v, &mut q);
            let salience = if s.salience.is_finite() {
                s.salience.clamp(0.0, 1.0)
            } else {
                0.0
            };
            recs.push(Rec::Slice(SliceRec {
                id,
                time_ms,
                turn: s.turn,
                last_used_seq: id,
                tokens: s.tokens,
                salience,
                uses: 0,
                source: s.source.as_u8(),
                pinned: false,
                namespace: s.namespace.clone(),
                ext_id: s.ext_id.clone(),
                text_len: s.text.len() as u32,
                dict: dict.as_ref().map(|d| d.0),
                text_z,
                scale,
                vector: q,
            }));
        }
        if let Err(e) = self.commit(&mut w, &recs, &format!("append {} slices", batch.len())) {
            // A dictionary trained for this batch was not written: forget it.
            w.compressor = None;
            return Err(e);
        }
        drop(w);
        self.lex_appended(batch, first);
        self.kick();
        Ok((first..first + batch.len() as u64).collect())
    }

    /// Top-`k` slices by cosine similarity (vectors are unit length) in `scope`.
    pub fn search(&self, query: &[f32], k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        self.auto_refresh()?;
        self.scored(query, scope, |s, ns| s.search(query, k, ns, false))
    }

    /// Like [`Pool::search`], but scoring every slice in scope with its
    /// stored vector: slow, the reference that search quality is measured
    /// against.
    pub fn search_exact(&self, query: &[f32], k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        self.auto_refresh()?;
        self.scored(query, scope, |s, ns| s.search(query, k, ns, true))
    }

    /// Check the query's dimension, run `rank` on the state for the scope's
    /// namespace, and attach each ranked slice's metadata.
    fn scored(
        &self,
        query: &[f32],
        scope: Scope<'_>,
        rank: impl FnOnce(&State, Option<&str>) -> Vec<(f32, u64)>,
    ) -> Result<Vec<Hit>> {
        let s = self.read();
        if query.len() != s.dim {
            return Err(Error::DimMismatch {
                expected: s.dim,
                got: query.len(),
            });
        }
        Ok(rank(&s, scope.name())
            .into_iter()
            .filter_map(|(score, id)| s.meta(id).map(|meta| Hit { score, meta }))
            .collect())
    }

    /// A live slice with its text; `None` when absent or evicted.
    pub fn get(&self, id: u64) -> Result<Option<Slice>> {
        self.auto_refresh()?;
        let s = self.read();
        let Some(rec) = s.read_record(id) else {
            return Ok(None);
        };
        let rec = rec.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                self.corrupt(e.to_string())
            } else {
                Error::io(
                    format!(
                        "cannot read slice {id} from the pool at {}",
                        self.path.display()
                    ),
                    e,
                )
            }
        })?;
        let Some(meta) = s.meta_of(&rec) else {
            return Ok(None);
        };
        drop(s);
        let text = self.text_of(&rec)?;
        Ok(Some(Slice { meta, text }))
    }

    /// Decompress a slice record's text with the dictionary it names.
    fn text_of(&self, rec: &SliceRec) -> Result<String> {
        let bytes = match rec.dict {
            None => unzstd(&rec.text_z, rec.text_len as usize, None),
            Some(d) => {
                let dict = self.read().dicts.get(&d).cloned();
                dict.and_then(|dict| {
                    unzstd(&rec.text_z, rec.text_len as usize, Some(&dict.decoder))
                })
            }
        };
        bytes
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| self.corrupt(format!("slice {} holds undecodable text", rec.id)))
    }

    /// Once the pool holds enough slices, train a zstd dictionary on their
    /// text (and the batch about to be written). `None` when there is one
    /// already, too few slices, or training failed (retried at twice the size).
    fn train_dict(&self, w: &mut Writer, batch: &[(NewSlice, Vec<f32>)]) -> Option<(u32, Vec<u8>)> {
        let (live, id) = {
            let s = self.read();
            if s.current_dict.is_some() {
                return None;
            }
            (s.len(), s.dicts.keys().max().map_or(1, |m| m + 1))
        };
        if live + batch.len() < w.dict_retry_at {
            return None;
        }
        w.dict_retry_at = (live + batch.len()) * 2;
        let ids: Vec<u64> = self
            .read()
            .live()
            .rev()
            .take(DICT_SAMPLES)
            .map(|e| e.id)
            .collect();
        let mut samples: Vec<Vec<u8>> = batch
            .iter()
            .take(DICT_SAMPLES)
            .map(|(s, _)| s.text.as_bytes().to_vec())
            .collect();
        for id in ids {
            if samples.len() >= DICT_SAMPLES {
                break;
            }
            if let Ok(Some(s)) = self.get(id) {
                samples.push(s.text.into_bytes());
            }
        }
        let dict = zstd::dict::from_samples(&samples, DICT_BYTES).ok()?;
        Some((id, dict))
    }

    /// Change the index's shape (tests: small seals to exercise merging).
    #[doc(hidden)]
    pub fn set_index_tuning(&self, tuning: ann::Tuning) {
        self.write_state().ann.tuning = tuning;
    }

    /// Up to `n` live slice ids spread evenly over the pool, in id order.
    pub fn sample(&self, n: usize) -> Vec<u64> {
        let _ = self.auto_refresh();
        let s = self.read();
        let len = s.len();
        let n = n.min(len);
        let mut out = Vec::with_capacity(n);
        let mut next = 0;
        for (i, e) in s.live().enumerate() {
            if out.len() < n && i == next * len / n.max(1) {
                out.push(e.id);
                next += 1;
            }
        }
        out
    }

    /// The index at a glance.
    pub fn index_stats(&self) -> IndexStats {
        let _ = self.auto_refresh();
        let s = self.read();
        IndexStats {
            segments: s.ann.segments().len() as u64,
            segment_rows: s.ann.segments().iter().map(|g| g.rows as u64).sum(),
            tail_rows: s.ann.tail_rows() as u64,
            bytes: s.ann.file_bytes(),
        }
    }

    /// Whether new text is compressed with a dictionary trained on the pool.
    pub fn has_dictionary(&self) -> bool {
        self.read().current_dict.is_some()
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    pub fn meta(&self, id: u64) -> Option<SliceMeta> {
        let _ = self.auto_refresh();
        self.read().meta(id)
    }

    /// Metadata of every live slice in scope, in id order.
    pub fn metas(&self, scope: Scope<'_>) -> Vec<SliceMeta> {
        let _ = self.auto_refresh();
        let s = self.read();
        match scope {
            Scope::All => s.metas(None),
            Scope::Namespace(n) => s.metas(Some(n)),
        }
    }

    /// Log what the witness learned; unknown ids are ignored.
    pub fn record(&self, events: &[WitnessEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut w = self.lock_writer()?;
        let recs = {
            let s = self.read();
            let seq = s.next_id.saturating_sub(1);
            let ev: Vec<format::WitnessRec> = events
                .iter()
                .map(|e| match *e {
                    WitnessEvent::Used(id) => (0, id, seq),
                    WitnessEvent::Recalled(id) => (1, id, seq),
                    WitnessEvent::Pin(id) => (2, id, seq),
                    WitnessEvent::Unpin(id) => (3, id, seq),
                })
                .filter(|(_, id, _)| s.contains(*id))
                .collect();
            if ev.is_empty() {
                return Ok(());
            }
            vec![Rec::Witness(ev)]
        };
        self.commit(&mut w, &recs, "record witness events")?;
        drop(w);
        self.kick();
        Ok(())
    }

    /// Delete every slice of namespace `ns`; returns how many.
    pub fn delete_namespace(&self, ns: &str) -> Result<u64> {
        let _m = self.lock_maint();
        let mut w = self.lock_writer()?;
        let (n, upto) = {
            let s = self.read();
            (s.live_in(ns), s.next_id)
        };
        if n == 0 {
            return Ok(0);
        }
        let rec = Rec::DeleteNs {
            namespace: ns.to_string(),
            upto,
        };
        self.commit(&mut w, &[rec], &format!("delete namespace {ns:?}"))?;
        self.kick();
        Ok(n)
    }

    /// Delete every slice; returns how many.
    pub fn clear(&self) -> Result<u64> {
        let _m = self.lock_maint();
        let mut w = self.lock_writer()?;
        let (n, upto) = {
            let s = self.read();
            (s.len() as u64, s.next_id)
        };
        if n == 0 {
            return Ok(0);
        }
        self.commit(&mut w, &[Rec::Clear { upto }], "clear")?;
        self.kick();
        Ok(n)
    }

    /// Live namespaces with their slice counts, by name.
    pub fn namespaces(&self) -> Vec<(String, u64)> {
        let _ = self.auto_refresh();
        self.read().namespaces()
    }

    pub fn stats(&self) -> PoolStats {
        let _ = self.auto_refresh();
        let s = self.read();
        PoolStats {
            slices: s.len() as u64,
            tokens: s.tokens,
            bytes_on_disk: s.bytes_on_disk(),
            budget_bytes: s.budget,
            namespaces: s.live_namespaces(),
        }
    }

    /// Change the byte budget; when the pool is over it, the maintenance
    /// thread evicts, and this returns once it has.
    pub fn set_budget(&self, bytes: u64) -> Result<()> {
        let mut w = self.lock_writer()?;
        self.commit(&mut w, &[Rec::Budget(bytes)], "set the budget")?;
        drop(w);
        self.kick();
        self.settle();
        Ok(())
    }

    pub fn encoder_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Vector dimension of the pool.
    pub fn dim(&self) -> usize {
        self.read().dim
    }

    /// Whether this handle was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Bytes of a torn tail a writer cut when it opened the pool (a
    /// reader cuts nothing: see [`Pool::torn_tail`]).
    pub fn cut_on_open(&self) -> u64 {
        self.cut.map_or(0, |t| t.bytes)
    }

    /// The torn tail a writer cut when it opened the pool.
    pub fn tail_cut(&self) -> Option<TornTail> {
        self.cut
    }

    /// A torn tail the log ends with now, which a writer would cut (a
    /// reader's view; also a write in progress).
    pub fn torn_tail(&self) -> Option<TornTail> {
        let _ = self.auto_refresh();
        self.read().tail
    }

    /// Damaged stretches of the log that a read-only handle skipped
    /// (`uctx repair` rewrites the log without them). A writer never
    /// opens a damaged log.
    pub fn damage(&self) -> Vec<Damage> {
        let _ = self.auto_refresh();
        self.read().damage.clone()
    }

    /// Damaged logs that `uctx repair` kept beside the pool's log, by name.
    pub fn damaged_logs(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .dir
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(DAMAGED_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// The last failure of the maintenance thread (eviction, compaction, an
    /// index seal or merge, a checkpoint) after writes that themselves
    /// succeeded; `None` when its last pass went well.
    pub fn maintenance_error(&self) -> Option<String> {
        self.maintenance_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes in the log that belong to no live slice (tombstones, evicted
    /// and deleted slices, witness events) and a compaction would reclaim.
    pub fn dead_bytes(&self) -> u64 {
        let s = self.read();
        s.end.saturating_sub(s.header_len + s.live_bytes)
    }

    /// Read-only handles: pick up what the writer appended (or a compacted
    /// log) since the last look. Returns whether anything changed.
    pub fn refresh(&self) -> Result<bool> {
        if !self.read_only {
            return Ok(false);
        }
        let ident = self.dir.identity(LOG_FILE).map_err(|e| {
            Error::io(
                format!("cannot read the pool at {}", self.path.display()),
                e,
            )
        })?;
        // A new checkpoint is a new file: the writer changed the index, or
        // the log grew well past the last one. One look at its identity, not
        // a listing of the directory.
        let checkpoint = self.dir.identity(checkpoint::CHECKPOINT_FILE).ok();
        let (same, log, end, walked_to) = {
            let s = self.read();
            (
                s.identity == ident && s.checkpoint_identity == checkpoint,
                s.log.clone(),
                s.end,
                s.walked_to,
            )
        };
        let io = |e| Error::io("cannot read the pool log", e);
        let len = log.len().map_err(io)?;
        // A compacted log or a changed index: load afresh. So too when the log is now
        // shorter than what this handle applied: the writer cut back a batch it could
        // not sync, and what was read of it must not stay.
        if !same || len < end {
            let log = self.dir.open(LOG_FILE, false).map_err(|e| {
                Error::io(
                    format!("cannot open the log of the pool at {}", self.path.display()),
                    e,
                )
            })?;
            let marker = self.end_marker();
            let loaded = load(&*self.dir, log, &self.path, false, true, marker.as_deref())?;
            *self.write_state() = loaded.state;
            *self
                .checkpoint_use
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = loaded.checkpoint;
            return Ok(true);
        }
        if len <= end {
            if len < walked_to {
                // A writer cut the torn tail.
                let mut s = self.write_state();
                s.tail = None;
                s.walked_to = len;
            }
            return Ok(false);
        }
        // Something past what was applied: only as far as the writer has made
        // durable (asked only now, not on every look).
        let len = match self.published_end() {
            durable::Published::End(d) => len.min(d.max(end)),
            durable::Published::Unknown => len,
            durable::Published::Unreadable => end,
        };
        if len <= end {
            return Ok(false);
        }
        // The same torn tail as last time: nothing to search it for again.
        if len == walked_to && !replay::checks_at(&*log, end, len).map_err(io)? {
            return Ok(false);
        }
        let mut s = self.write_state();
        let (start, dim, floor) = (s.end, s.dim, s.next_id);
        let mut changed = false;
        let walk = replay::walk(&*log, start, len, dim, floor, &self.path, |rec, at, raw| {
            s.apply(&rec, at, raw.len());
            changed = true;
            Ok(())
        })?;
        changed |= !walk.damage.is_empty();
        s.walked(walk, len);
        Ok(changed)
    }

    /// The marker file, opened now if it was not there before.
    fn end_marker(&self) -> Option<Arc<dyn Storage>> {
        let mut f = self.end_file.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = durable::open(&*self.dir, false).ok();
        }
        f.clone()
    }

    /// What the writer has published of the log this handle reads.
    fn published_end(&self) -> durable::Published {
        // No writer: what the log holds is all there is (a torn tail included).
        if self.on_disk && !lock::writer_alive(&self.path) {
            return durable::Published::Unknown;
        }
        let Some(f) = self.end_marker() else {
            return durable::Published::Unknown;
        };
        let (generation, created_ms) = {
            let s = self.read();
            (s.generation, s.created_ms)
        };
        durable::read(&*f, generation, created_ms)
    }

    /// Tell readers how far the log is durable (a writer's, after every sync).
    /// A marker that cannot be written only leaves readers behind; it is
    /// reported as a maintenance error.
    fn publish_end(&self) {
        let Some(f) = self
            .end_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let b = {
            let s = self.read();
            durable::encode(s.generation, s.created_ms, s.end)
        };
        if let Err(e) = f.write_at(0, &b) {
            *self
                .maintenance_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(format!(
                "cannot tell readers how far the log is written: {e}"
            ));
        }
    }

    fn auto_refresh(&self) -> Result<()> {
        if self.read_only {
            self.refresh()?;
        }
        Ok(())
    }

    /// Whether the pool is so far over its budget (a tenth more) that an
    /// append waits for the maintenance thread's pass.
    fn over_hard_limit(&self) -> bool {
        let s = self.read();
        s.bytes_on_disk() > s.budget.saturating_add(s.budget / 10)
    }

    /// One maintenance pass (the maintenance thread's): evict when over
    /// budget, compact when dead bytes dominate, keep both indexes in
    /// shape, write a checkpoint when one is due. Failures are kept for
    /// [`Pool::maintenance_error`]; the writes they follow are already
    /// durable.
    fn maintain(&self) {
        if self.read_only {
            return;
        }
        let mut m = self.lock_maint();
        self.maintain_locked(&mut m);
    }

    fn maintain_locked(&self, w: &mut Maint) {
        let mut result = self.govern(w);
        let mut index_changed = false;
        if result.is_ok() {
            result = self.maintain_index(w, &mut index_changed);
        }
        let lexical = self.maintain_lexical(w);
        if result.is_ok() {
            result = lexical;
        }
        // After the vector index changed (a seal every 65,536 slices, a
        // merge, a rewrite), or once the log has grown well past the last
        // checkpoint.
        if index_changed || self.checkpoint_due() {
            let written = self.write_checkpoint(w);
            if result.is_ok() {
                result = written;
            }
        }
        let mut m = self
            .maintenance_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m = result.err().map(|e| e.to_string());
    }

    /// Keep the index in shape: seal the tail, merge segments, rewrite
    /// segments without deleted rows (always when mostly deleted; any with
    /// deletions when the pool is over its budget). Runs under the writer
    /// lock, not the writer's or the state's: appends and searches go on
    /// meanwhile (deletes wait, so a new segment holds no deleted row).
    fn maintain_index(&self, w: &mut Maint, changed: &mut bool) -> Result<()> {
        loop {
            let (prepared, names) = {
                let s = self.read();
                if s.ann.tail_rows() < w.index_retry_at {
                    return Ok(());
                }
                let over = s.bytes_on_disk() > s.budget;
                let Some(job) = s.ann.next_job(over) else {
                    return Ok(());
                };
                (s.ann.prepare(&job), s.namespaces_all().to_vec())
            };
            let built = prepared.build(&*self.dir, self.dim(), &|g| {
                names.get(g as usize).cloned().unwrap_or_default()
            });
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    // Try again once the tail has grown a little more.
                    let s = self.read();
                    w.index_retry_at = s.ann.tail_rows() + s.ann.tuning.seal_rows / 4;
                    return Err(self.write_error("write an index segment", e));
                }
            };
            w.index_retry_at = 0;
            *changed = true;
            let gone = self.write_state().ann.install(built);
            for name in gone {
                self.dir
                    .remove(&name)
                    .map_err(|e| self.write_error("remove a merged index segment", e))?;
            }
        }
    }

    fn govern(&self, m: &mut Maint) -> Result<()> {
        // `rows`: the live slices' rows in the index.
        let (end, total, budget, live, header, rows) = {
            let s = self.read();
            // A compacted log also carries the budget, next id and dictionary.
            let dict = s
                .current_dict
                .and_then(|id| s.dicts.get(&id))
                .map_or(0, |d| d.raw.len() as u64 + 13);
            (
                s.end,
                s.bytes_on_disk(),
                s.budget,
                s.live_bytes,
                s.header_len + 64 + dict + s.checkpoint_bytes,
                s.len() as u64 * s.index_row_bytes(),
            )
        };
        if total > budget {
            // Evict down to a low-water mark, so that the next compaction
            // is a growth unit away rather than one slice away. Each slice
            // counts its record and its row in the index.
            let target = budget - budget / 10;
            let (standings, now) = {
                let s = self.read();
                (s.standings(), s.next_id.saturating_sub(1))
            };
            let held = live + header + rows;
            let v = witness::victims(&standings, held, target.max(header), now, &self.params);
            let evicted = !v.is_empty();
            if evicted {
                let mut w = self.lock_writer()?;
                self.commit(&mut w, &[Rec::Evict(v)], "evict slices over the budget")?;
            }
            // Compact when that reclaims something worth a rewrite (nothing
            // may be evictable when pinned slices fill the budget).
            let dead = self.dead_bytes();
            if evicted || dead * 20 >= end {
                return self.compact_locked(m);
            }
            return Ok(());
        }
        let dead = end.saturating_sub(header + live);
        if dead > MIN_DEAD_TO_COMPACT && dead > live {
            return self.compact_locked(m);
        }
        Ok(())
    }

    /// Rewrite the log with only live slices and switch to it atomically.
    /// Appends go on meanwhile; what they wrote is copied over at the end.
    pub fn compact(&self) -> Result<()> {
        drop(self.lock_writer()?);
        let mut m = self.lock_maint();
        self.compact_locked(&mut m)
    }

    /// Compact; a compaction that fails removes the new log it was writing and
    /// leaves the pool as it was.
    fn compact_locked(&self, m: &mut Maint) -> Result<()> {
        let result = self.compact_into_new_log(m);
        if result.is_err() {
            let _ = self.dir.remove(COMPACT_FILE);
        }
        result
    }

    fn compact_into_new_log(&self, m: &mut Maint) -> Result<()> {
        let io = |what: &str, e| {
            Error::io(
                format!(
                    "cannot {what} while compacting the pool at {}",
                    self.path.display()
                ),
                e,
            )
        };
        // The pool as of one instant (`snap_end` of the log): its live slices
        // are rewritten while appends go on; deletes and evictions wait on
        // the maintenance lock held here, so none of them dies meanwhile.
        let (old, dim, generation, next_id, budget, items, dict, snap_end) = {
            let s = self.read();
            let items: Vec<(u64, u64, u32, u32, u64, bool)> = s
                .live()
                .map(|e| {
                    let (uses, last) = s.uses(e.id);
                    (e.id, e.offset, e.bytes, uses, last, e.pinned())
                })
                .collect();
            let dict = s
                .current_dict
                .and_then(|id| s.dicts.get(&id).map(|d| (id, d.raw.clone())));
            (
                s.log.clone(),
                s.dim,
                s.generation,
                s.next_id,
                s.budget,
                items,
                dict,
                s.end,
            )
        };
        let fp = self.fingerprint.clone();
        self.dir
            .remove(COMPACT_FILE)
            .map_err(|e| io("remove a stale file", e))?;
        let new = self
            .dir
            .open(COMPACT_FILE, true)
            .map_err(|e| io("create the new log", e))?;
        let header = Header {
            version: format::VERSION,
            dim: dim as u32,
            generation: generation + 1,
            created_ms: now_ms(),
            fingerprint: fp,
        };
        let created_ms = header.created_ms;
        let mut buf = header.encode();
        let header_len = buf.len() as u64;
        format::encode(&Rec::Budget(budget), &mut buf);
        // The last record written, which the checkpoint names.
        let mut last_record = buf.len() as u64;
        format::encode(&Rec::NextId(next_id), &mut buf);
        if let Some((id, raw)) = &dict {
            last_record = buf.len() as u64;
            format::encode(
                &Rec::Dict {
                    id: *id,
                    bytes: raw.clone(),
                },
                &mut buf,
            );
        }
        let dict_id = dict.as_ref().map(|d| d.0);
        let mut compressor = match &dict {
            Some((_, raw)) => Some(
                zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, raw)
                    .map_err(|e| io("load the dictionary", e))?,
            ),
            None => None,
        };
        let mut written = 0u64;
        let mut offsets = Vec::with_capacity(items.len());
        let mut rec = Vec::new();
        for &(id, offset, bytes, uses, last_used_seq, pinned) in &items {
            rec.resize(bytes as usize, 0);
            old.read_at(offset, &mut rec)
                .map_err(|e| io("read a slice", e))?;
            let parsed = if format::check(&rec) {
                format::decode_slice(&rec[RECORD_HEADER..], dim)
            } else {
                None
            };
            let Some(mut s) = parsed.filter(|s| s.id == id) else {
                return Err(
                    self.corrupt(format!("slice {id} at offset {offset} fails its checksum"))
                );
            };
            s.uses = uses;
            s.last_used_seq = last_used_seq;
            s.pinned = pinned;
            if s.dict != dict_id {
                // Older text joins the current dictionary.
                let text = self.text_of(&s)?;
                s.text_z = match &mut compressor {
                    Some(c) => c.compress(text.as_bytes()),
                    None => zstd::bulk::compress(text.as_bytes(), ZSTD_LEVEL),
                }
                .map_err(|e| io("compress text", e))?;
                s.dict = dict_id;
            }
            let at = written + buf.len() as u64;
            let n = format::encode(&Rec::Slice(s), &mut buf);
            offsets.push((at, n as u32));
            last_record = at;
            if buf.len() >= READ_CHUNK {
                new.write_at(written, &buf)
                    .map_err(|e| io("write the new log", e))?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        new.write_at(written, &buf)
            .map_err(|e| io("write the new log", e))?;
        written += buf.len() as u64;
        new.sync().map_err(|e| io("sync the new log", e))?;
        // What was appended meanwhile follows byte for byte, under the
        // writer lock: appends wait only for this copy, its sync and the
        // rename.
        let w = self.lock_writer()?;
        let (end_now, last_now) = {
            let s = self.read();
            (s.end, s.last_record)
        };
        let base = written;
        let mut at = snap_end;
        while at < end_now {
            let n = (end_now - at).min(READ_CHUNK as u64) as usize;
            buf.resize(n, 0);
            old.read_at(at, &mut buf)
                .map_err(|e| io("read what was appended meanwhile", e))?;
            new.write_at(written, &buf)
                .map_err(|e| io("write the new log", e))?;
            written += n as u64;
            at += n as u64;
        }
        if end_now > snap_end {
            last_record = last_now - snap_end + base;
        }
        new.sync().map_err(|e| io("sync the new log", e))?;
        self.dir
            .rename(COMPACT_FILE, LOG_FILE)
            .map_err(|e| io("install the new log", e))?;
        let mut s = self.write_state();
        let mut moves: Vec<(u64, u64, u32)> = items
            .iter()
            .zip(offsets)
            .map(|(&(id, ..), (off, n))| (id, off, n))
            .collect();
        moves.extend(
            s.live()
                .filter(|e| e.id >= next_id)
                .map(|e| (e.id, e.offset - snap_end + base, e.bytes)),
        );
        s.relocate(&moves);
        s.identity = new.identity();
        s.log = new;
        s.generation = generation + 1;
        s.created_ms = created_ms;
        s.header_len = header_len;
        s.end = written;
        s.last_record = last_record;
        s.walked_to = written;
        s.checkpoint_end = 0;
        drop(s);
        self.publish_end();
        drop(w);
        // The old checkpoint belongs to the old log: write the new one now,
        // or the next open replays the whole log.
        self.write_checkpoint(m)
    }

    /// Write the checkpoint of the state as it is now, replacing the last
    /// one (a writer's; see [`checkpoint`]). Nothing to do when the log has
    /// not moved since the last one.
    pub fn checkpoint(&self) -> Result<()> {
        drop(self.lock_writer()?);
        let mut m = self.lock_maint();
        self.write_checkpoint(&mut m)
    }

    /// Under the maintenance lock, so that a compaction's checkpoint and
    /// this one never cross.
    fn write_checkpoint(&self, _m: &mut Maint) -> Result<()> {
        let (bytes, generation, end) = {
            let s = self.read();
            if s.checkpoint_end == s.end {
                return Ok(());
            }
            let n = (s.end - s.last_record) as usize;
            let mut rec = vec![0u8; n];
            s.log
                .read_at(s.last_record, &mut rec)
                .map_err(|e| self.write_error("read the log for a checkpoint", e))?;
            if n > 0 && !format::check(&rec) {
                return Err(self.corrupt(format!(
                    "the record at offset {} fails its checksum; run `uctx repair --pool {}`",
                    s.last_record,
                    self.path.display()
                )));
            }
            let mark = checkpoint::Mark {
                generation: s.generation,
                created_ms: s.created_ms,
                header_len: s.header_len,
                end: s.end,
                last_at: s.last_record,
                last_len: n as u32,
                last_crc: if n > 0 { checkpoint::crc_of(&rec) } else { 0 },
            };
            let mut p = checkpoint::begin();
            s.save(&mut p);
            s.ann.save(&mut p);
            s.lex.save(&mut p);
            (checkpoint::finish(&mark, p), s.generation, s.end)
        };
        if let Err(e) = checkpoint::write(&*self.dir, &bytes) {
            let _ = self.dir.remove(checkpoint::CHECKPOINT_TMP);
            return Err(self.write_error("write the checkpoint", e));
        }
        let mut s = self.write_state();
        if s.generation == generation {
            s.checkpoint_end = end;
            s.checkpoint_bytes = bytes.len() as u64;
        }
        Ok(())
    }

    /// Whether the log has grown enough past the last checkpoint to write
    /// another: [`checkpoint::EVERY_LOG_BYTES`], or a quarter of the last
    /// checkpoint's size when that is more.
    fn checkpoint_due(&self) -> bool {
        let s = self.read();
        s.end - s.checkpoint_end.min(s.end)
            >= checkpoint::EVERY_LOG_BYTES.max(s.checkpoint_bytes / 4)
    }

    /// How this handle's latest load used the checkpoint: loaded it and
    /// replayed the log after it, or replayed the whole log (none, or one
    /// not used, and why).
    pub fn checkpoint_use(&self) -> checkpoint::Opened {
        self.checkpoint_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The highest turn among the live slices of namespace `ns` (`None`
    /// when it has none), from the slice table.
    pub fn last_turn(&self, ns: &str) -> Result<Option<u64>> {
        self.auto_refresh()?;
        self.read().last_turn(ns).map_err(|e| {
            Error::io(
                format!("cannot read the pool at {}", self.path.display()),
                e,
            )
        })
    }

    /// Ids of the live slices in scope, in id order, from the slice table
    /// (no record is read).
    pub fn ids(&self, scope: Scope<'_>) -> Vec<u64> {
        let _ = self.auto_refresh();
        self.read().live_ids(scope.name(), |_| true)
    }

    /// Ids of the pinned live slices in scope, in id order, from the slice
    /// table.
    pub fn pinned(&self, scope: Scope<'_>) -> Vec<u64> {
        let _ = self.auto_refresh();
        self.read().live_ids(scope.name(), |e| e.pinned())
    }

    /// A digest of everything the replayed state holds, with namespaces by
    /// name (their numbers depend on the order of the replay): tests compare
    /// a load from the checkpoint with a full replay.
    #[doc(hidden)]
    pub fn state_digest(&self) -> String {
        let _ = self.lex_catch_up(None);
        let s = self.read();
        s.digest()
    }
}

thread_local! {
    /// One zstd decompression context per thread: creating one costs more than
    /// decompressing a slice's text.
    static DCTX: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
}

/// Decompress `src` (at most `len` bytes once decompressed) with `dict`, if any.
fn unzstd(
    src: &[u8],
    len: usize,
    dict: Option<&zstd::dict::DecoderDictionary<'_>>,
) -> Option<Vec<u8>> {
    DCTX.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        let mut out = Vec::with_capacity(len);
        match dict {
            Some(d) => c.decompress_using_ddict(&mut out, src, d.as_ddict()),
            None => c.decompress(&mut out, src),
        }
        .ok()?;
        Some(out)
    })
}

fn no_pool(path: &Path) -> Error {
    Error::io(
        format!(
            "no pool at {} — create one with `uctx init --pool {}`",
            path.display(),
            path.display()
        ),
        std::io::Error::new(std::io::ErrorKind::NotFound, "pool log not found"),
    )
}

/// The log's header and its length in bytes.
fn read_header(log: &dyn Storage, path: &Path) -> Result<(Header, usize)> {
    let io = |e| Error::io(format!("cannot read the pool at {}", path.display()), e);
    let corrupt = |detail: &str| Error::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let len = log.len().map_err(io)?;
    let mut first = [0u8; 16];
    if len < 16 {
        return Err(corrupt("the log is shorter than its header"));
    }
    log.read_at(0, &mut first).map_err(io)?;
    let header_len = match Header::peek_len(&first) {
        Ok((_, n)) => n,
        Err(e) => return Err(header_error(e, path)),
    };
    if (len as usize) < header_len {
        return Err(corrupt("the log is shorter than its header"));
    }
    let mut hb = vec![0u8; header_len];
    log.read_at(0, &mut hb).map_err(io)?;
    let header = Header::decode(&hb).map_err(|e| header_error(e, path))?;
    Ok((header, header_len))
}

/// The names of the index segment files in `dir`, sorted.
pub(super) fn segment_files(dir: &dyn Dir, path: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = dir
        .list()
        .map_err(|e| Error::io(format!("cannot list the pool at {}", path.display()), e))?
        .into_iter()
        .filter(|n| ann::is_segment_file(n) || lex::is_segment_file(n))
        .collect();
    names.sort();
    Ok(names)
}

/// What [`load`] found.
struct Loaded {
    state: State,
    header: Header,
    /// The torn tail a writer cut.
    cut: Option<TornTail>,
    checkpoint: checkpoint::Opened,
}

/// What a checkpoint restored: where replay resumes, and the index
/// segments it knew (the others were written after it).
struct Restored {
    from: u64,
    ann: std::collections::HashSet<String>,
    lex: std::collections::HashSet<String>,
}

/// Load the checkpoint into the fresh `state`, with the index segments it
/// names. `Ok(Err(None))`: there is none; `Ok(Err(Some(why)))`: there is
/// one that does not belong to this log or does not read (`state` must
/// then be thrown away). Only failing to read the index is an error.
fn restore(
    dir: &dyn Dir,
    path: &Path,
    log: &dyn Storage,
    header: &Header,
    len: u64,
    writer: bool,
    state: &mut State,
) -> Result<std::result::Result<Restored, Option<String>>> {
    let bytes = match checkpoint::read(dir) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Err(None)),
        Err(e) => return Ok(Err(Some(format!("it cannot be read: {e}")))),
    };
    let (mark, body) = match checkpoint::parse(&bytes) {
        Ok(x) => x,
        Err(why) => return Ok(Err(Some(why))),
    };
    let fits = checkpoint::belongs(
        &mark,
        log,
        len,
        header.generation,
        header.created_ms,
        state.header_len,
    );
    match fits {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Ok(Err(Some(why))),
        Err(e) => return Ok(Err(Some(format!("the log cannot be read: {e}")))),
    }
    let mut t = checkpoint::Take::new(body);
    if state.load(&mut t).is_none() {
        return Ok(Err(Some("its slice table does not read".into())));
    }
    let index_error = |e| {
        Error::io(
            format!("cannot read the index of the pool at {}", path.display()),
            e,
        )
    };
    let dim = state.dim;
    let (mut ann, _) = {
        let st = &mut *state;
        ann::Ann::open(dir, dim, writer, &mut |n| st.intern(n)).map_err(index_error)?
    };
    let known_ann = match ann.restore(&mut t) {
        Ok(k) => k,
        Err(why) => return Ok(Err(Some(why))),
    };
    state.ann = ann;
    let (mut lex, _) = {
        let st = &mut *state;
        lex::Lex::open(dir, writer, &mut |n| st.intern(n)).map_err(index_error)?
    };
    let Some(known_lex) = lex.restore(&mut t) else {
        return Ok(Err(Some("its lexical index part does not read".into())));
    };
    state.lex = lex;
    if !t.done() {
        return Ok(Err(Some("it holds more than it describes".into())));
    }
    state.end = mark.end;
    state.last_record = mark.last_at;
    state.walked_to = mark.end;
    state.checkpoint_end = mark.end;
    state.checkpoint_bytes = bytes.len() as u64;
    Ok(Ok(Restored {
        from: mark.end,
        ann: known_ann,
        lex: known_lex,
    }))
}

/// Read the header and load the state: from the checkpoint and the log
/// after it when the checkpoint belongs to this log, else by replaying the
/// whole log (and saying why). The index segments are mapped; a writer cuts
/// a torn tail (a reader ignores it), deletes damaged or superseded
/// segments, and refuses a log damaged in what it replayed
/// ([`Error::Damaged`]; a reader skips the damage).
fn load(
    dir: &dyn Dir,
    log: Arc<dyn Storage>,
    path: &Path,
    writer: bool,
    use_checkpoint: bool,
    published: Option<&dyn Storage>,
) -> Result<Loaded> {
    let io = |e| Error::io(format!("cannot read the pool at {}", path.display()), e);
    let len = log.len().map_err(io)?;
    let (header, header_len) = read_header(&*log, path)?;
    // A reader takes the log only as far as its writer has published it durable.
    let len = match published.map(|f| durable::read(f, header.generation, header.created_ms)) {
        Some(durable::Published::End(d)) => len.min(d.max(header_len as u64)),
        _ => len,
    };
    let dim = header.dim as usize;
    let fresh = || {
        let mut s = State::new(dim, log.clone(), header.generation, header_len as u64);
        s.created_ms = header.created_ms;
        s
    };
    // Taken before the checkpoint is read: a newer one makes a reader load again.
    let checkpoint_identity = dir.identity(checkpoint::CHECKPOINT_FILE).ok();
    let mut state = fresh();
    let restored = if use_checkpoint {
        restore(dir, path, &*log, &header, len, writer, &mut state)?
    } else {
        Err(Some("a full replay was asked for".into()))
    };
    let (used, known) = match restored {
        Ok(r) => (
            checkpoint::Opened::Loaded {
                from: r.from,
                replayed: len - r.from,
            },
            Some((r.ann, r.lex)),
        ),
        Err(why) => {
            state = fresh();
            let (ann, _) = {
                let st = &mut state;
                ann::Ann::open(dir, dim, writer, &mut |n| st.intern(n)).map_err(|e| {
                    Error::io(
                        format!("cannot read the index of the pool at {}", path.display()),
                        e,
                    )
                })?
            };
            state.ann = ann;
            let used = match why {
                None => checkpoint::Opened::Missing,
                Some(why) => checkpoint::Opened::Rejected { why },
            };
            (used, None)
        }
    };
    state.checkpoint_identity = checkpoint_identity;
    if known.is_none() && checkpoint_identity.is_some() {
        // One not used still takes its room on disk until it is replaced.
        state.checkpoint_bytes = dir
            .open(checkpoint::CHECKPOINT_FILE, false)
            .and_then(|f| f.len())
            .unwrap_or(0);
    }
    let (from, floor) = (state.end, state.next_id);
    let walk = replay::walk(&*log, from, len, dim, floor, path, |rec, at, raw| {
        state.apply(&rec, at, raw.len());
        Ok(())
    })?;
    state.walked(walk, len);
    if let (true, Some(d)) = (writer, state.damage.first()) {
        return Err(Error::Damaged {
            log: path.join(LOG_FILE),
            offset: d.offset,
            bytes: d.bytes,
            records_after: d.records_after,
            more: state.damage.len() - 1,
            pool: path.to_path_buf(),
        });
    }
    let lex_error = |e| {
        Error::io(
            format!(
                "cannot read the lexical index of the pool at {}",
                path.display()
            ),
            e,
        )
    };
    let mut ann = std::mem::replace(&mut state.ann, ann::Ann::new(dim));
    match &known {
        Some((known_ann, known_lex)) => {
            // Only segments written after the checkpoint need their deletions found.
            ann.settle_others(known_ann, &|id| state.contains(id));
            state.ann = ann;
            let mut lex = std::mem::take(&mut state.lex);
            lex.settle_others(known_lex, &|a, b| state.live_range(a, b).count(), &|id| {
                state.contains(id)
            });
            state.lex = lex;
        }
        None => {
            ann.settle(&|id| state.contains(id));
            state.ann = ann;
            lex::open_into(&mut state, dir, writer).map_err(lex_error)?;
        }
    }
    state.shrink();
    let cut = state.tail.filter(|_| writer);
    if let Some(tail) = cut {
        log.truncate(tail.offset)
            .and_then(|_| log.sync())
            .map_err(|e| {
                Error::io(
                    format!("cannot cut the torn tail of the pool at {}", path.display()),
                    e,
                )
            })?;
        state.tail = None;
        state.walked_to = tail.offset;
    }
    Ok(Loaded {
        state,
        header,
        cut,
        checkpoint: used,
    })
}

fn header_error(e: HeaderError, path: &Path) -> Error {
    match e {
        HeaderError::BadMagic => Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{LOG_FILE} is not a uctx pool log"),
        },
        HeaderError::Version(v) => Error::Version {
            path: path.to_path_buf(),
            found: v,
            supported: format::VERSION,
            fix: if v > format::VERSION {
                "it was written by a newer uctx: upgrade uctx to open it".into()
            } else {
                "this format is no longer read: re-ingest the sources into a new pool".into()
            },
        },
        HeaderError::Damaged(d) => Error::Corrupt {
            path: path.to_path_buf(),
            detail: d.into(),
        },
    }
}
