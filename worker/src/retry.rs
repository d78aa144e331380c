//! Retrying calls to Redis and to result backends across connection loss: nothing the worker
//! owes them (a result, an ack, a hand-back) is dropped because a server went away for a while.

use std::fmt::Display;
use std::future::Future;

use celeriac_protocol::BrokerError;
use celeriac_protocol::redis::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::backend::BackendError;

/// An error that says whether retrying later can succeed.
pub(crate) trait Transient: Display {
    /// `true` for a lost connection, a server that is down or busy, a lock timeout.
    fn is_transient(&self) -> bool;
}

impl Transient for BrokerError {
    fn is_transient(&self) -> bool {
        BrokerError::is_transient(self)
    }
}

impl Transient for BackendError {
    fn is_transient(&self) -> bool {
        BackendError::is_transient(self)
    }
}

/// Runs `op` until it succeeds, pausing with `backoff` after transient errors. Gives up
/// (returning `None`) when `give_up` fires, or after `permanent_attempts` failures that are not
/// transient (a script or type error would never succeed by waiting).
pub(crate) async fn until_ok<T, E, F, Fut>(
    what: &str,
    backoff: Backoff,
    give_up: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    const PERMANENT_ATTEMPTS: u32 = 3;
    let mut attempt = 0u32;
    let mut permanent = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if attempt > 0 {
                    warn!("{what}: succeeded after {attempt} failed attempts");
                }
                return Some(v);
            }
            Err(e) => {
                if !e.is_transient() {
                    permanent += 1;
                    if permanent >= PERMANENT_ATTEMPTS {
                        error!(error = %e, "{what}: giving up after {permanent} failures that retrying cannot fix");
                        return None;
                    }
                }
                let delay = backoff.delay(attempt);
                warn!(error = %e, "{what} failed; retrying in {delay:?}");
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    biased;
                    () = give_up.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
