//! The team pool's schema: versioned migrations, applied under an advisory
//! lock so that writers opening at once apply each exactly once.

use postgres::{Client, Transaction};

use uctx::pool::PoolOptions;
use uctx::{Error, Result};

/// The schema this build writes and reads (`uctx_meta.schema_version`).
pub const SCHEMA_VERSION: u32 = 2;

/// Each migration: the version it brings the schema to, and its SQL.
/// `{dim}` stands for the encoder's dimension.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../migrations/001_init.sql")),
    (2, include_str!("../migrations/002_serve_journal.sql")),
];

/// The advisory lock key migrations hold ("uctx" in ASCII).
const MIGRATION_LOCK: i64 = 0x7563_7478;

/// What `uctx_meta` says of the pool.
pub struct Found {
    pub fingerprint: String,
    pub dim: usize,
}

fn server_error(location: &str, detail: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::Server {
        location: location.to_string(),
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn db(location: &str, what: &str, e: postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    };
    server_error(
        location,
        format!("cannot {what}: {detail}"),
        "check that the URL's user may create tables in the database (or its schema on `search_path`)",
    )
}

fn no_pool(location: &str) -> Error {
    server_error(
        location,
        "the database holds no uctx pool",
        "create one by writing to it (`uctx init --pool URL` or `uctx ingest --pool URL …`), or check the database and `search_path` in the URL",
    )
}

/// The schema version recorded, `None` when there is no pool.
fn version(tx: &mut Transaction<'_>, location: &str) -> Result<Option<u32>> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('uctx_meta') IS NOT NULL", &[])
        .map_err(|e| db(location, "look for the pool's tables", e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let v = tx
        .query_opt(
            "SELECT value FROM uctx_meta WHERE key = 'schema_version'",
            &[],
        )
        .map_err(|e| db(location, "read the schema version", e))?
        .map(|r| r.get::<_, String>(0));
    match v.as_deref().map(str::parse::<u32>) {
        Some(Ok(v)) => Ok(Some(v)),
        _ => Err(server_error(
            location,
            format!("uctx_meta holds no readable schema_version ({v:?})"),
            "the table was changed outside uctx; restore the database from a backup",
        )),
    }
}

fn too_new(location: &str, found: u32) -> Error {
    server_error(
        location,
        format!(
            "the pool has schema version {found}; this uctx knows versions up to {SCHEMA_VERSION}"
        ),
        "upgrade uctx on this machine (a newer one wrote the pool)",
    )
}

fn found(tx: &mut Transaction<'_>, location: &str) -> Result<Found> {
    let get = |tx: &mut Transaction<'_>, key: &str| -> Result<String> {
        tx.query_opt("SELECT value FROM uctx_meta WHERE key = $1", &[&key])
            .map_err(|e| db(location, "read the pool's settings", e))?
            .map(|r| r.get::<_, String>(0))
            .ok_or_else(|| {
                server_error(
                    location,
                    format!("uctx_meta has no {key}"),
                    "the table was changed outside uctx; restore the database from a backup",
                )
            })
    };
    let fingerprint = get(tx, "encoder_fingerprint")?;
    let dim = get(tx, "dim")?.parse::<usize>().map_err(|_| {
        server_error(
            location,
            "uctx_meta holds an unreadable dim",
            "the table was changed outside uctx; restore the database from a backup",
        )
    })?;
    Ok(Found { fingerprint, dim })
}

/// The settings of an existing pool of a version this build reads.
pub fn inspect(client: &mut Client, location: &str) -> Result<Found> {
    let mut tx = client.transaction().map_err(|e| db(location, "begin", e))?;
    match version(&mut tx, location)? {
        None => Err(no_pool(location)),
        Some(v) if v > SCHEMA_VERSION => Err(too_new(location, v)),
        Some(_) => found(&mut tx, location),
    }
}

/// Check the schema, creating it (with `opts.create`) or migrating it (a
/// writer) first; the pool's recorded fingerprint and dimension.
pub fn prepare(client: &mut Client, location: &str, opts: &PoolOptions) -> Result<Found> {
    let mut tx = client.transaction().map_err(|e| db(location, "begin", e))?;
    if !opts.read_only {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(|e| db(location, "take the migration lock", e))?;
    }
    let current = version(&mut tx, location)?;
    let from = match current {
        None if !opts.create || opts.read_only => return Err(no_pool(location)),
        None => 0,
        Some(v) if v > SCHEMA_VERSION => return Err(too_new(location, v)),
        Some(v) if v < SCHEMA_VERSION && opts.read_only => {
            return Err(server_error(
                location,
                format!("the pool has schema version {v}, older than this uctx's {SCHEMA_VERSION}"),
                "open it once with a writer of this version (`uctx ingest` or `uctx init`), which migrates it",
            ))
        }
        Some(v) => v,
    };
    if from == SCHEMA_VERSION {
        let f = found(&mut tx, location)?;
        tx.commit().map_err(|e| db(location, "finish opening", e))?;
        return Ok(f);
    }
    if opts.dim == 0 || opts.dim > 4000 {
        return Err(Error::invalid(format!(
            "an encoder of {} dimensions; a team pool's halfvec index takes 1 to 4,000",
            opts.dim
        )));
    }
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        tx.batch_execute(&sql.replace("{dim}", &opts.dim.to_string()))
            .map_err(|e| db(location, &format!("migrate the schema to version {v}"), e))?;
    }
    if from == 0 {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            .to_string();
        let budget = opts
            .budget_bytes
            .unwrap_or(uctx::pool::DEFAULT_BUDGET)
            .to_string();
        let dim = opts.dim.to_string();
        for (key, value) in [
            ("encoder_fingerprint", opts.encoder_fingerprint.as_str()),
            ("dim", dim.as_str()),
            ("budget_bytes", budget.as_str()),
            ("created_ms", created.as_str()),
            ("text_search_config", crate::TEXT_SEARCH_CONFIG),
        ] {
            tx.execute(
                "INSERT INTO uctx_meta (key, value) VALUES ($1, $2)",
                &[&key, &value],
            )
            .map_err(|e| db(location, "write the pool's settings", e))?;
        }
    }
    let version = SCHEMA_VERSION.to_string();
    tx.execute(
        "INSERT INTO uctx_meta (key, value) VALUES ('schema_version', $1) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&version],
    )
    .map_err(|e| db(location, "record the schema version", e))?;
    let f = found(&mut tx, location)?;
    tx.commit()
        .map_err(|e| db(location, "commit the schema", e))?;
    Ok(f)
}
