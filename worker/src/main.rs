//! `celeriac-worker`: the worker with the `celeriac.test.*` tasks. Build your own binary with
//! your handlers the same way: `celeriac_worker::cli::main(Registry::builder().task(...))`.

use std::process::ExitCode;

fn main() -> ExitCode {
    celeriac_worker::cli::main(celeriac_worker::Registry::builder())
}
