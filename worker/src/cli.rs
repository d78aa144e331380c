//! The command line: flags and environment variables (Celery's names) in, a validated
//! [`WorkerConfig`] out, then the worker runs with signals mapped to its shutdown input.
//!
//! Your own binary reuses all of it: `celeriac_worker::cli::main(registry_builder)`.

use std::process::ExitCode;
use std::time::Duration;

use celeriac_ops::http::Listener;
use celeriac_ops::{LogFormat, signals};
use celeriac_protocol::redis::{RedisUrl, UrlError};
use chrono_tz::Tz;
use clap::Parser;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::{BrokerUrl, ResultBackendConfig, WorkerConfig};
use crate::registry::RegistryBuilder;
use crate::test_tasks;
use crate::worker::Worker;

/// Flags and environment variables, as given.
#[derive(Debug, Parser)]
#[command(
    name = "celeriac-worker",
    version,
    about = "A Celery-compatible worker that runs Rust task handlers.",
    args_override_self = true
)]
pub struct Args {
    /// Broker URL (`redis://`, `rediss://`, `amqp://`, `amqps://`).
    #[arg(
        help = "Broker URL: redis://[:password@]host[:port][/db], rediss://…, or amqp://user:password@host[:port]/vhost, amqps://…",
        short = 'b',
        long,
        env = "CELERY_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub broker: String,
    /// Result backend: a redis:// URL, or django-db (django-celery-results' table in the
    /// database of DATABASE_URL). Without it no results are stored.
    #[arg(long, env = "CELERY_RESULT_BACKEND", hide_env_values = true)]
    pub result_backend: Option<String>,
    /// Store the task name, arguments, worker and periodic task name with results (Celery's
    /// result_extended; django-db's extended columns)
    #[arg(long, env = "CELERY_RESULT_EXTENDED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub result_extended: bool,
    /// Comma-separated queues to consume [default: $CELERY_TASK_DEFAULT_QUEUE or celery]
    #[arg(short = 'Q', long, env = "CELERY_WORKER_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Tasks run at the same time [default: number of CPUs]
    #[arg(short = 'c', long, env = "CELERY_WORKER_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Node name; %h = host name, %n = its first label, %d = its domain
    #[arg(
        short = 'n',
        long,
        env = "CELERY_WORKER_HOSTNAME",
        default_value = "celery@%h"
    )]
    pub hostname: String,
    /// Messages held per concurrency slot (0 = no limit)
    #[arg(long, env = "CELERY_WORKER_PREFETCH_MULTIPLIER", default_value_t = 4)]
    pub prefetch_multiplier: usize,
    /// Seconds a message may stay unacked before any worker restores it to its queue
    #[arg(long, env = "CELERY_BROKER_VISIBILITY_TIMEOUT", default_value = "3600")]
    pub visibility_timeout: f64,
    /// DEBUG, INFO, WARNING, ERROR or CRITICAL
    #[arg(
        short = 'l',
        long,
        env = "CELERY_WORKER_LOGLEVEL",
        default_value = "WARNING"
    )]
    pub loglevel: String,
    /// Seconds results are kept (0 = forever)
    #[arg(long, env = "CELERY_RESULT_EXPIRES", default_value = "86400")]
    pub result_expires: f64,
    /// App time zone (IANA name): naive ETAs are read in it, date_done is written in it
    #[arg(long, env = "CELERY_TIMEZONE", default_value = "UTC")]
    pub timezone: String,
    /// Store the STARTED state before each task runs
    #[arg(long, env = "CELERY_TASK_TRACK_STARTED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub task_track_started: bool,
    /// Seconds running tasks may finish after SIGTERM before their messages are handed back
    #[arg(long, env = "CELERIAC_SHUTDOWN_TIMEOUT", default_value = "25")]
    pub shutdown_timeout: f64,
    /// Redis list where undecodable messages are set aside
    #[arg(
        long,
        env = "CELERIAC_DEAD_LETTER_KEY",
        default_value = "celeriac.rejected"
    )]
    pub dead_letter_key: String,
    /// Serve /healthz, /readyz and /metrics on this host:port (off when unset)
    #[arg(long, env = "CELERIAC_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Seconds without a broker reply, while wanting messages, after which /healthz fails
    #[arg(long, env = "CELERIAC_STALL_TIMEOUT", default_value = "60")]
    pub stall_timeout: f64,
    /// Log lines as text (for people) or json (one object per line)
    #[arg(long, env = "CELERIAC_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// How often the queue lengths behind `celeriac_queue_length` are read.
const QUEUE_LENGTH_EVERY: Duration = Duration::from_secs(5);

/// A configuration that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL is unusable.
    #[error("{setting}: {source}")]
    Url {
        /// Which setting.
        setting: &'static str,
        /// Why.
        #[source]
        source: UrlError,
    },
    /// A value is out of range or malformed.
    #[error("{setting}: {reason}")]
    Invalid {
        /// Which setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

/// Reads `--broker`: a Redis URL, or an AMQP one with feature `amqp`.
fn broker_url(value: &str) -> Result<BrokerUrl, ConfigError> {
    let scheme = value.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("amqp" | "amqps" | "pyamqp")) {
        #[cfg(feature = "amqp")]
        return celeriac_protocol::amqp::AmqpUrl::parse(value)
            .map(BrokerUrl::Amqp)
            .map_err(|e| ConfigError::Invalid {
                setting: "--broker",
                reason: e.to_string(),
            });
        #[cfg(not(feature = "amqp"))]
        return Err(ConfigError::Invalid {
            setting: "--broker",
            reason: "AMQP needs the `amqp` feature, which this worker was built without".into(),
        });
    }
    if let Some(other) = scheme
        .as_deref()
        .filter(|s| !matches!(*s, "redis" | "rediss" | "unix"))
    {
        return Err(ConfigError::Invalid {
            setting: "--broker",
            reason: format!(
                "unsupported scheme `{other}` (expected redis://, rediss://, unix://, amqp://, amqps:// or pyamqp://)"
            ),
        });
    }
    RedisUrl::parse(value)
        .map(BrokerUrl::Redis)
        .map_err(|source| ConfigError::Url {
            setting: "--broker",
            source,
        })
}

/// Reads `--result-backend`: a Redis URL, or Celery's `django-db`.
fn result_backend(value: &str) -> Result<ResultBackendConfig, ConfigError> {
    const SETTING: &str = "--result-backend";
    if value == "django-db" {
        #[cfg(feature = "mysql")]
        {
            return match crate::mysql::DatabaseUrl::from_env()? {
                Some(url) => Ok(ResultBackendConfig::DjangoDb(url)),
                None => Err(ConfigError::Invalid {
                    setting: SETTING,
                    reason: format!(
                        "django-db stores results in the database of {}, which is not set",
                        crate::mysql::DATABASE_URL
                    ),
                }),
            };
        }
        #[cfg(not(feature = "mysql"))]
        return Err(ConfigError::Invalid {
            setting: SETTING,
            reason: "django-db needs the `mysql` feature, which this worker was built without"
                .into(),
        });
    }
    if !value.contains("://") {
        // Whatever it is, a value with an `@` may hold a password: it is not repeated.
        let shown = if value.contains('@') {
            "the value given".to_owned()
        } else {
            format!("{value:?}")
        };
        return Err(ConfigError::Invalid {
            setting: SETTING,
            reason: format!(
                "{shown} is not a backend celeriac has: use a redis:// or rediss:// URL, or django-db"
            ),
        });
    }
    RedisUrl::parse(value)
        .map(ResultBackendConfig::Redis)
        .map_err(|source| ConfigError::Url {
            setting: SETTING,
            source,
        })
}

fn seconds(setting: &'static str, value: f64, allow_zero: bool) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) || value > 1e9 {
        return Err(ConfigError::Invalid {
            setting,
            reason: format!("{value} is not a usable number of seconds"),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

pub use crate::config::host_name;

/// Expands Celery's `%h`, `%n`, `%d` and `%%` in a node name.
pub fn expand_hostname(pattern: &str, host: &str) -> String {
    let (name, domain) = host.split_once('.').unwrap_or((host, ""));
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('n') => out.push_str(name),
            Some('d') => out.push_str(domain),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl Args {
    /// Validates the raw settings.
    pub fn into_config(self) -> Result<WorkerConfig, ConfigError> {
        let broker = broker_url(&self.broker)?;
        let mut config = WorkerConfig::new(broker);
        config.result_backend = self
            .result_backend
            .filter(|s| !s.trim().is_empty())
            .map(|s| result_backend(s.trim()))
            .transpose()?;
        config.result_extended = self.result_extended;
        let queues: Vec<String> = self
            .queues
            .iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        config.default_queue = std::env::var("CELERY_TASK_DEFAULT_QUEUE")
            .ok()
            .filter(|q| !q.is_empty())
            .unwrap_or_else(|| "celery".into());
        config.queues = if queues.is_empty() {
            vec![config.default_queue.clone()]
        } else {
            queues
        };
        if let Some(c) = self.concurrency {
            if c == 0 || c > 100_000 {
                return Err(ConfigError::Invalid {
                    setting: "--concurrency",
                    reason: format!("{c} is out of range 1..=100000"),
                });
            }
            config.concurrency = c;
        }
        config.hostname = expand_hostname(&self.hostname, &host_name());
        config.prefetch_multiplier = self.prefetch_multiplier;
        config.visibility_timeout =
            seconds("--visibility-timeout", self.visibility_timeout, false)?;
        let expires = seconds("--result-expires", self.result_expires, true)?;
        config.result_expires = (!expires.is_zero()).then_some(expires);
        config.timezone = self
            .timezone
            .parse::<Tz>()
            .map_err(|e| ConfigError::Invalid {
                setting: "--timezone",
                reason: e.to_string(),
            })?;
        config.track_started = self.task_track_started;
        config.shutdown_timeout = seconds("--shutdown-timeout", self.shutdown_timeout, true)?;
        if self.dead_letter_key.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "--dead-letter-key",
                reason: "cannot be empty".into(),
            });
        }
        config.dead_letter_key = self.dead_letter_key;
        config.stall_timeout = seconds("--stall-timeout", self.stall_timeout, false)?;
        config.queue_length_every = self.http_addr.is_some().then_some(QUEUE_LENGTH_EVERY);
        Ok(config)
    }
}

/// Adds the resources the worker builds from the environment (the MySQL pool of
/// `DATABASE_URL` with feature `mysql`, the S3 storage of django-storages' settings with feature
/// `s3`), inside `runtime`.
fn with_resources(
    tasks: RegistryBuilder,
    runtime: &tokio::runtime::Runtime,
) -> Result<RegistryBuilder, ConfigError> {
    let _inside = runtime.enter();
    #[cfg(feature = "mysql")]
    let tasks = {
        let (tasks, pool) = crate::mysql::add_pool(tasks)?;
        if let Some((url, size)) = pool {
            tracing::info!("MySQL pool: {url}, up to {size} connections (connecting lazily)");
        }
        tasks
    };
    #[cfg(feature = "s3")]
    let tasks = {
        let (tasks, storage) = runtime.block_on(crate::s3::add_storage(tasks))?;
        if let Some(describe) = storage {
            tracing::info!("{describe}");
        }
        tasks
    };
    Ok(tasks)
}

/// Runs the worker binary with `tasks` plus the `celeriac.test.*` tasks.
pub fn main(tasks: RegistryBuilder) -> ExitCode {
    let args = Args::parse();
    let logs = args
        .log_format
        .parse::<LogFormat>()
        .and_then(|format| celeriac_ops::logs::init(&args.loglevel, format));
    if let Err(e) = logs {
        eprintln!("celeriac-worker: {e}");
        return ExitCode::from(2);
    }
    let http_addr = args.http_addr.clone();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match http_addr.as_deref().map(Listener::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tasks = match with_resources(tasks, &runtime) {
        Ok(t) => t,
        Err(e) => {
            error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let registry = match test_tasks::register(tasks).build() {
        Ok(r) => r,
        Err(e) => {
            error!("invalid task registry: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals::watch(
            shutdown.clone(),
            signals::Messages {
                first: "warm shutdown (a second signal exits at once)",
                second: "cold shutdown, exiting now; unacked messages stay recoverable",
            },
        ));
        let worker = Worker::new(config, registry);
        let stop_serving = CancellationToken::new();
        let server = listener.map(|listener| {
            let metrics = match celeriac_ops::prometheus::install() {
                Ok(handle) => {
                    crate::stats::describe();
                    Some(handle)
                }
                Err(e) => {
                    error!("metrics are off: cannot install the Prometheus recorder: {e}");
                    None
                }
            };
            listener.serve(worker.health(), metrics, stop_serving.clone())
        });
        let result = worker.run(shutdown).await;
        stop_serving.cancel();
        if let Some(server) = server {
            let _ = server.await;
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_patterns_expand_like_celery() {
        assert_eq!(
            expand_hostname("w1@%h", "box.example.com"),
            "w1@box.example.com"
        );
        assert_eq!(
            expand_hostname("%n-%d", "box.example.com"),
            "box-example.com"
        );
        assert_eq!(expand_hostname("a%%b%x", "h"), "a%b%x");
    }

    #[test]
    fn bad_settings_are_startup_errors() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["celeriac-worker"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .expect("flags parse")
                .into_config()
        };
        assert!(parse(&["--broker", "kafka://x"]).is_err());
        assert!(parse(&["--broker", "librabbitmq://h"]).is_err());
        let amqp = parse(&["--broker", "pyamqp://u:secret@rabbit:5672/app"]).expect("valid");
        assert!(matches!(amqp.broker, BrokerUrl::Amqp(_)));
        assert!(!amqp.broker.redacted().contains("secret"));
        assert!(parse(&["--visibility-timeout", "0"]).is_err());
        assert!(parse(&["--timezone", "Mars/Olympus"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        let ok =
            parse(&["-Q", "default, media", "-c", "8", "--result-expires", "0"]).expect("valid");
        assert_eq!(ok.queues, ["default", "media"]);
        assert_eq!(ok.prefetch_limit(), 32);
        assert_eq!(ok.result_expires, None);
    }

    #[test]
    fn result_backends_are_redis_urls_or_django_db() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["celeriac-worker"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .expect("flags parse")
                .into_config()
        };
        let redis = parse(&[
            "--result-backend",
            "redis://:pw@h:6380/1",
            "--result-extended",
        ])
        .expect("valid");
        assert!(matches!(
            redis.result_backend,
            Some(ResultBackendConfig::Redis(ref url)) if url.to_string() == "redis://:***@h:6380/1"
        ));
        assert!(redis.result_extended);
        let none = parse(&["--result-backend", " "]).expect("valid");
        assert!(none.result_backend.is_none() && !none.result_extended);
        for bad in ["django-cache", "db+mysql://u:pw@h/db", "u:pw@h"] {
            let e = parse(&["--result-backend", bad])
                .expect_err(bad)
                .to_string();
            assert!(e.starts_with("--result-backend"), "{e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }
}
