//! `cargo xtask bench`: NOT IMPLEMENTED YET.
//!
//! Placeholder so the subcommand exists; the benchmarks are written separately. Until then it
//! exits with code 2 so nothing mistakes it for a passing benchmark run.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    eprintln!("cargo xtask bench: not implemented yet");
    ExitCode::from(2)
}
