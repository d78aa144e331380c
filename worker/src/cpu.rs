//! A bounded pool for CPU-heavy work (decoding and resizing images), off the async runtime.
//!
//! Work runs on tokio's blocking threads, at most `size` jobs at a time (by default one per
//! available CPU), so a burst of image tasks neither starves the runtime's I/O (acks, results,
//! visibility refreshes) nor runs more decodes at once than there are cores to run them. Every
//! worker has one: `ctx.cpu().run(move || work(bytes)).await`.

use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Semaphore;

/// The environment variable that sizes the pool (default: the available CPUs).
pub const CPU_THREADS: &str = "CELERIAC_CPU_THREADS";

/// Why a job on the pool did not return.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CpuError {
    /// The job panicked; the message is the panic's, when it had one.
    #[error("the job panicked: {0}")]
    Panicked(String),
    /// The runtime is shutting down.
    #[error("the CPU pool is shut down")]
    Closed,
}

/// A bounded pool of threads for CPU work (cheap to clone).
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
    size: usize,
}

impl CpuPool {
    /// A pool running at most `size` jobs at once (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// A pool of [`CPU_THREADS`] jobs, or one per available CPU.
    pub fn from_env() -> Self {
        let configured = std::env::var(CPU_THREADS)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0);
        Self::new(configured.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        }))
    }

    /// How many jobs may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `job` on the pool once a slot is free, and returns what it returns. A panic in the
    /// job is caught and returned as [`CpuError::Panicked`]; the worker carries on.
    pub async fn run<F, R>(&self, job: F) -> Result<R, CpuError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let _slot = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CpuError::Closed)?;
        match tokio::task::spawn_blocking(job).await {
            Ok(value) => Ok(value),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                Err(CpuError::Panicked(message))
            }
            Err(_) => Err(CpuError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_jobs_run_at_once_than_the_pool_allows() {
        let pool = CpuPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..8).map(|_| {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            })
        });
        for job in futures::future::join_all(jobs).await {
            assert!(job.expect("joined").is_ok());
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_pool_goes_on() {
        let pool = CpuPool::new(1);
        let err = pool
            .run(|| -> u32 { panic!("bad pixels") })
            .await
            .expect_err("panicked");
        assert!(err.to_string().contains("bad pixels"));
        assert_eq!(pool.run(|| 7).await.expect("ran"), 7);
    }
}
