//! What running celeriac's binaries as services needs, shared by `celeriac-worker` and
//! `celeriac-beat`: log set-up in Celery's level names (text or JSON lines), one small HTTP
//! listener for `/healthz`, `/readyz` and `/metrics`, the Prometheus recorder behind `/metrics`,
//! a heartbeat that liveness reads, and the mapping of SIGTERM/SIGINT to a shutdown token.

pub mod heartbeat;
pub mod http;
pub mod logs;
pub mod prometheus;
pub mod signals;

pub use heartbeat::Heartbeat;
pub use http::{HttpError, Probes, Verdict};
pub use logs::{LogError, LogFormat};
