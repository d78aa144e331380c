//! SIGTERM and SIGINT as inputs: the first cancels a token (the binary's graceful shutdown), the
//! second exits at once with the shell's code for the signal (143 or 130).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// What the binary says when the signals come.
#[derive(Debug, Clone, Copy)]
pub struct Messages {
    /// Logged after the first signal's name, e.g. "warm shutdown".
    pub first: &'static str,
    /// Logged on the second signal, just before exiting.
    pub second: &'static str,
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT, and exits the process on the second.
pub async fn watch(shutdown: CancellationToken, messages: Messages) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    warn!("{first} received: {}", messages.first);
    shutdown.cancel();
    let code = tokio::select! {
        _ = term.recv() => 143,
        _ = int.recv() => 130,
    };
    warn!("second signal: {}", messages.second);
    std::process::exit(code);
}
