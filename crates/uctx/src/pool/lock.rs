//! One writer per pool directory: an OS file lock on `LOCK`, which also
//! records who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::OnceLock;

use crate::{Error, Result};

pub const LOCK_FILE: &str = "LOCK";

/// What the writer is doing, as its program names it (a subcommand such as
/// `ingest`): recorded in `LOCK` so that a second writer's error can say who
/// holds the pool. Set once, by the program, before opening a pool.
static PURPOSE: OnceLock<String> = OnceLock::new();

/// Name what this process opens pools for (`ingest`, `chat`, …). Control
/// characters are dropped and the name is cut at 32 characters; only the
/// first call counts.
pub fn set_purpose(purpose: &str) {
    let clean: String = purpose
        .chars()
        .filter(|c| !c.is_control())
        .take(32)
        .collect();
    let _ = PURPOSE.set(clean);
}

/// Held for as long as the writer lives; the OS releases it when the process dies.
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
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
        // Readable by the pool's owner only, whatever an older version left.
        #[cfg(unix)]
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        #[cfg(unix)]
        file.set_permissions(private)
            .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))?;
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

/// Whether a writer holds the lock of the pool in `dir` now: a shared lock on `LOCK`
/// is refused while it does (and released at once when taken). No lock file: no
/// writer; anything else unexpected counts as one.
pub fn writer_alive(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// "pid 123 on host-a (uctx ingest) since unix time 1700000000": the process,
/// the host, its program name and purpose ([`set_purpose`]) and when it took
/// the lock. Never its arguments: the file stays after the writer exits, and
/// an argument can be a secret.
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
    let doing = match PURPOSE.get() {
        Some(p) if !p.is_empty() => format!("{program} {p}"),
        _ => program,
    };
    format!(
        "pid {} on {} ({doing}) since unix time {since}",
        std::process::id(),
        host_name()
    )
}

/// This machine's host name, or "unknown host".
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .take(64)
        .collect();
    if name.is_empty() {
        "unknown host".into()
    } else {
        name
    }
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
        // Exactly the pid, the host, the program's name and a time: no argument.
        let prefix = format!(
            "pid {} on {} ({program}) since unix time ",
            std::process::id(),
            host_name()
        );
        let since = text
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{text:?}"));
        assert!(since.parse::<u64>().is_ok(), "{text:?}");
    }

    #[cfg(unix)]
    #[test]
    fn the_lock_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LOCK_FILE);
        // An older version left it world-readable.
        std::fs::write(&path, "pid 1 (uctx) since unix time 0").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _held = WriterLock::acquire(tmp.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
