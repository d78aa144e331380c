//! Retrying Redis calls across connection loss: nothing the worker owes Redis (a result, an
//! ack, a hand-back) is dropped because the server went away for a while.

use std::future::Future;

use celeriac_protocol::redis::{Backoff, RedisClientError};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Runs `op` until it succeeds, pausing with `backoff` after transient errors. Gives up
/// (returning `None`) when `give_up` fires, or after `permanent_attempts` failures that are not
/// transient (a script or type error would never succeed by waiting).
pub(crate) async fn until_ok<T, F, Fut>(
    what: &str,
    backoff: Backoff,
    give_up: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisClientError>>,
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
