//! The command line: flags and environment variables (Celery's names) in, a validated
//! configuration out; then either the scheduler runs with signals mapped to its shutdown input,
//! or `schedule` prints the coming fire times.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use celeriac_ops::http::Listener;
use celeriac_ops::{LogFormat, signals};
use celeriac_protocol::redis::{RedisBeat, RedisUrl};
use celeriac_protocol::time::Timestamp;
use chrono::Utc;
use chrono_tz::Tz;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::file;
use crate::health::BeatHealth;
use crate::message::Sender;
use crate::preview;
use crate::scheduler::{Beat, BeatConfig};
use crate::source::{FileSource, Source};

/// Flags and environment variables, as given.
#[derive(Debug, Parser)]
#[command(
    name = "celeriac-beat",
    version,
    about = "A Celery-compatible beat: sends periodic tasks exactly once per tick, with any number of beat processes.",
    args_override_self = true
)]
pub struct Args {
    /// Broker URL: `redis://[:password@]host[:port][/db]` or `rediss://…`
    #[arg(
        short = 'b',
        long,
        global = true,
        env = "CELERY_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub broker: String,
    /// Schedule file (TOML)
    #[arg(short = 's', long, global = true, env = "CELERIAC_BEAT_SCHEDULE")]
    pub schedule: Option<PathBuf>,
    /// django-celery-beat database: mysql://user:pass@host:port/db or postgres://…
    #[arg(
        long,
        global = true,
        env = "CELERIAC_BEAT_DJANGO_DB",
        hide_env_values = true
    )]
    pub django_db: Option<String>,
    /// App time zone (IANA name): entries without their own are read in it, expires written in it
    #[arg(long, global = true, env = "CELERY_TIMEZONE", default_value = "UTC")]
    pub timezone: String,
    /// Queue for entries that name none
    #[arg(
        long,
        global = true,
        env = "CELERY_TASK_DEFAULT_QUEUE",
        default_value = "celery"
    )]
    pub default_queue: String,
    /// DEBUG, INFO, WARNING, ERROR or CRITICAL
    #[arg(
        short = 'l',
        long,
        global = true,
        env = "CELERY_BEAT_LOGLEVEL",
        default_value = "INFO"
    )]
    pub loglevel: String,
    /// Prefix of beat's keys on the broker (lease, tick records); beats sharing it share a schedule
    #[arg(
        long,
        global = true,
        env = "CELERIAC_BEAT_KEY_PREFIX",
        default_value = "celeriac.beat"
    )]
    pub key_prefix: String,
    /// Seconds between full reloads of the django-celery-beat tables (edits through Django are
    /// seen within a second anyway; this catches raw SQL that does not bump the change row)
    #[arg(
        long,
        global = true,
        env = "CELERIAC_BEAT_RELOAD_INTERVAL",
        default_value = "60"
    )]
    pub reload_interval: f64,
    /// Seconds the leader lease lives without renewal (a standby takes over after it)
    #[arg(
        long,
        global = true,
        env = "CELERIAC_BEAT_LEASE_TTL",
        default_value = "3"
    )]
    pub lease_ttl: f64,
    /// Serve /healthz, /readyz and /metrics on this host:port (off when unset)
    #[arg(long, global = true, env = "CELERIAC_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Seconds without a broker reply after which /healthz fails
    #[arg(
        long,
        global = true,
        env = "CELERIAC_STALL_TIMEOUT",
        default_value = "60"
    )]
    pub stall_timeout: f64,
    /// Log lines as text (for people) or json (one object per line)
    #[arg(
        long,
        global = true,
        env = "CELERIAC_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: String,
    /// What to do instead of running the scheduler
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the next fire times of every entry, in its time zone, then exit
    Schedule {
        /// Fire times per entry
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// Start after this instant (ISO-8601; naive means --timezone) instead of now
        #[arg(long)]
        after: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Output format of `schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object per entry and line.
    Json,
}

/// Runs the `celeriac-beat` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let logs = args
        .log_format
        .parse::<LogFormat>()
        .and_then(|format| celeriac_ops::logs::init(&args.loglevel, format));
    if let Err(e) = logs {
        eprintln!("celeriac-beat: {e}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            error!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let timezone: Tz = args
        .timezone
        .parse()
        .map_err(|e| format!("invalid configuration: --timezone: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    match (&args.schedule, &args.django_db) {
        (Some(path), None) => {
            // Read once here, so that a broken file is a startup error.
            let loaded = file::load(path, timezone).map_err(|e| e.to_string())?;
            if let Some(Command::Schedule { count, after, format }) = &args.command {
                let text = listing(&loaded.entries, &loaded.errors, after.as_deref(), *count, *format, timezone)?;
                return emit(&text);
            }
            // The source reads it again; this copy is not kept.
            drop(loaded);
            let source = FileSource::new(path.clone(), timezone);
            runtime.block_on(run_beat(&args, timezone, source))
        }
        (None, Some(url)) => run_django(&runtime, &args, url, timezone),
        (None, None) => Err(
            "invalid configuration: give --schedule FILE or --django-db URL (or CELERIAC_BEAT_SCHEDULE / CELERIAC_BEAT_DJANGO_DB)".into(),
        ),
        (Some(_), Some(_)) => Err("invalid configuration: give only one of --schedule and --django-db".into()),
    }
}

#[cfg(feature = "django-db")]
fn run_django(
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    url: &str,
    timezone: Tz,
) -> Result<ExitCode, String> {
    use crate::django::{DjangoDb, DjangoSource};
    let db = runtime
        .block_on(DjangoDb::connect(url))
        .map_err(|e| format!("--django-db: {e}"))?;
    if let Some(Command::Schedule {
        count,
        after,
        format,
    }) = &args.command
    {
        let loaded = runtime
            .block_on(db.load(timezone))
            .map_err(|e| format!("--django-db: {e}"))?;
        print!(
            "{}",
            listing(
                &loaded.entries,
                &loaded.errors,
                after.as_deref(),
                *count,
                *format,
                timezone
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let source = DjangoSource::new(
        db,
        timezone,
        Duration::from_secs_f64(args.reload_interval.max(1.0)),
    );
    runtime.block_on(run_beat(args, timezone, source))
}

#[cfg(not(feature = "django-db"))]
fn run_django(
    _runtime: &tokio::runtime::Runtime,
    _args: &Args,
    _url: &str,
    _timezone: Tz,
) -> Result<ExitCode, String> {
    Err(
        "invalid configuration: --django-db needs celeriac-beat built with the django-db feature"
            .into(),
    )
}

/// Writes the listing to stdout; a reader that went away (`| head`) is no error.
fn emit(text: &str) -> Result<ExitCode, String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("cannot write the listing: {e}")),
    }
}

fn listing(
    entries: &[crate::Entry],
    errors: &[crate::file::EntryError],
    after: Option<&str>,
    count: usize,
    format: Format,
    timezone: Tz,
) -> Result<String, String> {
    let after = match after {
        None => Utc::now(),
        Some(text) => Timestamp::parse(text)
            .map_err(|e| format!("--after {text:?}: {e}"))?
            .to_utc(timezone),
    };
    Ok(match format {
        Format::Text => preview::text(entries, errors, after, count),
        Format::Json => preview::json_lines(entries, errors, after, count),
    })
}

async fn run_beat<S: Source>(args: &Args, timezone: Tz, source: S) -> Result<ExitCode, String> {
    let broker = RedisUrl::parse(&args.broker)
        .map_err(|e| format!("invalid configuration: --broker: {e}"))?;
    if !(args.lease_ttl.is_finite() && (1.0..=600.0).contains(&args.lease_ttl)) {
        return Err(format!(
            "invalid configuration: --lease-ttl {} is outside 1..=600 seconds",
            args.lease_ttl
        ));
    }
    if args.key_prefix.is_empty() || args.default_queue.is_empty() {
        return Err(
            "invalid configuration: --key-prefix and --default-queue cannot be empty".into(),
        );
    }
    if !(args.stall_timeout.is_finite() && args.stall_timeout > 0.0 && args.stall_timeout <= 1e6) {
        return Err(format!(
            "invalid configuration: --stall-timeout {} is not a usable number of seconds",
            args.stall_timeout
        ));
    }
    let listener = args
        .http_addr
        .as_deref()
        .map(Listener::bind)
        .transpose()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let mut config = BeatConfig::new(broker);
    config.key_prefix = args.key_prefix.clone();
    config.lease_ttl = Duration::from_secs_f64(args.lease_ttl);
    config.renew_every = (config.lease_ttl / 3).min(Duration::from_secs(1));
    config.standby_poll = config.renew_every / 4;
    info!(broker = %config.broker, source = %source.describe(), timezone = %timezone,
        "celeriac-beat starting");
    let sender = Sender::new(timezone, args.default_queue.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(signals::watch(
        shutdown.clone(),
        signals::Messages {
            first: "stopping and releasing the lease",
            second: "exiting now",
        },
    ));
    let health = Arc::new(BeatHealth::new(Duration::from_secs_f64(args.stall_timeout)));
    let stop_serving = CancellationToken::new();
    let server = listener.map(|listener| {
        let metrics = match celeriac_ops::prometheus::install() {
            Ok(handle) => {
                crate::health::describe_metrics();
                Some(handle)
            }
            Err(e) => {
                error!("metrics are off: cannot install the Prometheus recorder: {e}");
                None
            }
        };
        listener.serve(health.clone(), metrics, stop_serving.clone())
    });
    if let Some(store) = connect(&config, &shutdown).await {
        Beat::new(config, sender, source, store)
            .with_health(health)
            .run(shutdown)
            .await;
    }
    stop_serving.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the broker, retrying with backoff until it answers or shutdown is asked for.
async fn connect(config: &BeatConfig, shutdown: &CancellationToken) -> Option<RedisBeat> {
    let mut attempt = 0;
    loop {
        match RedisBeat::connect(&config.broker, &config.key_prefix).await {
            Ok(r) => return Some(r),
            Err(e) => {
                warn!(broker = %config.broker, error = %e, "cannot connect to the broker; retrying");
                let pause = config.reconnect.delay(attempt);
                attempt += 1;
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}
