//! AMQP URLs as Celery users write them: `amqp://user:password@host:5672/vhost`, `amqps://` for
//! TLS, and `pyamqp://` (Kombu's name for the same transport), with Kombu's rules for the
//! virtual host and TLS options in the query. `Display` never shows the password.
//!
//! Virtual host, as Kombu reads it (`kombu.utils.url.url_to_parts`): the path without its first
//! `/`, percent-decoded, and `/` when that is empty. So `amqp://h`, `amqp://h/`, `amqp://h//` and
//! `amqp://h/%2F` all mean the vhost `/`, and `amqp://h/prod` means `prod`. (The RabbitMQ URI
//! spec reads `amqp://h/` as the empty vhost; we follow Kombu, since Celery URLs are what we get.)
//!
//! Query options (all optional): `ssl_ca_certs` (also `ca_certs`, `cacertfile`) is a PEM file of
//! CA certificates trusted in addition to the bundled web roots (Amazon MQ's certificates chain to
//! a public root, so it is rarely needed); `ssl_certfile` + `ssl_keyfile` (also `certfile`,
//! `keyfile`) a client certificate; `ssl_cert_reqs=required` (the default; `none` is refused,
//! since the TLS stack cannot skip verification); `heartbeat` in seconds; `connect_timeout` in
//! seconds. Kombu's `parse_url` reads the same `ssl_*` names from a URL; Celery's
//! `broker_use_ssl` setting uses `ca_certs`, `certfile`, `keyfile`, `cert_reqs`.

use std::fmt;
use std::path::PathBuf;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use thiserror::Error;

/// Characters percent-encoded when a vhost is written back into a URL.
const VHOST: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An AMQP URL that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AmqpUrlError {
    /// Not a URL (the text is not repeated, since it may hold a password).
    #[error("not a valid URL: {0}")]
    Parse(#[from] url::ParseError),
    /// A scheme other than `amqp`, `amqps` or `pyamqp`.
    #[error("unsupported scheme `{0}` (expected amqp://, amqps:// or pyamqp://)")]
    Scheme(String),
    /// `librabbitmq://`: the same protocol through a C library Kombu no longer recommends.
    #[error(
        "librabbitmq:// is not supported: write the same URL with amqp:// (it is the same AMQP 0-9-1 protocol)"
    )]
    Librabbitmq,
    /// A part of the URL is not valid (percent-encoding that is not UTF-8, a bad port).
    #[error("invalid {part} in the URL: {reason}")]
    Part {
        /// Which part.
        part: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A query option with a value we do not understand or cannot honour.
    #[error("invalid option {name}: {reason}")]
    Option {
        /// The option's name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A certificate or key file could not be read.
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
}

/// A parsed AMQP broker URL.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    tls: bool,
    user: String,
    password: String,
    host: String,
    port: u16,
    vhost: String,
    ca_certs: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    heartbeat: Option<u16>,
    connect_timeout_ms: Option<u64>,
}

fn decode(part: &'static str, text: &str) -> Result<String, AmqpUrlError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|e| AmqpUrlError::Part {
            part,
            reason: e.to_string(),
        })
}

fn seconds(name: &'static str, v: &str) -> Result<f64, AmqpUrlError> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| AmqpUrlError::Option {
            name,
            reason: format!("`{v}` is not a number of seconds"),
        })
}

impl AmqpUrl {
    /// Parses a Celery-style AMQP URL.
    pub fn parse(text: &str) -> Result<Self, AmqpUrlError> {
        let text = text.trim();
        let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let tls = match scheme.as_deref() {
            Some("amqp" | "pyamqp") => false,
            Some("amqps") => true,
            Some("librabbitmq") => return Err(AmqpUrlError::Librabbitmq),
            Some(other) => return Err(AmqpUrlError::Scheme(other.to_owned())),
            None => return Err(AmqpUrlError::Scheme(String::new())),
        };
        let url = url::Url::parse(text)?;
        let user = match url.username() {
            "" => "guest".to_owned(),
            u => decode("user name", u)?,
        };
        let password = match url.password() {
            None => "guest".to_owned(),
            Some(p) => decode("password", p)?,
        };
        let host = match url.host_str() {
            None | Some("") => "localhost".to_owned(),
            Some(h) => decode("host", h.trim_start_matches('[').trim_end_matches(']'))?,
        };
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        let path = url.path();
        let path = path.strip_prefix('/').unwrap_or(path);
        let vhost = match decode("virtual host", path)? {
            v if v.is_empty() => "/".to_owned(),
            v => v,
        };
        let mut parsed = Self {
            tls,
            user,
            password,
            host,
            port,
            vhost,
            ca_certs: None,
            certfile: None,
            keyfile: None,
            heartbeat: None,
            connect_timeout_ms: None,
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "ssl_ca_certs" | "ca_certs" | "cacertfile" => {
                    parsed.ca_certs = Some(PathBuf::from(v.as_ref()))
                }
                "ssl_certfile" | "certfile" => parsed.certfile = Some(PathBuf::from(v.as_ref())),
                "ssl_keyfile" | "keyfile" => parsed.keyfile = Some(PathBuf::from(v.as_ref())),
                "ssl_cert_reqs" | "cert_reqs" => {
                    match v.to_ascii_lowercase().trim_start_matches("cert_") {
                        "required" | "optional" => {}
                        other => {
                            return Err(AmqpUrlError::Option {
                                name: "ssl_cert_reqs",
                                reason: format!(
                                    "`{other}` is not supported: certificates are always verified (use ssl_ca_certs for a private CA)"
                                ),
                            });
                        }
                    }
                }
                "ssl_check_hostname" if v.eq_ignore_ascii_case("false") => {
                    return Err(AmqpUrlError::Option {
                        name: "ssl_check_hostname",
                        reason: "host names are always checked".into(),
                    });
                }
                "heartbeat" => {
                    let s = seconds("heartbeat", &v)?;
                    parsed.heartbeat = Some(s.min(f64::from(u16::MAX)) as u16);
                }
                "connect_timeout" => {
                    let s = seconds("connect_timeout", &v)?;
                    parsed.connect_timeout_ms = Some((s * 1000.0) as u64);
                }
                // Kombu options that do not change how we connect.
                _ => {}
            }
        }
        if parsed.certfile.is_some() != parsed.keyfile.is_some() {
            return Err(AmqpUrlError::Option {
                name: "ssl_certfile",
                reason: "ssl_certfile and ssl_keyfile must be given together".into(),
            });
        }
        if !tls && (parsed.ca_certs.is_some() || parsed.certfile.is_some()) {
            return Err(AmqpUrlError::Option {
                name: "ssl_ca_certs",
                reason: "TLS options need an amqps:// URL".into(),
            });
        }
        Ok(parsed)
    }

    /// Whether the connection uses TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The user name (`guest` when the URL has none, as in Kombu).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (5672, or 5671 for TLS, when the URL has none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The virtual host (`/` by default).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The PEM file of extra CA certificates, if any.
    pub fn ca_certs(&self) -> Option<&PathBuf> {
        self.ca_certs.as_ref()
    }

    /// The same URL on another virtual host (tests use one vhost each).
    pub fn with_vhost(&self, vhost: &str) -> Self {
        Self {
            vhost: vhost.to_owned(),
            ..self.clone()
        }
    }

    /// The URL with the password replaced by `***`: the only form that may be logged.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let user = utf8_percent_encode(&self.user, VHOST);
        let vhost = if self.vhost == "/" {
            "/".to_owned()
        } else {
            utf8_percent_encode(&self.vhost, VHOST).to_string()
        };
        format!("{scheme}://{user}:***@{host}:{}/{vhost}", self.port)
    }

    /// The URI lapin connects to.
    pub(crate) fn to_uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: self.heartbeat,
                connection_timeout: self.connect_timeout_ms,
                ..AMQPQueryString::default()
            },
        }
    }

    /// The TLS settings lapin needs: the CA file's PEM text and the client identity.
    pub(crate) fn tls_config(&self) -> Result<OwnedTLSConfig, AmqpUrlError> {
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| AmqpUrlError::Certificate {
                what,
                path: path.clone(),
                source,
            })
        };
        let cert_chain = match &self.ca_certs {
            Some(p) => Some(String::from_utf8(read("ssl_ca_certs", p)?).map_err(|_| {
                AmqpUrlError::Option {
                    name: "ssl_ca_certs",
                    reason: format!("`{}` is not a PEM text file", p.display()),
                }
            })?),
            None => None,
        };
        let identity = match (&self.certfile, &self.keyfile) {
            (Some(c), Some(k)) => Some(OwnedIdentity::PKCS8 {
                pem: read("ssl_certfile", c)?,
                key: read("ssl_keyfile", k)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> AmqpUrl {
        AmqpUrl::parse(text).unwrap()
    }

    #[test]
    fn vhost_follows_kombu() {
        for text in [
            "amqp://h",
            "amqp://h/",
            "amqp://h//",
            "amqp://h/%2F",
            "amqp://h/%2f",
        ] {
            assert_eq!(p(text).vhost(), "/", "{text}");
        }
        assert_eq!(p("amqp://h/prod").vhost(), "prod");
        assert_eq!(p("amqp://h/a%2Fb").vhost(), "a/b");
        assert_eq!(p("amqp://h/a/b").vhost(), "a/b");
        assert_eq!(p("amqp://h/my%20vhost").vhost(), "my vhost");
    }

    #[test]
    fn defaults_are_kombus() {
        let u = p("amqp://");
        assert_eq!(
            (u.user(), u.password.as_str(), u.host(), u.port()),
            ("guest", "guest", "localhost", 5672)
        );
        let u = p("amqps://b-1234.mq.eu-west-1.amazonaws.com");
        assert!(u.is_tls());
        assert_eq!(u.port(), 5671);
        let u = p("pyamqp://app:pw@rabbit:5673/celery");
        assert!(!u.is_tls());
        assert_eq!((u.user(), u.port(), u.vhost()), ("app", 5673, "celery"));
        assert_eq!(p("amqp://[::1]:5672//").host(), "::1");
    }

    #[test]
    fn credentials_are_percent_decoded_and_never_shown() {
        let u = p("amqp://us%40er:p%40ss%3Aw%2Frd@rabbit:5672/prod");
        assert_eq!(u.user(), "us@er");
        assert_eq!(u.password, "p@ss:w/rd");
        let shown = u.to_string();
        assert_eq!(shown, "amqp://us%40er:***@rabbit:5672/prod");
        assert!(!format!("{u:?}").contains("p@ss"));
        assert_eq!(
            p("amqp://guest:secret@localhost//").to_string(),
            "amqp://guest:***@localhost:5672//"
        );
        let uri = u.to_uri();
        assert_eq!(uri.authority.userinfo.password, "p@ss:w/rd");
        assert_eq!(uri.vhost, "prod");
    }

    #[test]
    fn schemes_other_than_amqp_are_refused_clearly() {
        assert!(matches!(
            AmqpUrl::parse("librabbitmq://guest@localhost//"),
            Err(AmqpUrlError::Librabbitmq)
        ));
        assert!(matches!(
            AmqpUrl::parse("redis://localhost/0"),
            Err(AmqpUrlError::Scheme(s)) if s == "redis"
        ));
        assert!(AmqpUrl::parse("localhost:5672").is_err());
        let e = AmqpUrl::parse("amqp://u:secret@h:notaport/").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn tls_options_come_from_the_query() {
        let u = p("amqps://u:pw@mq:5671/prod?ssl_ca_certs=/etc/ca.pem&heartbeat=60");
        assert_eq!(u.ca_certs(), Some(&PathBuf::from("/etc/ca.pem")));
        assert_eq!(u.heartbeat, Some(60));
        assert!(!u.to_string().contains("ca.pem"));
        assert_eq!(
            p("amqps://h/?cacertfile=/ca.pem").ca_certs,
            p("amqps://h/?ca_certs=/ca.pem").ca_certs
        );
        assert!(AmqpUrl::parse("amqps://h/?ssl_cert_reqs=CERT_NONE").is_err());
        assert!(AmqpUrl::parse("amqps://h/?ssl_certfile=/c.pem").is_err());
        assert!(AmqpUrl::parse("amqp://h/?ssl_ca_certs=/ca.pem").is_err());
        assert!(AmqpUrl::parse("amqp://h/?heartbeat=soon").is_err());
        let e = p("amqps://h/?ssl_ca_certs=/nonexistent/ca.pem")
            .tls_config()
            .unwrap_err();
        assert!(matches!(e, AmqpUrlError::Certificate { .. }));
    }
}
