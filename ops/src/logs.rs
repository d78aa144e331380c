//! Logging set-up: Celery's level names, and either human-readable lines or JSON lines (one
//! object per event, its fields at the top level), both on stderr.
//!
//! Events with the target [`OUTCOME_TARGET`] are the one line per task outcome. They carry their
//! facts as fields (`task`, `task_id`, `queue`, `state`, `runtime`) for log queries (CloudWatch
//! Logs Insights reads JSON fields); the text format shows only their message, which already
//! says the same in Celery's words.

use std::io::IsTerminal as _;
use std::str::FromStr;

use thiserror::Error;
use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::format::debug_fn;
use tracing_subscriber::prelude::*;

/// Target of the one-line-per-task-outcome events.
pub const OUTCOME_TARGET: &str = "celeriac::outcome";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people: time, level, message, fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

/// A logging setting that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    /// Not one of Celery's level names.
    #[error("--loglevel: unknown level {0} (DEBUG, INFO, WARNING, ERROR or CRITICAL)")]
    Level(String),
    /// Neither `text` nor `json`.
    #[error("--log-format: unknown format {0:?} (text or json)")]
    Format(String),
    /// A subscriber was installed already.
    #[error("logging is set up already: {0}")]
    Installed(String),
}

impl FromStr for LogFormat {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(LogError::Format(s.to_owned())),
        }
    }
}

/// The filter for one of Celery's level names (`WARN` and `FATAL` as Python's logging reads them).
pub fn level_filter(level: &str) -> Result<EnvFilter, LogError> {
    let directive = match level.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" | "FATAL" => "error",
        other => return Err(LogError::Level(other.to_owned())),
    };
    Ok(EnvFilter::new(directive))
}

fn is_outcome(meta: &Metadata<'_>) -> bool {
    meta.target() == OUTCOME_TARGET
}

/// Installs the process's subscriber: `level` in Celery's names, lines in `format`, on stderr.
pub fn init(level: &str, format: LogFormat) -> Result<(), LogError> {
    let filter = level_filter(level)?;
    let installed = match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            let plain = tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .with_filter(filter_fn(|m| !is_outcome(m)));
            let outcomes = tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .fmt_fields(debug_fn(|w, field, value| {
                    if field.name() == "message" {
                        write!(w, "{value:?}")
                    } else {
                        Ok(())
                    }
                }))
                .with_filter(filter_fn(is_outcome));
            tracing_subscriber::registry()
                .with(filter)
                .with(plain)
                .with(outcomes)
                .try_init()
        }
    };
    installed.map_err(|e| LogError::Installed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_level_names_and_formats_parse() {
        assert!(level_filter("warning").is_ok());
        assert!(level_filter("CRITICAL").is_ok());
        assert!(matches!(level_filter("verbose"), Err(LogError::Level(_))));
        assert_eq!("JSON".parse::<LogFormat>().ok(), Some(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
