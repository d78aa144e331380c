//! What a handler returns instead of a value: a Python exception to store, or a request to be
//! retried. The decision travels in the type, so the runtime never guesses from strings.

use std::fmt;
use std::time::Duration;

use celeriac_protocol::PyException;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// A failure as Python will see it: `AsyncResult.get()` raises `exception` in the client.
#[derive(Debug, Clone, PartialEq)]
pub struct PyError {
    /// Type, module and args of the Python exception.
    pub exception: PyException,
    /// Traceback text shown by `AsyncResult.traceback`; the runtime writes one when `None`.
    pub traceback: Option<String>,
}

impl PyError {
    /// An exception of any module and type, with one message.
    pub fn new(module: &str, exc_type: &str, message: impl Into<String>) -> Self {
        Self {
            exception: PyException::new(module, exc_type, vec![Value::String(message.into())]),
            traceback: None,
        }
    }

    /// A builtin exception (`ValueError`, `KeyError`, …): Python clients re-raise it as itself.
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new("builtins", exc_type, message)
    }

    /// `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::builtin("ValueError", message)
    }

    /// `TypeError(message)`.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::builtin("TypeError", message)
    }

    /// `KeyError(message)`.
    pub fn key_error(message: impl Into<String>) -> Self {
        Self::builtin("KeyError", message)
    }

    /// `RuntimeError(message)`.
    pub fn runtime_error(message: impl Into<String>) -> Self {
        Self::builtin("RuntimeError", message)
    }

    /// A `celery.exceptions` exception.
    pub fn celery(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new("celery.exceptions", exc_type, message)
    }

    /// `RuntimeError` carrying a Rust error and its chain of causes.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // Errors that print their source already (thiserror's `{0}`, sqlx's) would show it twice.
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        Self::runtime_error(text)
    }

    /// Replaces the traceback text.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }
}

impl fmt::Display for PyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.exception.summary())
    }
}

impl std::error::Error for PyError {}

/// A handler's request to run again later, like Celery's `self.retry(...)`.
///
/// The message is republished with the same id and `retries + 1`; when that would exceed the
/// task's `max_retries`, the task fails instead, with `exc` or `MaxRetriesExceededError`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retry {
    pub(crate) countdown: Option<Duration>,
    pub(crate) eta: Option<DateTime<Utc>>,
    pub(crate) exc: Option<Box<PyError>>,
    pub(crate) max_retries: Option<Option<u32>>,
}

impl Retry {
    /// Run again after `delay` (default: the task's `default_retry_delay`, 180 s).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Run again at `eta`.
    pub fn eta(mut self, eta: DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }

    /// The exception recorded with the RETRY state, and raised if no retries are left.
    pub fn exc(mut self, exc: PyError) -> Self {
        self.exc = Some(Box::new(exc));
        self
    }

    /// Overrides the task's `max_retries` for this call (`None`: retry forever).
    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = Some(max);
        self
    }
}

/// Why a handler did not return a value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task failed: stored as FAILURE with this exception.
    Failed(PyError),
    /// The task asks to be retried.
    Retry(Retry),
    /// Celery's `Reject`: with `requeue`, the message goes back to the end of its queue and no
    /// result is stored; without, FAILURE is stored with `celery.exceptions.Reject`.
    Reject {
        /// Why, for the log and the stored exception.
        reason: Option<String>,
        /// Put the message back on its queue.
        requeue: bool,
    },
}

impl TaskError {
    /// Fails with `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::Failed(PyError::value_error(message))
    }

    /// Fails with `RuntimeError` describing a Rust error and its causes.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        Self::Failed(PyError::from_error(err))
    }
}

impl From<PyError> for TaskError {
    fn from(e: PyError) -> Self {
        Self::Failed(e)
    }
}

impl From<Retry> for TaskError {
    fn from(r: Retry) -> Self {
        Self::Retry(r)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "{e}"),
            Self::Retry(_) => f.write_str("retry requested"),
            Self::Reject { reason, requeue } => {
                write!(
                    f,
                    "reject requeue={}: {}",
                    if *requeue { "True" } else { "False" },
                    reason.as_deref().unwrap_or("")
                )
            }
        }
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn message(e: &Wrap) -> Value {
        PyError::from_error(e).exception.exc_message[0].clone()
    }

    #[test]
    fn from_error_joins_the_causes_once_each() {
        let chain = Wrap("reading config", Some(Box::new(Wrap("no such file", None))));
        assert_eq!(message(&chain), "reading config: no such file");
        // The outer error already prints its cause: it is not repeated.
        let embeds = Wrap(
            "io error: no such file",
            Some(Box::new(Wrap("no such file", None))),
        );
        assert_eq!(message(&embeds), "io error: no such file");
        let deeper = Wrap(
            "db: tls: bad cert",
            Some(Box::new(Wrap(
                "tls: bad cert",
                Some(Box::new(Wrap("bad cert", None))),
            ))),
        );
        assert_eq!(message(&deeper), "db: tls: bad cert");
    }
}
