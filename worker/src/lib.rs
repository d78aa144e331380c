//! A Celery-compatible worker: consumes Celery messages from Redis in Kombu's layout, runs
//! registered Rust handlers, and stores results in Celery's format, so a Python Celery worker
//! and this one are interchangeable on the same queues.
//!
//! ```no_run
//! use celeriac_worker::{Registry, TaskContext, TaskError};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Resize { image_id: u64, width: u32 }
//!
//! async fn resize(_ctx: TaskContext, args: Resize) -> Result<String, TaskError> {
//!     Ok(format!("resized {} to {}", args.image_id, args.width))
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     celeriac_worker::cli::main(Registry::builder().task("media.resize", resize))
//! }
//! ```

pub mod args;
mod backend;
pub mod cli;
pub mod config;
mod consumer;
pub mod context;
pub mod cpu;
pub mod health;
mod inflight;
mod job;
mod maintenance;
#[cfg(feature = "media")]
pub mod media;
#[cfg(feature = "mysql")]
pub mod mysql;
mod outcome;
pub mod registry;
pub mod resources;
mod retry;
#[cfg(test)]
mod runtime_tests;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sender;
mod settle;
mod stats;
pub mod task_error;
pub mod test_tasks;
mod worker;

pub use args::RawArgs;
pub use backend::BackendError;
pub use config::{ResultBackendConfig, WorkerConfig};
pub use context::{DeliveryInfo, Request, TaskContext};
pub use cpu::{CpuError, CpuPool};
pub use health::WorkerHealth;
pub use registry::{Registry, RegistryBuilder, TaskOptions};
pub use resources::{ResourceError, Resources};
pub use sender::{SendError, SendTask, Signature};
pub use task_error::{PyError, Retry, TaskError};
pub use worker::{Worker, WorkerError};
