//! `celeriac-worker`: the worker with the media tasks (`media.thumbnail`,
//! `media.purge_expired`, see docs/media-tasks.md) and the `celeriac.test.*` tasks. Build your
//! own binary with your handlers the same way:
//! `celeriac_worker::cli::main(Registry::builder().task(...))`.

use std::process::ExitCode;

use celeriac_worker::Registry;

fn main() -> ExitCode {
    #[cfg(feature = "media")]
    let tasks = match celeriac_worker::media::register(Registry::builder()) {
        Ok(tasks) => tasks,
        Err(e) => {
            eprintln!("celeriac-worker: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    #[cfg(not(feature = "media"))]
    let tasks = Registry::builder();
    celeriac_worker::cli::main(tasks)
}
