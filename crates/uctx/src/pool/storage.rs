//! The pool's seam to the disk: a file-like [`Storage`] and a directory-like
//! [`Dir`], with a real implementation ([`FileDir`]), an in-memory one
//! ([`MemDir`]), a fault-injecting wrapper ([`FaultyDir`]) and a simulated
//! power loss ([`CrashDir`]) for tests.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One file: positioned reads and writes, durable on `sync`.
pub trait Storage: Send + Sync {
    /// Fill `buf` from `offset`; an error when the file is shorter.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write all of `data` at `offset`, growing the file when needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every write so far durable.
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// Identity of the underlying file (changes when another file is renamed over it).
    fn identity(&self) -> u64 {
        0
    }
}

/// A directory of named [`Storage`]s.
pub trait Dir: Send + Sync {
    /// Open `name`; `NotFound` when absent and `create` is false.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Storage>>;
    fn exists(&self, name: &str) -> bool;
    /// Atomically replace `to` with `from`, durably (the directory is synced).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Give the file `from` a second name `to`, which must be free (a hard
    /// link; a synced copy where the file system has none). Durable once
    /// the directory is next synced (a `rename`).
    fn link(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Identity of the file currently at `name`, to notice a rename over it.
    fn identity(&self, name: &str) -> io::Result<u64>;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole of an immutable file as bytes: memory-mapped where the
    /// directory is real. The file must never change while mapped (index
    /// segments are written once under a temporary name, then renamed).
    fn map(&self, name: &str) -> io::Result<Mapped>;
}

/// An immutable file's bytes, mapped or in memory.
pub type Mapped = Arc<dyn AsRef<[u8]> + Send + Sync>;

struct MappedFile(memmap2::Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Map `file` read-only.
#[allow(unsafe_code)]
fn map_file(file: &File) -> io::Result<Mapped> {
    if file.metadata()?.len() == 0 {
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // SAFETY: the pool maps only index segments, which are written in full
    // under a temporary name, synced, and renamed into place; nothing
    // writes or truncates them afterwards (they are replaced by new files
    // and unlinked, which leaves an existing mapping intact).
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Arc::new(MappedFile(map)))
}

/// A real file.
pub struct FileStorage {
    file: File,
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn identity(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.ino()).unwrap_or(0)
    }
}

/// A real directory.
pub struct FileDir {
    path: PathBuf,
}

impl FileDir {
    pub fn new(path: &Path) -> FileDir {
        FileDir {
            path: path.to_path_buf(),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

impl Dir for FileDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(self.path.join(name))
            .or_else(|e| {
                // A read-only directory (or file) can still be read.
                if e.kind() == io::ErrorKind::PermissionDenied && !create {
                    File::open(self.path.join(name))
                } else {
                    Err(e)
                }
            })?;
        Ok(Arc::new(FileStorage { file }))
    }
    fn exists(&self, name: &str) -> bool {
        self.path.join(name).exists()
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))?;
        self.sync_dir()
    }
    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.path.join(from), self.path.join(to));
        match std::fs::hard_link(&from, &to) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                std::fs::copy(&from, &to)?;
                File::open(&to)?.sync_all()
            }
            r => r,
        }
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn identity(&self, name: &str) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.path.join(name))?.ino())
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            if let Some(name) = e?.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        map_file(&File::open(self.path.join(name))?)
    }
}

/// A file in memory; clones share the same bytes.
#[derive(Clone, Default)]
pub struct MemStorage {
    bytes: Arc<RwLock<Vec<u8>>>,
    id: u64,
}

impl Storage for MemStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let b = self.bytes.read().map_err(|_| poisoned())?;
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(buf.len()).ok_or_else(short)?;
        if end > b.len() {
            return Err(short());
        }
        buf.copy_from_slice(&b[start..end]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut b = self.bytes.write().map_err(|_| poisoned())?;
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start + data.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[start..end].copy_from_slice(data);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.read().map_err(|_| poisoned())?.len() as u64)
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut b = self.bytes.write().map_err(|_| poisoned())?;
        b.resize(len as usize, 0);
        Ok(())
    }
    fn identity(&self) -> u64 {
        self.id
    }
}

fn short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
}

fn poisoned() -> io::Error {
    io::Error::other("in-memory storage poisoned by a panic")
}

/// A directory in memory; clones share the same files.
#[derive(Clone, Default)]
pub struct MemDir {
    files: Arc<Mutex<HashMap<String, MemStorage>>>,
    next_id: Arc<AtomicU64>,
}

impl MemDir {
    pub fn new() -> MemDir {
        MemDir::default()
    }

    /// A copy of a file's bytes (tests).
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        let files = self.files.lock().ok()?;
        let f = files.get(name)?;
        let b = f.bytes.read().ok()?;
        Some(b.clone())
    }

    /// Replace a file's bytes (tests: corrupt or truncate a pool).
    pub fn set_bytes(&self, name: &str, data: Vec<u8>) {
        if let Ok(mut files) = self.files.lock() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            files.insert(
                name.to_string(),
                MemStorage {
                    bytes: Arc::new(RwLock::new(data)),
                    id,
                },
            );
        }
    }
}

impl Dir for MemDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Storage>> {
        let mut files = self.files.lock().map_err(|_| poisoned())?;
        if let Some(f) = files.get(name) {
            return Ok(Arc::new(f.clone()));
        }
        if !create {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} not found"),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let f = MemStorage {
            bytes: Arc::default(),
            id,
        };
        files.insert(name.to_string(), f.clone());
        Ok(Arc::new(f))
    }
    fn exists(&self, name: &str) -> bool {
        self.files
            .lock()
            .map(|f| f.contains_key(name))
            .unwrap_or(false)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.lock().map_err(|_| poisoned())?;
        let f = files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from} not found")))?;
        files.insert(to.to_string(), f);
        Ok(())
    }
    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.lock().map_err(|_| poisoned())?;
        if files.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} exists"),
            ));
        }
        let f = files
            .get(from)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from} not found")))?;
        files.insert(to.to_string(), f);
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.files.lock().map_err(|_| poisoned())?.remove(name);
        Ok(())
    }
    fn identity(&self, name: &str) -> io::Result<u64> {
        let files = self.files.lock().map_err(|_| poisoned())?;
        files
            .get(name)
            .map(|f| f.id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not found")))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .files
            .lock()
            .map_err(|_| poisoned())?
            .keys()
            .cloned()
            .collect())
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        let files = self.files.lock().map_err(|_| poisoned())?;
        let f = files
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not found")))?;
        let bytes = f.bytes.read().map_err(|_| poisoned())?.clone();
        Ok(Arc::new(bytes))
    }
}

/// Power loss, simulated (the approach of redb's and SQLite's crash tests): a
/// directory in memory that remembers what was made durable. A file's bytes are
/// durable up to its last `sync`; its name is durable once the directory is
/// synced (by a `rename`, as on a real file system, where creating, linking or
/// removing a name is not durable until the directory is synced).
/// [`CrashDir::crash_after`] makes every mutation after the given count fail,
/// as if the machine had stopped there; [`CrashDir::image`] is what the disk
/// holds when it comes back: the durable names, each file's synced bytes and,
/// at random, a prefix of the writes that followed (the last one possibly torn).
#[derive(Clone, Default)]
pub struct CrashDir {
    inner: Arc<Mutex<CrashState>>,
}

#[derive(Default)]
struct CrashState {
    /// Names as the running program sees them.
    names: HashMap<String, Arc<Mutex<CrashFile>>>,
    /// Names as they were at the last directory sync.
    durable_names: HashMap<String, Arc<Mutex<CrashFile>>>,
    next_id: u64,
    /// Mutations so far, and after how many the machine stops.
    ops: u64,
    stop_at: Option<u64>,
}

#[derive(Default)]
struct CrashFile {
    id: u64,
    /// The bytes as the running program sees them.
    current: Vec<u8>,
    /// The bytes at the last sync.
    synced: Vec<u8>,
    /// What was done to the file since, in order.
    unsynced: Vec<CrashOp>,
}

#[derive(Clone)]
enum CrashOp {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

fn apply_op(bytes: &mut Vec<u8>, op: &CrashOp) {
    match op {
        CrashOp::Write(at, data) => {
            let at = *at as usize;
            if bytes.len() < at + data.len() {
                bytes.resize(at + data.len(), 0);
            }
            bytes[at..at + data.len()].copy_from_slice(data);
        }
        CrashOp::Truncate(len) => bytes.resize(*len as usize, 0),
    }
}

fn lock_crash(m: &Mutex<CrashState>) -> std::sync::MutexGuard<'_, CrashState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_file(m: &Mutex<CrashFile>) -> std::sync::MutexGuard<'_, CrashFile> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CrashState {
    /// Count one mutation; an error once the machine has stopped.
    fn mutate(&mut self) -> io::Result<()> {
        self.ops += 1;
        match self.stop_at {
            Some(at) if self.ops > at => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    }
}

impl CrashDir {
    pub fn new() -> CrashDir {
        CrashDir::default()
    }

    /// Mutations (writes, syncs, truncations, creations, renames, links,
    /// removals) done so far.
    pub fn ops(&self) -> u64 {
        lock_crash(&self.inner).ops
    }

    /// Stop the machine after `ops` more mutations: every later one fails with `EIO`.
    pub fn crash_after(&self, ops: u64) {
        let mut s = lock_crash(&self.inner);
        s.stop_at = Some(s.ops + ops);
    }

    /// Whether the machine has stopped.
    pub fn crashed(&self) -> bool {
        let s = lock_crash(&self.inner);
        s.stop_at.is_some_and(|at| s.ops > at)
    }

    /// The disk as it comes back after power loss at this point; `seed` chooses how
    /// much of each file's unsynced writes reached it.
    pub fn image(&self, seed: u64) -> MemDir {
        let s = lock_crash(&self.inner);
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let out = MemDir::new();
        let mut names: Vec<_> = s.durable_names.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, file) in names {
            let f = lock_file(file);
            let mut bytes = f.synced.clone();
            let n = f.unsynced.len();
            let kept = (next() % (n as u64 + 1)) as usize;
            for (i, op) in f.unsynced[..kept].iter().enumerate() {
                match op {
                    // The last write that reached the disk may have reached it in part.
                    CrashOp::Write(at, data) if i + 1 == kept && next() % 2 == 0 => {
                        let part = (next() % (data.len() as u64 + 1)) as usize;
                        apply_op(&mut bytes, &CrashOp::Write(*at, data[..part].to_vec()));
                    }
                    op => apply_op(&mut bytes, op),
                }
            }
            out.set_bytes(name, bytes);
        }
        out
    }
}

struct CrashStorage {
    file: Arc<Mutex<CrashFile>>,
    dir: CrashDir,
}

impl Storage for CrashStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = lock_file(&self.file);
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(buf.len()).ok_or_else(short)?;
        if end > f.current.len() {
            return Err(short());
        }
        buf.copy_from_slice(&f.current[start..end]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        lock_crash(&self.dir.inner).mutate()?;
        let mut f = lock_file(&self.file);
        let op = CrashOp::Write(offset, data.to_vec());
        apply_op(&mut f.current, &op);
        f.unsynced.push(op);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        lock_crash(&self.dir.inner).mutate()?;
        let mut f = lock_file(&self.file);
        f.synced = f.current.clone();
        f.unsynced.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock_file(&self.file).current.len() as u64)
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        lock_crash(&self.dir.inner).mutate()?;
        let mut f = lock_file(&self.file);
        let op = CrashOp::Truncate(len);
        apply_op(&mut f.current, &op);
        f.unsynced.push(op);
        Ok(())
    }
    fn identity(&self) -> u64 {
        lock_file(&self.file).id
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name} not found"))
}

impl Dir for CrashDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Storage>> {
        let mut s = lock_crash(&self.inner);
        let file = match s.names.get(name) {
            Some(f) => Arc::clone(f),
            None if create => {
                s.mutate()?;
                s.next_id += 1;
                let f = Arc::new(Mutex::new(CrashFile {
                    id: s.next_id,
                    ..CrashFile::default()
                }));
                s.names.insert(name.to_string(), Arc::clone(&f));
                f
            }
            None => return Err(not_found(name)),
        };
        Ok(Arc::new(CrashStorage {
            file,
            dir: self.clone(),
        }))
    }
    fn exists(&self, name: &str) -> bool {
        lock_crash(&self.inner).names.contains_key(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = lock_crash(&self.inner);
        s.mutate()?;
        let f = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_string(), f);
        // The rename syncs the directory: every name change so far is durable.
        s.durable_names = s.names.clone();
        Ok(())
    }
    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = lock_crash(&self.inner);
        s.mutate()?;
        if s.names.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} exists"),
            ));
        }
        let f = s.names.get(from).cloned().ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_string(), f);
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = lock_crash(&self.inner);
        s.mutate()?;
        s.names.remove(name);
        Ok(())
    }
    fn identity(&self, name: &str) -> io::Result<u64> {
        let s = lock_crash(&self.inner);
        let f = s.names.get(name).ok_or_else(|| not_found(name))?;
        let id = lock_file(f).id;
        Ok(id)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock_crash(&self.inner).names.keys().cloned().collect())
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        let s = lock_crash(&self.inner);
        let f = s.names.get(name).ok_or_else(|| not_found(name))?;
        let bytes = lock_file(f).current.clone();
        Ok(Arc::new(bytes))
    }
}

/// Which fault a [`FaultyDir`] injects once its byte allowance is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A generic I/O error (`EIO`).
    Io,
    /// No space left on the device (`ENOSPC`).
    DiskFull,
}

/// Wraps a [`Dir`]; after `allow` bytes have been written through it, every
/// write writes only what is left of the allowance (a torn write) and fails.
/// Optionally `sync` fails too once the allowance is spent.
#[derive(Clone)]
pub struct FaultyDir {
    inner: Arc<dyn Dir>,
    left: Arc<AtomicU64>,
    fault: Fault,
    fail_sync: Arc<AtomicBool>,
}

impl FaultyDir {
    pub fn new(inner: Arc<dyn Dir>, allow_bytes: u64, fault: Fault) -> FaultyDir {
        FaultyDir {
            inner,
            left: Arc::new(AtomicU64::new(allow_bytes)),
            fault,
            fail_sync: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Also fail `sync` once the allowance is spent.
    pub fn with_failing_sync(self) -> FaultyDir {
        self.fail_sync.store(true, Ordering::Relaxed);
        self
    }

    /// Give the writer `bytes` more to write before failing again.
    pub fn allow(&self, bytes: u64) {
        self.left.store(bytes, Ordering::Relaxed);
    }

    fn error(&self) -> io::Error {
        match self.fault {
            Fault::Io => io::Error::from_raw_os_error(libc::EIO),
            Fault::DiskFull => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

struct FaultyStorage {
    inner: Arc<dyn Storage>,
    dir: FaultyDir,
}

impl Storage for FaultyStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let left = self.dir.left.load(Ordering::Relaxed);
        if (data.len() as u64) <= left {
            self.dir
                .left
                .fetch_sub(data.len() as u64, Ordering::Relaxed);
            return self.inner.write_at(offset, data);
        }
        self.dir.left.store(0, Ordering::Relaxed);
        self.inner.write_at(offset, &data[..left as usize])?;
        Err(self.dir.error())
    }
    fn sync(&self) -> io::Result<()> {
        if self.dir.fail_sync.load(Ordering::Relaxed) && self.dir.left.load(Ordering::Relaxed) == 0
        {
            return Err(self.dir.error());
        }
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
    fn identity(&self) -> u64 {
        self.inner.identity()
    }
}

impl Dir for FaultyDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Storage>> {
        let inner = self.inner.open(name, create)?;
        Ok(Arc::new(FaultyStorage {
            inner,
            dir: self.clone(),
        }))
    }
    fn exists(&self, name: &str) -> bool {
        self.inner.exists(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.link(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn identity(&self, name: &str) -> io::Result<u64> {
        self.inner.identity(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        self.inner.map(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One suite, run against every implementation.
    fn suite(dir: &dyn Dir) {
        assert!(!dir.exists("a"));
        assert!(dir.open("a", false).is_err());
        let a = dir.open("a", true).unwrap();
        assert_eq!(a.len().unwrap(), 0);
        a.write_at(0, b"hello").unwrap();
        a.write_at(5, b" world").unwrap();
        a.sync().unwrap();
        assert_eq!(a.len().unwrap(), 11);
        let mut buf = [0u8; 5];
        a.read_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        assert!(a.read_at(8, &mut buf).is_err());
        a.truncate(5).unwrap();
        assert_eq!(a.len().unwrap(), 5);
        let b = dir.open("b", true).unwrap();
        b.write_at(0, b"new").unwrap();
        let id_b = dir.identity("b").unwrap();
        dir.rename("b", "a").unwrap();
        assert!(!dir.exists("b"));
        assert_eq!(dir.identity("a").unwrap(), id_b);
        let a2 = dir.open("a", false).unwrap();
        let mut buf = [0u8; 3];
        a2.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"new");
        // The old handle still reads the old bytes.
        let mut buf = [0u8; 5];
        a.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let mut names = dir.list().unwrap();
        names.sort();
        assert_eq!(names, vec!["a".to_string()]);
        assert_eq!(dir.map("a").unwrap().as_ref().as_ref(), b"new");
        // A second name keeps the bytes when the first is replaced.
        dir.link("a", "kept").unwrap();
        assert!(dir.link("a", "kept").is_err());
        dir.open("c", true).unwrap().write_at(0, b"other").unwrap();
        dir.rename("c", "a").unwrap();
        assert_eq!(dir.map("kept").unwrap().as_ref().as_ref(), b"new");
        assert_eq!(dir.map("a").unwrap().as_ref().as_ref(), b"other");
        dir.remove("kept").unwrap();
        dir.remove("a").unwrap();
        assert!(!dir.exists("a"));
        dir.remove("a").unwrap();
    }

    #[test]
    fn file_dir() {
        let tmp = tempfile::tempdir().unwrap();
        suite(&FileDir::new(tmp.path()));
    }

    #[test]
    fn mem_dir() {
        suite(&MemDir::new());
    }

    #[test]
    fn faulty_dir_tears_then_fails() {
        let mem = MemDir::new();
        let dir = FaultyDir::new(Arc::new(mem.clone()), 4, Fault::DiskFull);
        let f = dir.open("x", true).unwrap();
        let e = f.write_at(0, b"abcdef").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(mem.bytes("x").unwrap(), b"abcd");
        dir.allow(100);
        f.write_at(4, b"ef").unwrap();
        assert_eq!(mem.bytes("x").unwrap(), b"abcdef");
    }
}
