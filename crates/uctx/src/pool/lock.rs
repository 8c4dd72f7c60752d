//! One writer per pool directory: an OS file lock on `LOCK`, which also
//! records who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{Error, Result};

pub const LOCK_FILE: &str = "LOCK";

/// Held for as long as the writer lives; the OS releases it when the process dies.
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open the lock file {}", path.display()), e))?;
        // A lock can outlive its holder by a moment: a process that forks
        // (to start a child) shares the lock until the child execs. Retry
        // briefly before naming a holder.
        let mut tries = 0;
        let locked = loop {
            match file.try_lock() {
                Err(TryLockError::WouldBlock) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r,
            }
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another writer (it has not recorded itself yet)".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", path.display()), e))
            }
        }
        let me = holder_description();
        let write = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.sync_data());
        write
            .map_err(|e| Error::io(format!("cannot record the writer in {}", path.display()), e))?;
        Ok(WriterLock { _file: file })
    }
}

/// "pid 123 (uctx) since unix time 1700000000": the process, its program
/// name and when it took the lock. Never its arguments: the file stays
/// after the writer exits, other users can read it, and an argument can be
/// a secret (`--api-key`).
pub fn holder_description() -> String {
    let program: String = std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect()
        })
        .filter(|n: &String| !n.is_empty())
        .unwrap_or_else(|| "unknown program".into());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "pid {} ({program}) since unix time {since}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_process_is_refused_and_names_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(tmp.path()).unwrap();
        let err = WriterLock::acquire(tmp.path()).err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        WriterLock::acquire(tmp.path()).unwrap();
    }

    #[test]
    fn the_lock_records_no_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let _held = WriterLock::acquire(tmp.path()).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        let program = std::env::args_os().next().unwrap();
        let program = Path::new(&program).file_name().unwrap().to_string_lossy();
        // Exactly the pid, the program's name and a time: no argument.
        let prefix = format!("pid {} ({program}) since unix time ", std::process::id());
        let since = text
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{text:?}"));
        assert!(since.parse::<u64>().is_ok(), "{text:?}");
    }
}
