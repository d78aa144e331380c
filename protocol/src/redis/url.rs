//! Redis URLs as Celery users write them, with TLS options in the query like redis-py/Kombu
//! (`rediss://:pw@host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem`), and a display form
//! that never shows the password.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A URL that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a URL (the text is not repeated, since it may hold a password).
    #[error("not a valid URL: {0}")]
    Parse(#[from] url::ParseError),
    /// A scheme other than `redis`, `rediss` or `unix`.
    #[error("unsupported scheme `{0}` (expected redis://, rediss:// or unix://)")]
    Scheme(String),
    /// A query option with a value we do not understand.
    #[error("invalid option {name}: {reason}")]
    Option {
        /// The option's name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A certificate file could not be read.
    #[error("cannot read {what} `{path}`: {source}")]
    Certificate {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The redis client refused the URL.
    #[error("redis client: {0}")]
    Client(#[from] redis::RedisError),
}

/// Whether and how the server certificate is checked on `rediss://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVerify {
    /// Verify the certificate (the default; `ssl_cert_reqs=required` or `optional`).
    Verify,
    /// Accept any certificate (`ssl_cert_reqs=none`).
    None,
}

/// A parsed Redis URL.
#[derive(Clone)]
pub struct RedisUrl {
    url: url::Url,
    db: i64,
    verify: TlsVerify,
    ca_certs: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
}

impl RedisUrl {
    /// Parses a Celery-style Redis URL.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let mut url = url::Url::parse(text.trim())?;
        match url.scheme() {
            "redis" | "rediss" | "unix" | "redis+unix" => {}
            other => return Err(UrlError::Scheme(other.to_owned())),
        }
        let mut verify = TlsVerify::Verify;
        let (mut ca_certs, mut certfile, mut keyfile) = (None, None, None);
        let mut db_from_query = None;
        let mut kept = Vec::new();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "ssl_cert_reqs" => {
                    verify = match v.to_ascii_lowercase().trim_start_matches("cert_") {
                        "required" | "optional" => TlsVerify::Verify,
                        "none" => TlsVerify::None,
                        other => {
                            return Err(UrlError::Option {
                                name: "ssl_cert_reqs",
                                reason: format!("`{other}` is not one of required, optional, none"),
                            });
                        }
                    }
                }
                "ssl_ca_certs" => ca_certs = Some(PathBuf::from(v.as_ref())),
                "ssl_certfile" => certfile = Some(PathBuf::from(v.as_ref())),
                "ssl_keyfile" => keyfile = Some(PathBuf::from(v.as_ref())),
                "ssl_check_hostname" => {}
                "db" | "virtual_host" => {
                    db_from_query = Some(v.parse::<i64>().map_err(|_| UrlError::Option {
                        name: "db",
                        reason: "not an integer".into(),
                    })?)
                }
                _ => kept.push((k.into_owned(), v.into_owned())),
            }
        }
        let path_db = url.path().trim_matches('/');
        let db = match (db_from_query, path_db) {
            (Some(db), _) => db,
            (None, "") => 0,
            (None, p) if url.scheme().contains("unix") => {
                let _ = p;
                0
            }
            (None, p) => p.parse::<i64>().map_err(|_| UrlError::Option {
                name: "db",
                reason: format!("the path `/{p}` is not a database number"),
            })?,
        };
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        if db_from_query.is_some() && !url.scheme().contains("unix") {
            url.set_path(&format!("/{db}"));
        }
        Ok(Self {
            url,
            db,
            verify,
            ca_certs,
            certfile,
            keyfile,
        })
    }

    /// The database number (Kombu's fanout prefix `/{db}.` uses it).
    pub fn db(&self) -> i64 {
        self.db
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "rediss"
    }

    /// The URL with any password replaced by `***`: the only form that may be logged.
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
    }

    /// A redis-rs client for this URL.
    pub fn client(&self) -> Result<redis::Client, UrlError> {
        if self.is_tls() {
            // rustls needs one process-wide crypto provider; ring is ours. Installing twice is
            // harmless (the second attempt reports the first one and is ignored).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut target = self.url.clone();
        if self.is_tls() && self.verify == TlsVerify::None {
            target.set_fragment(Some("insecure"));
        }
        let needs_certs = self.is_tls() && (self.ca_certs.is_some() || self.certfile.is_some());
        if !needs_certs {
            return Ok(redis::Client::open(target.as_str())?);
        }
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| UrlError::Certificate {
                what,
                path: path.clone(),
                source,
            })
        };
        let root_cert = self
            .ca_certs
            .as_ref()
            .map(|p| read("ssl_ca_certs", p))
            .transpose()?;
        let client_tls = match (&self.certfile, &self.keyfile) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read("ssl_certfile", c)?,
                client_key: read("ssl_keyfile", k)?,
            }),
            (None, None) => None,
            _ => {
                return Err(UrlError::Option {
                    name: "ssl_certfile",
                    reason: "ssl_certfile and ssl_keyfile must be given together".into(),
                });
            }
        };
        Ok(redis::Client::build_with_tls(
            target.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )?)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisUrl").field(&self.redacted()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shows() {
        let u = RedisUrl::parse("redis://:s3cret@127.0.0.1:6379/3").unwrap();
        assert_eq!(u.db(), 3);
        assert!(!u.to_string().contains("s3cret"));
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.to_string(), "redis://:***@127.0.0.1:6379/3");
        let u = RedisUrl::parse("redis://user:pw@host/0").unwrap();
        assert_eq!(u.to_string(), "redis://user:***@host/0");
    }

    #[test]
    fn tls_options_are_read_from_the_query() {
        let u = RedisUrl::parse("rediss://:pw@localhost:6380/1?ssl_cert_reqs=CERT_NONE").unwrap();
        assert!(u.is_tls());
        assert_eq!(u.verify, TlsVerify::None);
        assert!(u.client().is_ok());
        assert!(!u.redacted().contains("ssl_cert_reqs"));
        assert!(RedisUrl::parse("rediss://h/0?ssl_cert_reqs=maybe").is_err());
        assert!(RedisUrl::parse("amqp://guest@localhost//").is_err());
    }

    #[test]
    fn db_defaults_to_zero_and_must_be_a_number() {
        assert_eq!(RedisUrl::parse("redis://localhost").unwrap().db(), 0);
        assert!(RedisUrl::parse("redis://localhost/abc").is_err());
    }
}
