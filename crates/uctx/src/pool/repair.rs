//! `uctx repair`: rewrite a damaged log with every record that checks,
//! keeping the damaged file beside it (see `docs/format.md`, *Replay and
//! repair*).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checkpoint::{Opened, CHECKPOINT_FILE};
use super::format::Rec;
use super::lock::WriterLock;
use super::replay::{self, Damage, TornTail};
use super::storage::{Dir, FileDir};
use super::{load, no_pool, read_header, segfile, segment_files, Pool, LOG_FILE, READ_CHUNK};
use crate::{Error, Result};

/// The repaired log being written; renamed over [`LOG_FILE`] when complete.
pub(super) const REPAIR_FILE: &str = "pool.log.repair";
/// A damaged log kept by a repair is named this, then the Unix time.
pub const DAMAGED_PREFIX: &str = "pool.log.damaged-";

/// What a repair did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Repaired {
    /// The log repaired.
    pub log: PathBuf,
    /// Whether a new log was written (`false`: the log was whole).
    pub rewritten: bool,
    /// Records kept, slice records among them, and the new log's bytes.
    pub kept_records: u64,
    pub kept_slices: u64,
    pub kept_bytes: u64,
    /// The damaged stretches left out.
    pub lost: Vec<Damage>,
    /// The torn tail left out.
    pub torn_tail: Option<TornTail>,
    /// The name the damaged log is kept under, beside the new one.
    pub damaged_copy: Option<String>,
    /// Index segment files removed (derived data: the next writer rebuilds
    /// the index from the log): all of them when the log was rewritten,
    /// else those that fail their checksum.
    pub segments_removed: usize,
    /// Whether the checkpoint was removed (it is derived too: the next open
    /// replays the whole log, and the next writer writes a new one).
    pub checkpoint_removed: bool,
}

/// What `uctx doctor --verify` found: every byte of the log, the index
/// segments and the checkpoint checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Records of the log that check, and its length.
    pub records: u64,
    pub log_bytes: u64,
    /// Damaged stretches of the log (`uctx repair` rewrites it without them).
    pub damage: Vec<Damage>,
    pub torn_tail: Option<TornTail>,
    /// Index segment files whose checksum fails, with why (`uctx repair`
    /// removes them; the next writer rebuilds them from the log).
    pub bad_segments: Vec<(String, String)>,
    /// Index segment files checked.
    pub segments: usize,
    /// How an open uses the checkpoint.
    pub checkpoint: Opened,
    /// Whether the state loaded from the checkpoint (and the log after it)
    /// is the state a full replay of the log gives; `None` without a
    /// checkpoint in use.
    pub checkpoint_agrees: Option<bool>,
}

impl Verified {
    /// Whether nothing is wrong.
    pub fn whole(&self) -> bool {
        self.damage.is_empty()
            && self.torn_tail.is_none()
            && self.bad_segments.is_empty()
            && self.checkpoint_agrees != Some(false)
    }
}

impl Pool {
    /// Check every byte of the pool at `dir`: walk the whole log, check
    /// every index segment's checksum, and compare the state loaded from the
    /// checkpoint with a full replay. Takes no lock and changes nothing.
    pub fn verify(dir: &Path) -> Result<Verified> {
        if !dir.join(LOG_FILE).exists() {
            return Err(no_pool(dir));
        }
        Pool::verify_with(Arc::new(FileDir::new(dir)), dir)
    }

    /// [`Pool::verify`] on any [`Dir`]. `path` only names the pool in
    /// messages.
    pub fn verify_with(dir: Arc<dyn Dir>, path: &Path) -> Result<Verified> {
        let io = |e| Error::io(format!("cannot read the pool at {}", path.display()), e);
        if !dir.exists(LOG_FILE) {
            return Err(no_pool(path));
        }
        let log = dir.open(LOG_FILE, false).map_err(io)?;
        let len = log.len().map_err(io)?;
        let (header, header_len) = read_header(&*log, path)?;
        let walk = replay::walk(
            &*log,
            header_len as u64,
            len,
            header.dim as usize,
            1,
            path,
            |_, _, _| Ok(()),
        )?;
        let bad_segments = segfile::verify_all(&*dir).map_err(io)?;
        let segments = segment_files(&*dir, path)?.len();
        let with = load(&*dir, log.clone(), path, false, true, None)?;
        let checkpoint = with.checkpoint.clone();
        let checkpoint_agrees = if checkpoint.replayed_whole() {
            None
        } else {
            let whole = load(&*dir, log, path, false, false, None)?;
            Some(with.state.digest() == whole.state.digest())
        };
        Ok(Verified {
            records: walk.records,
            log_bytes: len,
            damage: walk.damage,
            torn_tail: walk.tail,
            bad_segments,
            segments,
            checkpoint,
            checkpoint_agrees,
        })
    }

    /// Rewrite the log of the pool at `dir` with every record that checks,
    /// leaving out damaged stretches and a torn tail; the damaged log is
    /// kept beside it under [`DAMAGED_PREFIX`]`<unix time>`. Takes the
    /// writer's lock. A whole log is left as it is.
    pub fn repair(dir: &Path) -> Result<Repaired> {
        if !dir.join(LOG_FILE).exists() {
            return Err(no_pool(dir));
        }
        let _lock = WriterLock::acquire(dir)?;
        Pool::repair_with(Arc::new(FileDir::new(dir)), dir)
    }

    /// [`Pool::repair`] on any [`Dir`]. Takes no OS lock: the caller
    /// guarantees no writer has the pool open. `path` only names the pool
    /// in messages.
    pub fn repair_with(dir: Arc<dyn Dir>, path: &Path) -> Result<Repaired> {
        let io = |what: &str, e| {
            Error::io(
                format!(
                    "cannot {what} while repairing the pool at {}",
                    path.display()
                ),
                e,
            )
        };
        if !dir.exists(LOG_FILE) {
            return Err(no_pool(path));
        }
        dir.remove(REPAIR_FILE)
            .map_err(|e| io("remove an unfinished repair", e))?;
        let log = dir
            .open(LOG_FILE, false)
            .map_err(|e| io("open the log", e))?;
        let len = log.len().map_err(|e| io("read the log", e))?;
        let (header, header_len) = read_header(&*log, path)?;
        let dim = header.dim as usize;
        let mut slices = 0;
        let walk = replay::walk(&*log, header_len as u64, len, dim, 1, path, |rec, _, _| {
            slices += u64::from(matches!(rec, Rec::Slice(_)));
            Ok(())
        })?;
        let mut done = Repaired {
            log: path.join(LOG_FILE),
            rewritten: false,
            kept_records: walk.records,
            kept_slices: slices,
            kept_bytes: len,
            lost: walk.damage.clone(),
            torn_tail: walk.tail,
            damaged_copy: None,
            segments_removed: 0,
            checkpoint_removed: false,
        };
        if walk.damage.is_empty() && walk.tail.is_none() {
            // A whole log: only segments that fail their checksum go.
            let bad = segfile::verify_all(&*dir).map_err(|e| io("check the index segments", e))?;
            for (name, _) in &bad {
                dir.remove(name)
                    .map_err(|e| io("remove a damaged index segment", e))?;
            }
            done.segments_removed = bad.len();
            if !bad.is_empty() && dir.exists(CHECKPOINT_FILE) {
                dir.remove(CHECKPOINT_FILE)
                    .map_err(|e| io("remove the checkpoint", e))?;
                done.checkpoint_removed = true;
            }
            return Ok(done);
        }
        // Keep the header, then each run of records between damaged stretches.
        let mut runs = Vec::with_capacity(walk.damage.len() + 2);
        runs.push((0, header_len as u64));
        let mut at = header_len as u64;
        for d in &walk.damage {
            runs.push((at, d.offset));
            at = d.offset + d.bytes;
        }
        runs.push((at, walk.end));
        let new = dir
            .open(REPAIR_FILE, true)
            .map_err(|e| io("create the new log", e))?;
        let mut written = 0u64;
        let mut buf = Vec::new();
        let copied = runs.iter().try_for_each(|&(from, to)| {
            let mut p = from;
            while p < to {
                buf.resize(((to - p) as usize).min(READ_CHUNK), 0);
                log.read_at(p, &mut buf)?;
                new.write_at(written, &buf)?;
                p += buf.len() as u64;
                written += buf.len() as u64;
            }
            Ok(())
        });
        if let Err(e) = copied.and_then(|_| new.sync()) {
            let _ = dir.remove(REPAIR_FILE);
            return Err(io("write the new log", e));
        }
        // The new log must hold exactly the records kept, whole.
        let check = replay::walk(
            &*new,
            header_len as u64,
            written,
            dim,
            1,
            path,
            |_, _, _| Ok(()),
        )?;
        if check.records != walk.records || !check.damage.is_empty() || check.tail.is_some() {
            let _ = dir.remove(REPAIR_FILE);
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: "the repaired log did not read back whole; the damaged log is untouched"
                    .into(),
            });
        }
        // The index is derived from the log: a lost delete may bring back
        // slices that a rewritten segment no longer holds, so every segment
        // goes, before the new log is installed. The next writer rebuilds it.
        let segments = segment_files(&*dir, path)?;
        for name in &segments {
            dir.remove(name)
                .map_err(|e| io("remove an index segment", e))?;
        }
        // So is the checkpoint: the repaired log keeps the old one's header.
        if dir.exists(CHECKPOINT_FILE) {
            dir.remove(CHECKPOINT_FILE)
                .map_err(|e| io("remove the checkpoint", e))?;
            done.checkpoint_removed = true;
        }
        let copy = damaged_name(&*dir);
        dir.link(LOG_FILE, &copy)
            .map_err(|e| io("keep the damaged log", e))?;
        dir.rename(REPAIR_FILE, LOG_FILE)
            .map_err(|e| io("install the new log", e))?;
        done.rewritten = true;
        done.kept_bytes = written;
        done.damaged_copy = Some(copy);
        done.segments_removed = segments.len();
        Ok(done)
    }
}

/// A name for the damaged log that no file has yet.
fn damaged_name(dir: &dyn Dir) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{DAMAGED_PREFIX}{secs}");
    let mut name = base.clone();
    let mut n = 1;
    while dir.exists(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}
