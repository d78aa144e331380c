//! The MySQL pool handlers reach as a resource (`ctx.resource::<MySqlPool>()?`), built once at
//! startup from `DATABASE_URL` in the dj-database-url form a Django project already has
//! (`mysql://user:pass@host:port/db`; TLS as RDS needs it with
//! `?ssl-mode=VERIFY_IDENTITY&ssl-ca=/path/to/rds-ca.pem`; `ssl_mode` as mysqlclient spells it
//! is read too, so the URL Django uses works here). `CELERIAC_DATABASE_POOL_SIZE` caps its
//! connections (default 10). The pool connects lazily, so a worker starts while the database is
//! down, and tasks that need it fail (and may retry) until it is back. Without `DATABASE_URL` the
//! pool is declared unavailable with that reason.
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

/// The TLS options under the names sqlx reads, each with the other spellings a URL may carry.
/// Django's mysqlclient takes `ssl_mode` as a keyword argument (dj-database-url hands every query
/// option but `ssl-ca` to it as one), so the URL a Django project already has says
/// `?ssl-ca=…&ssl_mode=VERIFY_IDENTITY`; PyMySQL and SQLAlchemy URLs say `ssl_ca`. sqlx skips
/// names it does not know and would connect with its default, PREFERRED: TLS that checks no
/// certificate.
const TLS_OPTIONS: [(&str, &[&str]); 4] = [
    ("ssl-mode", &["ssl_mode", "sslmode"]),
    ("ssl-ca", &["ssl_ca", "sslca"]),
    ("ssl-cert", &["ssl_cert", "sslcert"]),
    ("ssl-key", &["ssl_key", "sslkey"]),
];

/// `url` as sqlx is to read it: its TLS options under sqlx's names ([`TLS_OPTIONS`]), and a CA
/// given without a mode meaning `VERIFY_CA` (sqlx would keep PREFERRED and ignore the CA).
fn sqlx_url(mut url: url::Url) -> url::Url {
    if url.query().is_none() {
        return url;
    }
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(key, value)| {
            let name = TLS_OPTIONS
                .iter()
                .find(|(_, others)| others.contains(&&*key))
                .map_or_else(|| key.to_string(), |(name, _)| (*name).to_string());
            (name, value.into_owned())
        })
        .collect();
    let given = |name: &str| pairs.iter().any(|(key, _)| key == name);
    if given("ssl-ca") && !given("ssl-mode") {
        pairs.push(("ssl-mode".into(), "VERIFY_CA".into()));
    }
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url
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
        let options = url::Url::parse(url)
            .ok()
            .and_then(|u| MySqlConnectOptions::from_str(sqlx_url(u).as_str()).ok())
            .ok_or_else(|| invalid(format!("{} cannot be read as a MySQL URL", redact(url))))?;
        // sqlx builds its VERIFY_CA verifier with rustls' process-wide crypto provider, which
        // rustls cannot choose when, as here with the S3 client, both ring and aws-lc-rs are
        // compiled in: the connection would panic. ring is the one sqlx uses for the rest of the
        // handshake (and the Redis client for rediss://); a provider installed already is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
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

#[cfg(test)]
mod tests {
    use sqlx::ConnectOptions as _;
    use sqlx::mysql::MySqlSslMode;

    use super::*;

    fn options(url: &str) -> MySqlConnectOptions {
        MySqlConnectOptions::from_str(sqlx_url(url::Url::parse(url).unwrap()).as_str()).unwrap()
    }

    fn ca_of(o: &MySqlConnectOptions) -> Option<String> {
        o.to_url_lossy()
            .query_pairs()
            .find(|(k, _)| k == "ssl-ca")
            .map(|(_, v)| v.into_owned())
    }

    #[test]
    fn the_rds_form_is_read_as_written() {
        let o = options(
            "mysql://app:pw@db.example.com:3306/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/rds/ca.pem",
        );
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
        assert_eq!(ca_of(&o).as_deref(), Some("file: /etc/rds/ca.pem"));
        assert_eq!(o.get_host(), "db.example.com");
        assert_eq!(o.get_database(), Some("app"));
    }

    #[test]
    fn mysqlclient_spellings_are_not_ignored() {
        // What sqlx alone does with them: nothing (PREFERRED, no CA), which this guards against.
        let raw =
            MySqlConnectOptions::from_str("mysql://u@h/d?ssl_mode=VERIFY_IDENTITY&ssl_ca=/ca.pem")
                .unwrap();
        assert!(matches!(raw.get_ssl_mode(), MySqlSslMode::Preferred));
        assert_eq!(ca_of(&raw), None);

        let o = options("mysql://u@h/d?ssl-ca=/ca.pem&ssl_mode=verify_identity");
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
        assert_eq!(ca_of(&o).as_deref(), Some("file: /ca.pem"));
        let o = options("mysql://u@h/d?ssl_ca=/ca.pem&ssl_mode=VERIFY_IDENTITY");
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
        assert_eq!(ca_of(&o).as_deref(), Some("file: /ca.pem"));
    }

    #[test]
    fn a_ca_without_a_mode_is_checked() {
        assert!(matches!(
            options("mysql://u@h/d?ssl-ca=/ca.pem").get_ssl_mode(),
            MySqlSslMode::VerifyCa
        ));
        // An explicit mode stays what it says; no options, sqlx's default.
        assert!(matches!(
            options("mysql://u@h/d?ssl-ca=/ca.pem&ssl-mode=REQUIRED").get_ssl_mode(),
            MySqlSslMode::Required
        ));
        assert!(matches!(
            options("mysql://u@h/d").get_ssl_mode(),
            MySqlSslMode::Preferred
        ));
        assert!(matches!(
            options("mysql://u@h/d?charset=utf8mb4").get_ssl_mode(),
            MySqlSslMode::Preferred
        ));
    }

    #[test]
    fn other_options_and_escapes_survive() {
        let o = options(
            "mysql://u:p%40ss@h:3307/d?charset=utf8mb4&ssl-ca=/a%20b/ca.pem&ssl_mode=VERIFY_CA",
        );
        assert_eq!(o.get_charset(), "utf8mb4");
        assert_eq!(o.get_port(), 3307);
        assert_eq!(ca_of(&o).as_deref(), Some("file: /a b/ca.pem"));
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyCa));
        // The password is read (percent-decoded) by sqlx as before; only the query is rewritten.
        assert!(
            sqlx_url(url::Url::parse("mysql://u:p%40ss@h/d?x=1").unwrap())
                .as_str()
                .starts_with("mysql://u:p%40ss@h/d?")
        );
    }
}
