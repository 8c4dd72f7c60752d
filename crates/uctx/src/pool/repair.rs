//! `uctx repair`: rewrite a damaged log with every record that checks,
//! keeping the damaged file beside it (see `docs/format.md`, *Replay and
//! repair*).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::Rec;
use super::lock::WriterLock;
use super::replay::{self, Damage, TornTail};
use super::storage::{Dir, FileDir};
use super::{no_pool, read_header, segment_files, Pool, LOG_FILE, READ_CHUNK};
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
    /// the index from the log).
    pub segments_removed: usize,
}

impl Pool {
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
        };
        if walk.damage.is_empty() && walk.tail.is_none() {
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
