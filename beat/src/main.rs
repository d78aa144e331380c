//! `celeriac-beat`: the scheduler binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    celeriac_beat::cli::main()
}
