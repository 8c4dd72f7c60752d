//! What the vector and lexical indexes share about their segment files:
//! writing one durably under a temporary name, and finding, checking and
//! choosing among those in the pool directory on open.

use std::io;

use super::storage::{Dir, Mapped};

/// A segment being written is named with this after its final name.
pub const TMP_SUFFIX: &str = ".tmp";

/// Write `bytes` as segment file `name`: under a temporary name, synced,
/// then renamed into place (which syncs the directory). Returns its map.
pub fn write(dir: &dyn Dir, name: &str, bytes: &[u8]) -> io::Result<Mapped> {
    let tmp = format!("{name}{TMP_SUFFIX}");
    dir.remove(&tmp)?;
    let f = dir.open(&tmp, true)?;
    f.write_at(0, bytes)?;
    f.sync()?;
    drop(f);
    dir.rename(&tmp, name)?;
    dir.map(name)
}

/// Whether a segment file's last four bytes are the CRC-32 of the rest
/// (both index formats end so). Reads every byte: checked when a segment is
/// written and by `uctx doctor --verify` and `uctx repair`, not on open.
pub fn checksum_ok(b: &[u8]) -> bool {
    let Some(body) = b.len().checked_sub(4) else {
        return false;
    };
    super::le::get_u32(b, body) == Some(crc32fast::hash(&b[..body]))
}

/// Every segment file of either index in `dir` that fails its checksum,
/// with the reason.
pub fn verify_all(dir: &dyn Dir) -> io::Result<Vec<(String, String)>> {
    let mut names = dir.list()?;
    names.sort();
    let mut bad = Vec::new();
    for name in names {
        if !(super::ann::is_segment_file(&name) || super::lex::is_segment_file(&name)) {
            continue;
        }
        let map = dir.map(&name)?;
        if !checksum_ok((*map).as_ref()) {
            bad.push((name, "fails its checksum".to_string()));
        }
    }
    Ok(bad)
}

/// Segments found on open.
pub struct Opened<S> {
    /// Those in use, by first id: disjoint ranges.
    pub kept: Vec<S>,
    /// The highest generation among every file that parsed.
    pub max_gen: u64,
    /// Files rejected: damaged, of another format, or superseded.
    pub rejected: usize,
    /// Names of the segment files left in the directory.
    pub files: Vec<String>,
}

/// Map and parse every file of `dir` named `prefix…suffix`. Damaged or
/// unreadable ones are skipped; where ranges overlap (a crash after a merge
/// was installed, before its sources were deleted) the wider range, then the
/// newer generation, wins. A writer deletes what it skips, and unfinished
/// files. `span` gives a segment's (first id, last id, generation).
pub fn open<S>(
    dir: &dyn Dir,
    writer: bool,
    prefix: &str,
    suffix: &str,
    mut parse: impl FnMut(&str, Mapped) -> Result<S, String>,
    span: impl Fn(&S) -> (u64, u64, u64),
) -> io::Result<Opened<S>> {
    let mut names = dir.list()?;
    names.sort();
    let (mut found, mut rejected, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        if writer && name.starts_with(prefix) && name.ends_with(TMP_SUFFIX) {
            dir.remove(&name)?;
        }
        if !(name.starts_with(prefix) && name.ends_with(suffix)) {
            continue;
        }
        files.push(name.clone());
        match parse(&name, dir.map(&name)?) {
            Ok(s) => found.push((name, s)),
            Err(_) => rejected.push(name),
        }
    }
    let max_gen = found.iter().map(|(_, s)| span(s).2).max().unwrap_or(0);
    found.sort_by(|(_, a), (_, b)| {
        let (a, b) = (span(a), span(b));
        (b.1 - b.0).cmp(&(a.1 - a.0)).then(b.2.cmp(&a.2))
    });
    let mut kept: Vec<S> = Vec::new();
    for (name, s) in found {
        let (first, last, _) = span(&s);
        let overlaps = kept.iter().any(|t| {
            let (f, l, _) = span(t);
            first <= l && f <= last
        });
        if overlaps {
            rejected.push(name);
        } else {
            kept.push(s);
        }
    }
    kept.sort_by_key(|s| span(s).0);
    if writer {
        for name in &rejected {
            dir.remove(name)?;
        }
        files.retain(|f| !rejected.contains(f));
    }
    Ok(Opened {
        kept,
        max_gen,
        rejected: rejected.len(),
        files,
    })
}
