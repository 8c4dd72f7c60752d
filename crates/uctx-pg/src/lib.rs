//! A team pool on PostgreSQL with pgvector: many writers on many machines,
//! one memory, behind the engine's [`Store`] seam.
//!
//! One database (or one schema of it, chosen with `search_path`) holds one
//! pool: `uctx_meta` (schema version, encoder fingerprint, dimension,
//! budget), the sequence `uctx_slice_id` that every writer draws ids from, and
//! `uctx_slices`, one row a slice: its metadata, its text zstd-compressed, its
//! vector's i8 codes as a `halfvec` (exact in f16) with the row's scale, and
//! a `tsvector` of its text. An HNSW index (cosine) serves dense search, with
//! `hnsw.iterative_scan = relaxed_order` so a namespace filter does not starve
//! it; a GIN index serves the lexical ranking (`ts_rank_cd`). The schema and its
//! migrations are in `migrations/`, described in `docs/format.md`.
//!
//! A write is one transaction with `synchronous_commit = on`: [`Store::append`]
//! returns once the server has made the batch durable. Witness events are
//! merged in place (`uses = uses + n`), so concurrent writers lose none.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, Config, NoTls, Row};

use uctx::pool::{vector, Hit, Pool, PoolOptions, PoolStats, Scope, Store, WitnessEvent};
use uctx::witness::{self, Standing, WitnessParams};
use uctx::{Error, NewSlice, Result, Slice, SliceMeta, Source};

mod copy;
mod schema;
mod scratch;

pub use copy::{copy, Copied};
pub use schema::SCHEMA_VERSION;
pub use scratch::Scratch;

/// Whether `spec` names a PostgreSQL pool (`postgres://…` or `postgresql://…`).
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 8;
/// zstd level for slice text (as the directory pool's).
const ZSTD_LEVEL: i32 = 3;
/// The text search configuration the `tsvector` column and queries use.
pub const TEXT_SEARCH_CONFIG: &str = "english";
/// Oldest pgvector with `halfvec` and iterative index scans.
const MIN_PGVECTOR: (u32, u32) = (0, 8);
/// How long one statement may run before the server cancels it.
const STATEMENT_TIMEOUT: &str = "60s";
/// How long to wait for a connection when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock one eviction at a time holds ("uctx" + 1).
const EVICT_LOCK: i64 = 0x7563_7479;
/// What the server holds for a slice beyond its compressed text, its
/// `tsvector` and its two copies of the vector (heap and HNSW): tuple
/// headers, the HNSW element's neighbour lists, the `(namespace, id)` and GIN
/// index entries. Counted in each row's `bytes`.
const ROW_OVERHEAD: i64 = 400;

/// The columns of [`SliceMeta`], in the order [`meta_of`] reads them.
const META: &str =
    "id, namespace, source, tokens, turn, ext_id, time_ms, bytes, salience, uses, last_used_seq, pinned";

/// A team pool on a PostgreSQL server. `Send + Sync`: threads share one
/// handle, each statement on a connection of its own from a small pool.
pub struct PgPool {
    config: Config,
    location: String,
    read_only: bool,
    fingerprint: String,
    dim: usize,
    idle: Mutex<Vec<Client>>,
    /// Bytes this handle appended since it last compared the pool with its budget.
    unchecked: AtomicU64,
    /// The budget as this handle last read it.
    budget_seen: AtomicU64,
    /// Why the last eviction after a write failed (the write itself had succeeded).
    maintenance_error: Mutex<Option<String>>,
    params: WitnessParams,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("location", &self.location)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // A client's drop blocks on its own runtime, which panics on a thread that
        // drives an async runtime: close the idle connections on a thread of their own.
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// A connection checked out of the pool; back into it when dropped, unless broken.
struct Conn<'a> {
    pool: &'a PgPool,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a checked-out connection")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a checked-out connection")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(client);
                }
            }
        }
    }
}

/// A `halfvec` parameter: the vector's values as f16, in pgvector's binary format.
struct HalfVec(Vec<half::f16>);

impl std::fmt::Debug for HalfVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "halfvec({})", self.0.len())
    }
}

impl ToSql for HalfVec {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let dim = i16::try_from(self.0.len())?;
        out.extend_from_slice(&dim.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        for x in &self.0 {
            out.extend_from_slice(&x.to_bits().to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "halfvec"
    }

    postgres::types::to_sql_checked!();
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // A `key=value` string.
        return url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" ");
    };
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    match auth {
        Some(auth) => {
            let user = auth.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{host}"),
    }
}

fn server_error(location: &str, detail: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::Server {
        location: location.to_string(),
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// The fix for an unreachable server.
const START_FIX: &str = "start it (`tools/postgres.sh start` runs one with pgvector on this machine and prints its URL), or check the host, port and `sslmode` in the URL (this build connects without TLS)";

fn connect_error(location: &str, config: &Config, e: postgres::Error) -> Error {
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => server_error(
            location,
            format!("authentication failed for user {user:?}: {}", db_message(&e)),
            "check the user and password in the URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE) and the server's pg_hba.conf",
        ),
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => server_error(
            location,
            format!("the database {db:?} does not exist"),
            format!("create it (`CREATE DATABASE {db}`), or name another in the URL"),
        ),
        Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS => server_error(
            location,
            "the server has no free connection",
            "close idle clients or raise the server's max_connections",
        ),
        Some(c) if *c == SqlState::CANNOT_CONNECT_NOW => server_error(
            location,
            "the server is starting up or shutting down",
            "try again once it is up (a server restarting after a crash first replays its log)",
        ),
        Some(_) => server_error(location, db_message(&e), "see the server's log"),
        None => server_error(location, format!("cannot reach the server: {e}"), START_FIX),
    }
}

/// The server's own message for a database error, else the error's.
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// The URL's connection settings (a connect timeout when it names none) and its
/// password-free form for messages.
fn config_of(url: &str) -> Result<(String, Config)> {
    let location = redacted(url);
    let mut config = Config::from_str(url).map_err(|e| {
        Error::invalid(format!(
            "{location} is not a PostgreSQL URL ({e}); write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok((location, config))
}

/// What an append of `s` would write: its text and provenance, without its
/// id, time and witness state.
pub(crate) fn unwritten(s: &Slice) -> NewSlice {
    let m = &s.meta;
    NewSlice {
        namespace: m.namespace.clone(),
        source: m.source,
        text: s.text.clone(),
        tokens: m.tokens,
        turn: m.turn,
        ext_id: m.ext_id.clone(),
        salience: m.salience,
    }
}

impl PgPool {
    /// Open (or, with `opts.create`, create) the team pool at `url`. Checks
    /// pgvector, migrates an older schema (a writer), refuses a newer one,
    /// and checks the encoder fingerprint and dimension as a directory pool
    /// does.
    pub fn open(url: &str, opts: &PoolOptions) -> Result<PgPool> {
        let (location, mut config) = config_of(url)?;
        if config.get_application_name().is_none() {
            config.application_name("uctx");
        }
        let mut pool = PgPool {
            config,
            location,
            read_only: opts.read_only,
            fingerprint: String::new(),
            dim: 0,
            idle: Mutex::new(Vec::new()),
            unchecked: AtomicU64::new(0),
            budget_seen: AtomicU64::new(uctx::pool::DEFAULT_BUDGET),
            maintenance_error: Mutex::new(None),
            params: WitnessParams::default(),
        };
        let mut client = pool.connect()?;
        pool.check_pgvector(&mut client, opts)?;
        let found = schema::prepare(&mut client, &pool.location, opts)?;
        if found.fingerprint != opts.encoder_fingerprint {
            return Err(Error::EncoderMismatch {
                pool: found.fingerprint,
                current: opts.encoder_fingerprint.clone(),
            });
        }
        if found.dim != opts.dim {
            return Err(Error::DimMismatch {
                expected: found.dim,
                got: opts.dim,
            });
        }
        pool.fingerprint = found.fingerprint;
        pool.dim = found.dim;
        pool.budget()?;
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
        Ok(pool)
    }

    /// The encoder fingerprint and dimension of the team pool at `url`, from
    /// its `uctx_meta` alone (like [`Pool::inspect`]).
    pub fn inspect(url: &str) -> Result<(String, usize)> {
        let (location, config) = config_of(url)?;
        let mut client = config
            .connect(NoTls)
            .map_err(|e| connect_error(&location, &config, e))?;
        let found = schema::inspect(&mut client, &location)?;
        Ok((found.fingerprint, found.dim))
    }

    fn connect(&self) -> Result<Client> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| connect_error(&self.location, &self.config, e))?;
        let mut setup =
            format!("SET synchronous_commit = on; SET statement_timeout = '{STATEMENT_TIMEOUT}';");
        if self.read_only {
            setup.push_str(" SET default_transaction_read_only = on;");
        }
        client
            .batch_execute(&setup)
            .map_err(|e| self.db_error("set up a connection", e))?;
        Ok(client)
    }

    /// A connection: an idle one (checked first with a round trip when
    /// `validate`), or a new one.
    fn conn(&self, validate: bool) -> Result<Conn<'_>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let client = match idle {
                None => self.connect()?,
                Some(c) if c.is_closed() => continue,
                Some(mut c) => {
                    if validate && c.is_valid(Duration::from_secs(5)).is_err() {
                        continue;
                    }
                    c
                }
            };
            return Ok(Conn {
                pool: self,
                client: Some(client),
            });
        }
    }

    /// Run a read on a connection; when an idle connection turns out to be
    /// broken (the server restarted since), once more on a new one.
    fn with<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut conn = self.conn(false)?;
        match f(&mut conn) {
            Ok(v) => Ok(v),
            Err(e) if e.as_db_error().is_none() && conn.is_closed() => {
                drop(conn);
                let mut conn = Conn {
                    pool: self,
                    client: Some(self.connect()?),
                };
                f(&mut conn).map_err(|e| self.db_error(what, e))
            }
            Err(e) => Err(self.db_error(what, e)),
        }
    }

    /// Run a write on a connection known to be alive; never retried (a write
    /// cut off at its commit may have been applied).
    fn with_write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.writable(what)?;
        let mut conn = self.conn(true)?;
        f(&mut conn).map_err(|e| self.db_error(what, e))
    }

    fn db_error(&self, what: &str, e: postgres::Error) -> Error {
        let loc = &self.location;
        match e.code() {
            Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
                Error::ReadOnly(format!("{what} in the team pool at {loc}: this handle was opened read-only"))
            }
            Some(c) if *c == SqlState::QUERY_CANCELED => server_error(
                loc,
                format!("cannot {what}: the statement ran past {STATEMENT_TIMEOUT} and was cancelled"),
                "the server may be overloaded; try again, or ask for fewer results",
            ),
            Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_OBJECT => server_error(
                loc,
                format!("cannot {what}: {}", db_message(&e)),
                "the pool's tables were dropped or changed while it was open; open it again with a writer to recreate them",
            ),
            Some(c) if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW => server_error(
                loc,
                format!("cannot {what}: the server is shutting down"),
                "run the command again once it is back",
            ),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => server_error(
                loc,
                format!("cannot {what}: {}", db_message(&e)),
                "nothing was applied; run it again",
            ),
            Some(_) => server_error(loc, format!("cannot {what}: {}", db_message(&e)), "see the server's log"),
            // The client's own errors: the socket failed or closed, a read timed out.
            None if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
                || ["connection", "communicating", "timeout"]
                    .iter()
                    .any(|w| e.to_string().contains(w)) =>
            {
                server_error(
                loc,
                format!("lost the connection while trying to {what}: {e}"),
                    format!("{START_FIX}; a write cut off at its commit may or may not have been applied"),
                )
            }
            None => server_error(loc, format!("cannot {what}: {e}"), "see the server's log"),
        }
    }

    fn check_pgvector(&self, client: &mut Client, opts: &PoolOptions) -> Result<()> {
        let loc = &self.location;
        let version = |client: &mut Client| -> Result<Option<String>> {
            Ok(client
                .query_opt(
                    "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                    &[],
                )
                .map_err(|e| self.db_error("look for pgvector", e))?
                .map(|r| r.get::<_, String>(0)))
        };
        let mut found = version(client)?;
        if found.is_none() && opts.create && !opts.read_only {
            if let Err(e) = client.batch_execute("CREATE EXTENSION IF NOT EXISTS vector") {
                let available = client
                    .query_opt(
                        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
                        &[],
                    )
                    .map(|r| r.is_some())
                    .unwrap_or(false);
                return Err(if available {
                    server_error(
                        loc,
                        format!("pgvector is installed but not enabled in this database, and enabling it failed: {}", db_message(&e)),
                        "connect as a superuser or the database owner and run `CREATE EXTENSION vector`",
                    )
                } else {
                    server_error(
                        loc,
                        "the server has no pgvector extension",
                        "install pgvector on the server (`tools/postgres.sh start` runs a local server with it), then `CREATE EXTENSION vector`",
                    )
                });
            }
            found = version(client)?;
        }
        let Some(found) = found else {
            return Err(server_error(
                loc,
                "pgvector is not enabled in this database",
                "run `CREATE EXTENSION vector` in it (as a superuser or its owner); `tools/postgres.sh start` sets up a server with it",
            ));
        };
        let mut parts = found.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if have < MIN_PGVECTOR {
            return Err(server_error(
                loc,
                format!(
                    "pgvector {found} is too old: a team pool needs {}.{} or newer (halfvec, iterative index scans)",
                    MIN_PGVECTOR.0, MIN_PGVECTOR.1
                ),
                "install a newer pgvector on the server, then `ALTER EXTENSION vector UPDATE`",
            ));
        }
        Ok(())
    }

    fn writable(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "cannot {what} in the team pool at {}: this handle was opened read-only",
                self.location
            )));
        }
        Ok(())
    }
}

/// A row's [`SliceMeta`], from the [`META`] columns at the start of the row.
fn meta_of(row: &Row) -> std::result::Result<SliceMeta, String> {
    let id: i64 = row.get(0);
    let source: i16 = row.get(2);
    let source = u8::try_from(source)
        .ok()
        .and_then(Source::from_u8)
        .ok_or_else(|| format!("slice {id} has an unknown source {source}"))?;
    Ok(SliceMeta {
        id: id as u64,
        namespace: row.get(1),
        source,
        tokens: row.get::<_, i32>(3) as u32,
        turn: row.get::<_, i64>(4) as u64,
        ext_id: row.get(5),
        time_ms: row.get::<_, i64>(6) as u64,
        bytes: row.get::<_, i64>(7) as u64,
        salience: row.get(8),
        uses: row.get::<_, i32>(9) as u32,
        last_used_seq: row.get::<_, i64>(10) as u64,
        pinned: row.get(11),
    })
}

fn id_param(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the text search sees of a text: PostgreSQL text holds no NUL.
fn searchable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The lexical query: the words of `query`, any of which may match.
const TSQUERY: &str =
    "(SELECT replace(plainto_tsquery('english', $1)::text, ' & ', ' | ')::tsquery AS q) AS query";

impl PgPool {
    /// A row's [`SliceMeta`], or the error that says the row was changed outside uctx.
    fn meta_of(&self, row: &Row) -> Result<SliceMeta> {
        meta_of(row).map_err(|e| self.corrupt(e))
    }

    fn corrupt(&self, detail: String) -> Error {
        server_error(
            &self.location,
            detail,
            "a row of uctx_slices was changed outside uctx; delete it, or restore the database from a backup",
        )
    }

    fn metas_where(
        &self,
        what: &str,
        filter: &str,
        scope: Scope<'_>,
        cols: &str,
    ) -> Result<Vec<Row>> {
        let ns = scope.name().map(str::to_string);
        self.with(what, |c| match &ns {
            None => c.query(
                &format!("SELECT {cols} FROM uctx_slices WHERE {filter} ORDER BY id"),
                &[],
            ),
            Some(ns) => c.query(
                &format!(
                    "SELECT {cols} FROM uctx_slices WHERE namespace = $1 AND {filter} ORDER BY id"
                ),
                &[ns],
            ),
        })
    }
}

impl PgPool {
    /// Why the last eviction after a write failed, if it did (the write had
    /// succeeded; the next write tries again).
    pub fn maintenance_error(&self) -> Option<String> {
        self.maintenance_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After `bytes` were written: compare the pool with its budget once this
    /// handle has written a twentieth of it (at most 1 MiB) since it last looked.
    fn after_write(&self, bytes: u64) {
        let since = self.unchecked.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let budget = self.budget_seen.load(Ordering::Relaxed);
        if since < (budget / 20).clamp(1, 1 << 20) {
            return;
        }
        self.unchecked.store(0, Ordering::Relaxed);
        let result = self.evict().err().map(|e| e.to_string());
        *self
            .maintenance_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = result;
    }

    fn budget(&self) -> Result<u64> {
        let row = self.with("read the budget", |c| {
            c.query_opt(
                "SELECT value FROM uctx_meta WHERE key = 'budget_bytes'",
                &[],
            )
        })?;
        let budget = row
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(uctx::pool::DEFAULT_BUDGET);
        self.budget_seen.store(budget, Ordering::Relaxed);
        Ok(budget)
    }

    /// When the live slices' bytes exceed the budget, evict down to 90% of it:
    /// the victims [`witness::victims`] chooses (lowest retention first, never
    /// a pinned slice), deleted in one transaction that holds the eviction
    /// lock, so that of many writers over the budget one evicts and the others
    /// go on writing. How many slices were evicted.
    pub fn evict(&self) -> Result<u64> {
        self.writable("evict slices over the budget")?;
        let budget = self.budget()?;
        let params = &self.params;
        self.with_write("evict slices over the budget", |c| {
            let mut tx = c.transaction()?;
            let mine: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&EVICT_LOCK])?
                .get(0);
            if !mine {
                return Ok(0);
            }
            let held: i64 = tx
                .query_one(
                    "SELECT COALESCE(sum(bytes), 0)::bigint FROM uctx_slices",
                    &[],
                )?
                .get(0);
            if (held.max(0) as u64) <= budget {
                return Ok(0);
            }
            let now: i64 = tx
                .query_one("SELECT last_value FROM uctx_slice_id", &[])?
                .get(0);
            let standings: Vec<Standing> = tx
                .query(
                    "SELECT id, bytes, salience, uses, last_used_seq, pinned FROM uctx_slices",
                    &[],
                )?
                .iter()
                .map(|r| Standing {
                    id: r.get::<_, i64>(0) as u64,
                    bytes: r.get::<_, i64>(1).max(0) as u64,
                    salience: r.get(2),
                    uses: r.get::<_, i32>(3).max(0) as u32,
                    last_used_seq: r.get::<_, i64>(4).max(0) as u64,
                    pinned: r.get(5),
                })
                .collect();
            let target = budget - budget / 10;
            let victims: Vec<i64> =
                witness::victims(&standings, held as u64, target, now.max(0) as u64, params)
                    .into_iter()
                    .map(id_param)
                    .collect();
            // `NOT pinned` again: a pin committed since the standings were read wins.
            let n = tx.execute(
                "DELETE FROM uctx_slices WHERE id = ANY($1) AND NOT pinned",
                &[&victims],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }
}

/// `uctx serve`'s conversations in the pool's database, shared by every server on it.
impl PgPool {
    /// A number no other server on this pool has been given.
    pub fn serve_instance(&self) -> Result<u64> {
        self.writable("start a server")?;
        let row = self.with_write("start a server", |c| {
            c.query_one("SELECT nextval('uctx_serve_instance')", &[])
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The journal's lines after `cursor` (0: from the start), with the cursor after them.
    pub fn journal_after(&self, cursor: u64) -> Result<(Vec<String>, u64)> {
        let after = id_param(cursor);
        let rows = self.with("read the conversations' journal", |c| {
            c.query(
                "SELECT seq, entry FROM uctx_serve_journal WHERE seq > $1 ORDER BY seq",
                &[&after],
            )
        })?;
        let next = rows.last().map_or(cursor, |r| r.get::<_, i64>(0) as u64);
        Ok((rows.iter().map(|r| r.get(1)).collect(), next))
    }

    /// Append lines to the journal. Appends take the table's lock in turn, so
    /// that lines are numbered in the order they commit and a reader that has
    /// seen one has seen every line before it.
    pub fn journal_append(&self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.writable("write the conversations' journal")?;
        self.with_write("write the conversations' journal", |c| {
            let mut tx = c.transaction()?;
            tx.batch_execute("LOCK TABLE uctx_serve_journal IN EXCLUSIVE MODE")?;
            let insert = tx.prepare("INSERT INTO uctx_serve_journal (entry) VALUES ($1)")?;
            for l in lines {
                tx.execute(&insert, &[l])?;
            }
            tx.commit()
        })
    }
}

impl PgPool {
    /// Write `batch` in one transaction: with ids from the sequence, or (an
    /// import) with the ids, times and witness state of `given`, one a slice,
    /// after which the sequence is moved past them. The ids written.
    fn write_rows(
        &self,
        batch: &[(NewSlice, Vec<f32>)],
        given: Option<&[SliceMeta]>,
    ) -> Result<Vec<u64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let what = if given.is_some() {
            "import slices"
        } else {
            "append slices"
        };
        self.writable(what)?;
        if let Some(g) = given {
            let increasing = g.windows(2).all(|w| w[0].id < w[1].id);
            if g.len() != batch.len() || !increasing || g.iter().any(|m| m.id > i64::MAX as u64) {
                return Err(Error::invalid(
                    "an import needs one id a slice, increasing and below 2^63",
                ));
            }
        }
        struct Row_ {
            namespace: String,
            source: i16,
            tokens: i32,
            turn: i64,
            ext_id: Option<String>,
            salience: f32,
            text_len: i32,
            text_z: Vec<u8>,
            scale: f32,
            embedding: HalfVec,
            bytes: i64,
        }
        let mut rows = Vec::with_capacity(batch.len());
        for (s, v) in batch {
            if v.len() != self.dim {
                return Err(Error::DimMismatch {
                    expected: self.dim,
                    got: v.len(),
                });
            }
            if s.namespace.contains('\0') || s.ext_id.as_deref().is_some_and(|x| x.contains('\0')) {
                return Err(Error::invalid(
                    "a namespace or id holding a NUL byte; a team pool stores them as PostgreSQL text, which cannot hold one",
                ));
            }
            let text_len = i32::try_from(s.text.len()).map_err(|_| {
                Error::invalid("a slice text over 2 GB; cut it into smaller slices")
            })?;
            let turn = i64::try_from(s.turn).map_err(|_| {
                Error::invalid(format!(
                    "turn {} is beyond what a team pool stores (2^63)",
                    s.turn
                ))
            })?;
            let text_z = zstd::bulk::compress(s.text.as_bytes(), ZSTD_LEVEL)
                .map_err(|e| Error::io("cannot compress slice text", e))?;
            let mut q = Vec::with_capacity(self.dim);
            let scale = vector::quantize(v, &mut q);
            let embedding = HalfVec(q.iter().map(|&x| half::f16::from_f32(x as f32)).collect());
            let salience = if s.salience.is_finite() {
                s.salience.clamp(0.0, 1.0)
            } else {
                0.0
            };
            rows.push(Row_ {
                namespace: s.namespace.clone(),
                source: i16::from(s.source.as_u8()),
                tokens: s.tokens.min(i32::MAX as u32) as i32,
                turn,
                ext_id: s.ext_id.clone(),
                salience,
                text_len,
                // The heap's and the HNSW index's vector, the scale, the fixed
                // overhead; the server adds the tsvector's size.
                bytes: (text_z.len() + 2 * (2 * self.dim + 8) + 4) as i64 + ROW_OVERHEAD,
                text_z,
                scale,
                embedding,
            });
        }
        let time_ms = now_ms();
        let n = rows.len() as i64;
        let texts: Vec<std::borrow::Cow<'_, str>> =
            batch.iter().map(|(s, _)| searchable(&s.text)).collect();
        // (time, uses, last use, pinned) of each row, for an import.
        let kept: Option<Vec<(i64, i32, i64, bool)>> = given.map(|g| {
            g.iter()
                .map(|m| {
                    (
                        m.time_ms.min(i64::MAX as u64) as i64,
                        m.uses.min(i32::MAX as u32) as i32,
                        m.last_used_seq.min(i64::MAX as u64) as i64,
                        m.pinned,
                    )
                })
                .collect()
        });
        let ids = self.with_write(what, |c| {
            let mut tx = c.transaction()?;
            let ids: Vec<i64> = match given {
                Some(g) => g.iter().map(|m| m.id as i64).collect(),
                None => {
                    let mut ids: Vec<i64> = tx
                        .query(
                            "SELECT nextval('uctx_slice_id') FROM generate_series(1, $1::bigint)",
                            &[&n],
                        )?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    ids.sort_unstable();
                    ids
                }
            };
            let insert = tx.prepare(&format!(
                "INSERT INTO uctx_slices (id, namespace, source, tokens, turn, ext_id, time_ms, bytes, salience, \
                 uses, last_used_seq, pinned, text_len, text_z, scale, embedding, tsv) \
                 SELECT $1::bigint, $2::text, $3::smallint, $4::integer, $5::bigint, $6::text, $7::bigint, \
                 $8::bigint + pg_column_size(t.v), $9::real, $15::integer, $16::bigint, $17::boolean, \
                 $10::integer, $11::bytea, $12::real, \
                 $13::halfvec, t.v FROM (SELECT to_tsvector('{TEXT_SEARCH_CONFIG}', $14::text) AS v) AS t"
            ))?;
            for (i, ((r, id), text)) in rows.iter().zip(&ids).zip(&texts).enumerate() {
                let (time_ms, uses, last_used, pinned) =
                    kept.as_ref().map_or((time_ms, 0, *id, false), |k| k[i]);
                tx.execute(
                    &insert,
                    &[
                        id,
                        &r.namespace,
                        &r.source,
                        &r.tokens,
                        &r.turn,
                        &r.ext_id,
                        &time_ms,
                        &r.bytes,
                        &r.salience,
                        &r.text_len,
                        &r.text_z,
                        &r.scale,
                        &r.embedding,
                        &text.as_ref(),
                        &uses,
                        &last_used,
                        &pinned,
                    ],
                )?;
            }
            if let Some(&last) = ids.last().filter(|_| given.is_some()) {
                // Later appends draw ids above the imported ones.
                tx.execute(
                    "SELECT setval('uctx_slice_id', GREATEST($1, (SELECT last_value FROM uctx_slice_id)))",
                    &[&last],
                )?;
            }
            tx.commit()?;
            Ok(ids)
        })?;
        let written: i64 = rows.iter().map(|r| r.bytes).sum();
        self.after_write(written.max(0) as u64);
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }
}

impl Store for PgPool {
    fn append(&self, batch: &[(NewSlice, Vec<f32>)]) -> Result<Vec<u64>> {
        self.write_rows(batch, None)
    }

    fn import(&self, batch: &[(Slice, Vec<f32>)]) -> Result<bool> {
        let (metas, new): (Vec<SliceMeta>, Vec<(NewSlice, Vec<f32>)>) = batch
            .iter()
            .map(|(s, v)| (s.meta.clone(), (unwritten(s), v.clone())))
            .unzip();
        self.write_rows(&new, Some(&metas))?;
        Ok(true)
    }

    fn get(&self, id: u64) -> Result<Option<Slice>> {
        let id = id_param(id);
        let row = self.with("read a slice", |c| {
            c.query_opt(
                &format!("SELECT {META}, text_len, text_z FROM uctx_slices WHERE id = $1"),
                &[&id],
            )
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let meta = self.meta_of(&row)?;
        let len: i32 = row.get(12);
        let z: Vec<u8> = row.get(13);
        let text = zstd::bulk::decompress(&z, len.max(0) as usize)
            .ok()
            .filter(|b| b.len() == len as usize)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| self.corrupt(format!("slice {id} holds undecodable text")))?;
        Ok(Some(Slice { meta, text }))
    }

    fn meta(&self, id: u64) -> Result<Option<SliceMeta>> {
        let id = id_param(id);
        let row = self.with("read a slice's metadata", |c| {
            c.query_opt(
                &format!("SELECT {META} FROM uctx_slices WHERE id = $1"),
                &[&id],
            )
        })?;
        row.map(|r| self.meta_of(&r)).transpose()
    }

    fn metas(&self, scope: Scope<'_>) -> Result<Vec<SliceMeta>> {
        self.metas_where("list slices", "true", scope, META)?
            .iter()
            .map(|r| self.meta_of(r))
            .collect()
    }

    fn search(&self, query: &[f32], k: usize, scope: Scope<'_>) -> Result<Vec<Hit>> {
        if query.len() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got: query.len(),
            });
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let q = HalfVec(
            query
                .iter()
                .map(|&x| half::f16::from_f32(if x.is_finite() { x } else { 0.0 }))
                .collect(),
        );
        let limit = k.min(100_000) as i64;
        let ef = (k * 4).clamp(100, 1000);
        let ns = scope.name().map(str::to_string);
        let rows = self.with("search", |c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(&format!(
                "SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.ef_search = {ef}"
            ))?;
            let rows = match &ns {
                None => tx.query(
                    &format!("SELECT {META}, embedding <=> $1 FROM uctx_slices ORDER BY embedding <=> $1 LIMIT $2"),
                    &[&q, &limit],
                )?,
                Some(ns) => tx.query(
                    &format!(
                        "SELECT {META}, embedding <=> $1 FROM uctx_slices WHERE namespace = $3 \
                         ORDER BY embedding <=> $1 LIMIT $2"
                    ),
                    &[&q, &limit, ns],
                )?,
            };
            tx.commit()?;
            Ok(rows)
        })?;
        let mut hits = Vec::with_capacity(rows.len());
        for r in &rows {
            let meta = self.meta_of(r)?;
            let distance: Option<f64> = r.get(12);
            let score = distance.map_or(0.0, |d| (1.0 - d) as f32);
            hits.push(Hit {
                score: if score.is_finite() { score } else { 0.0 },
                meta,
            });
        }
        // Relaxed order: the index may return near neighbours slightly out of order.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.meta.id.cmp(&b.meta.id)));
        Ok(hits)
    }

    fn lexical_search(&self, query: &str, k: usize, scope: Scope<'_>) -> Result<Vec<(u64, f32)>> {
        if k == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let query = searchable(query).into_owned();
        let limit = k.min(100_000) as i64;
        let ns = scope.name().map(str::to_string);
        let rows = self.with("search the text", |c| match &ns {
            None => c.query(
                &format!(
                    "SELECT id, ts_rank_cd(tsv, q) AS score FROM uctx_slices, {TSQUERY} \
                     WHERE tsv @@ q ORDER BY score DESC, id LIMIT $2"
                ),
                &[&query, &limit],
            ),
            Some(ns) => c.query(
                &format!(
                    "SELECT id, ts_rank_cd(tsv, q) AS score FROM uctx_slices, {TSQUERY} \
                     WHERE tsv @@ q AND namespace = $3 ORDER BY score DESC, id LIMIT $2"
                ),
                &[&query, &limit, ns],
            ),
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, f32>(1)))
            .collect())
    }

    fn record(&self, events: &[WitnessEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.writable("record witness events")?;
        /// What a batch of events does to one slice.
        #[derive(Default)]
        struct Change {
            uses: i64,
            touched: bool,
            pin: Option<bool>,
        }
        let mut per: std::collections::BTreeMap<i64, Change> = Default::default();
        for e in events {
            let id = match *e {
                WitnessEvent::Used(id)
                | WitnessEvent::Recalled(id)
                | WitnessEvent::Pin(id)
                | WitnessEvent::Unpin(id) => id,
            };
            let c = per.entry(id_param(id)).or_default();
            match e {
                WitnessEvent::Used(_) => {
                    c.uses += 1;
                    c.touched = true;
                }
                WitnessEvent::Recalled(_) => c.touched = true,
                WitnessEvent::Pin(_) => c.pin = Some(true),
                WitnessEvent::Unpin(_) => c.pin = Some(false),
            }
        }
        self.with_write("record witness events", |c| {
            let mut tx = c.transaction()?;
            // The pool-wide write counter, as the directory pool's `next_id - 1`.
            let seq: i64 = tx
                .query_one("SELECT last_value FROM uctx_slice_id", &[])?
                .get(0);
            // In id order, so that concurrent writers lock rows in one order.
            let update = tx.prepare(
                "UPDATE uctx_slices SET uses = LEAST(uses::bigint + $2, 2147483647)::integer, \
                 last_used_seq = CASE WHEN $3 THEN GREATEST(last_used_seq, $4) ELSE last_used_seq END, \
                 pinned = COALESCE($5, pinned) WHERE id = $1",
            )?;
            for (id, c) in &per {
                tx.execute(&update, &[id, &c.uses, &c.touched, &seq, &c.pin])?;
            }
            tx.commit()
        })
    }

    fn forget(&self, ids: &[u64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.writable("forget slices")?;
        let ids: Vec<i64> = ids.iter().map(|&i| id_param(i)).collect();
        self.with_write("forget slices", |c| {
            c.execute("DELETE FROM uctx_slices WHERE id = ANY($1)", &[&ids])
        })
    }

    fn delete_namespace(&self, ns: &str) -> Result<u64> {
        self.writable("delete a namespace")?;
        self.with_write("delete a namespace", |c| {
            c.execute("DELETE FROM uctx_slices WHERE namespace = $1", &[&ns])
        })
    }

    fn clear(&self) -> Result<u64> {
        self.writable("clear the pool")?;
        self.with_write("clear the pool", |c| {
            c.execute("DELETE FROM uctx_slices", &[])
        })
    }

    fn namespaces(&self) -> Result<Vec<(String, u64)>> {
        let rows = self.with("list namespaces", |c| {
            c.query(
                "SELECT namespace, count(*) FROM uctx_slices GROUP BY namespace ORDER BY namespace COLLATE \"C\"",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn stats(&self) -> Result<PoolStats> {
        let row = self.with("read the pool's totals", |c| {
            c.query_one(
                "SELECT count(*), COALESCE(sum(tokens), 0)::bigint, count(DISTINCT namespace), \
                 pg_total_relation_size('uctx_slices') FROM uctx_slices",
                &[],
            )
        })?;
        let budget = self.budget()?;
        Ok(PoolStats {
            slices: row.get::<_, i64>(0) as u64,
            tokens: row.get::<_, i64>(1) as u64,
            namespaces: row.get::<_, i64>(2) as u64,
            bytes_on_disk: row.get::<_, i64>(3) as u64,
            budget_bytes: budget,
        })
    }

    fn set_budget(&self, bytes: u64) -> Result<()> {
        self.writable("set the budget")?;
        let value = bytes.to_string();
        self.with_write("set the budget", |c| {
            c.execute(
                "INSERT INTO uctx_meta (key, value) VALUES ('budget_bytes', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&value],
            )
            .map(drop)
        })?;
        // As the directory pool: a lower budget evicts at once.
        self.evict().map(drop)
    }

    fn last_turn(&self, ns: &str) -> Result<Option<u64>> {
        let row = self.with("read the latest turn", |c| {
            c.query_one(
                "SELECT max(turn) FROM uctx_slices WHERE namespace = $1",
                &[&ns],
            )
        })?;
        Ok(row.get::<_, Option<i64>>(0).map(|t| t as u64))
    }

    fn ids(&self, scope: Scope<'_>) -> Result<Vec<u64>> {
        Ok(self
            .metas_where("list slices", "true", scope, "id")?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
    }

    fn pinned(&self, scope: Scope<'_>) -> Result<Vec<u64>> {
        Ok(self
            .metas_where("list pinned slices", "pinned", scope, "id")?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
    }

    fn encoder_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn refresh(&self) -> Result<bool> {
        // Every read asks the server: there is nothing to pick up.
        Ok(false)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn as_dir(&self) -> Option<&Pool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redacted("postgres://alice:s3cret@db.example:5432/team"),
            "postgres://alice@db.example:5432/team"
        );
        assert_eq!(redacted("postgres://alice@h/db"), "postgres://alice@h/db");
        assert_eq!(redacted("postgresql://h/db"), "postgresql://h/db");
        assert_eq!(
            redacted("postgres://u:pw@h/db?password=pw2&sslmode=disable"),
            "postgres://u@h/db"
        );
        assert_eq!(redacted("host=h user=u password=pw"), "host=h user=u");
        assert!(is_url("postgres://h/db") && is_url("postgresql://h/db"));
        assert!(!is_url("/var/pool") && !is_url("postgres"));
    }

    #[test]
    fn halfvec_is_written_in_pgvectors_binary_format() {
        let v = HalfVec(vec![half::f16::from_f32(1.0), half::f16::from_f32(-127.0)]);
        let mut out = bytes::BytesMut::new();
        v.to_sql(&Type::BYTEA, &mut out).unwrap();
        assert_eq!(&out[..4], &[0, 2, 0, 0]);
        assert_eq!(
            &out[4..6],
            &half::f16::from_f32(1.0).to_bits().to_be_bytes()
        );
        assert_eq!(
            &out[6..8],
            &half::f16::from_f32(-127.0).to_bits().to_be_bytes()
        );
        // Every i8 code is exact in f16.
        for c in -127i8..=127 {
            assert_eq!(half::f16::from_f32(c as f32).to_f32(), c as f32);
        }
    }
}
