//! A pool of its own on a server for a test or a benchmark: a schema created
//! for it and dropped with it.

use std::str::FromStr;

use uctx::{Error, Result};

/// A schema on the server at `server` holding one pool, dropped (with
/// everything in it) when this is dropped.
pub struct Scratch {
    server: String,
    name: String,
    url: String,
}

impl Scratch {
    /// Create the schema `name` (a plain identifier; an old one of that name is
    /// dropped first) on the server at `server`, a pool URL.
    pub fn create(server: &str, name: &str) -> Result<Scratch> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid(format!(
                "{name:?} is not a schema name of letters, digits and underscores"
            )));
        }
        let mut c = admin(server)?;
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        ))
        .map_err(|e| fail(server, "create a schema", e))?;
        let sep = if server.contains('?') { '&' } else { '?' };
        Ok(Scratch {
            url: format!("{server}{sep}options=-c%20search_path%3D{name}%2Cpublic"),
            server: server.to_string(),
            name: name.to_string(),
        })
    }

    /// The pool's URL: the server's, with the schema first on `search_path`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's URL, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The schema's name, to qualify tables with in direct queries.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut c) = admin(&self.server) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

fn admin(server: &str) -> Result<postgres::Client> {
    let config = postgres::Config::from_str(server).map_err(|e| {
        Error::invalid(format!(
            "{} is not a PostgreSQL URL ({e})",
            crate::redacted(server)
        ))
    })?;
    config
        .connect(postgres::NoTls)
        .map_err(|e| fail(server, "connect", e))
}

fn fail(server: &str, what: &str, e: postgres::Error) -> Error {
    Error::Server {
        location: crate::redacted(server),
        detail: format!("cannot {what}: {e}"),
        fix: "check that the server is up and the URL's user may create schemas".into(),
    }
}
