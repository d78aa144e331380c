//! The MySQL pool handlers reach as a resource (`ctx.resource::<MySqlPool>()?`), built once at
//! startup from `DATABASE_URL` in the dj-database-url form a Django project already has
//! (`mysql://user:pass@host:port/db`; TLS as RDS needs it with
//! `?ssl-mode=VERIFY_IDENTITY&ssl-ca=/path/to/rds-ca.pem`). `CELERIAC_DATABASE_POOL_SIZE` caps
//! its connections (default 10). The pool connects lazily, so a worker starts while the database
//! is down, and tasks that need it fail (and may retry) until it is back. Without `DATABASE_URL`
//! the pool is declared unavailable with that reason.
//!
//! Handlers should hold a connection only for the statements that need it, never across S3 calls
//! or CPU work: take it from the pool per query (`sqlx::query(..).fetch_one(pool)`).

use std::str::FromStr as _;
use std::time::Duration;

pub use sqlx::MySqlPool;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

use crate::cli::ConfigError;
use crate::registry::RegistryBuilder;

/// The environment variable with the database URL (dj-database-url's name).
pub const DATABASE_URL: &str = "DATABASE_URL";
/// The environment variable with the pool's size.
pub const POOL_SIZE: &str = "CELERIAC_DATABASE_POOL_SIZE";

/// `url` with its password hidden, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// A parsed `DATABASE_URL`: the connection options, and the URL with its password hidden (the
/// only form that is ever shown; `Debug` and `Display` print it).
#[derive(Clone)]
pub struct DatabaseUrl {
    options: MySqlConnectOptions,
    redacted: String,
}

impl DatabaseUrl {
    /// Reads a `mysql://user:pass@host:port/db[?ssl-mode=…&ssl-ca=…]` URL.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            setting: DATABASE_URL,
            reason,
        };
        if !url.starts_with("mysql://") {
            return Err(invalid(format!("{} is not a mysql:// URL", redact(url))));
        }
        // sqlx's parse errors can quote the URL: only the redacted form is shown.
        let options = MySqlConnectOptions::from_str(url)
            .map_err(|_| invalid(format!("{} cannot be read as a MySQL URL", redact(url))))?;
        Ok(Self {
            options,
            redacted: redact(url),
        })
    }

    /// The URL of `DATABASE_URL`, or `None` when it is unset or blank.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let url = std::env::var(DATABASE_URL).unwrap_or_default();
        if url.trim().is_empty() {
            return Ok(None);
        }
        Self::parse(&url).map(Some)
    }

    /// The connection options (TLS included).
    pub fn options(&self) -> &MySqlConnectOptions {
        &self.options
    }

    /// The URL with its password hidden.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted).finish()
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Adds the pool from the environment to `builder` (or declares it unavailable, and why).
/// Must run inside a tokio runtime. Returns the redacted URL and the size, for the log.
pub fn add_pool(
    builder: RegistryBuilder,
) -> Result<(RegistryBuilder, Option<(String, u32)>), ConfigError> {
    let Some(url) = DatabaseUrl::from_env()? else {
        return Ok((
            builder.unavailable::<MySqlPool>(format!("{DATABASE_URL} is not set")),
            None,
        ));
    };
    let size = match std::env::var(POOL_SIZE) {
        Err(_) => 10,
        Ok(s) => s
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or(ConfigError::Invalid {
                setting: POOL_SIZE,
                reason: format!("{s:?} is not a pool size in 1..=1000"),
            })?,
    };
    let pool = MySqlPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(url.options().clone());
    Ok((builder.resource(pool), Some((url.redacted, size))))
}
