//! `cargo xtask lint`: rustfmt, host clippy, and clippy of the eBPF crate for the BPF target.
//!
//! On the host `mcs-ebpf` compiles as a stub, so the host clippy needs no BPF toolchain. The
//! BPF-target pass uses Debian's clippy (`rust-web-clippy`: `/usr/bin/cargo-clippy`, which
//! runs `$CARGO check` with `/usr/bin/clippy-driver` as the workspace wrapper); that driver is
//! built on Debian's rustc 1.96, whose sysroot has `core` for `bpfel-unknown-none`. It lints
//! every workspace crate in the eBPF build graph (`mcs-ebpf`'s library and both objects, and
//! `mcs-common`), once as built by default and once with the `debug-log` feature.

use anyhow::{Result, bail};

use crate::{
    cmd::{Cmd, cargo_program, heading, timed},
    ebpf,
};

/// Debian's cargo-clippy (package `rust-web-clippy`).
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

/// Debian's clippy over `mcs-ebpf` (its library and both objects) for the BPF target.
fn bpf_clippy(extra: &[&str]) -> Cmd {
    ebpf::bpf_cargo(Cmd::new(DEBIAN_CARGO_CLIPPY))
        .env("CARGO", cargo_program())
        .args(["clippy", "-p", ebpf::PACKAGE, "--release"])
        .args(extra)
        .args(["--target", ebpf::TARGET, "--target-dir", ebpf::TARGET_DIR])
        .args(["--", "-D", "warnings"])
}

/// Runs every lint step (even after one fails) and fails if any did.
pub fn run() -> Result<()> {
    let steps = [
        ("rustfmt", Cmd::cargo().args(["fmt", "--all", "--check"])),
        (
            "clippy (host)",
            // --keep-going: report every crate's findings, not only the first failing crate's.
            Cmd::cargo()
                .args(["clippy", "--workspace", "--all-targets", "--keep-going"])
                .args(["--", "-D", "warnings"]),
        ),
        ("clippy (bpfel-unknown-none)", bpf_clippy(&[])),
        (
            "clippy (bpfel-unknown-none, debug-log)",
            bpf_clippy(&["--features", ebpf::DEBUG_LOG_FEATURE]),
        ),
    ];
    let mut failed = Vec::new();
    for (name, cmd) in steps {
        heading(&format!("lint: {name}"));
        let (result, took) = timed(|| cmd.run());
        match result {
            Ok(()) => println!("lint: {name} ok ({:.1}s)", took.as_secs_f64()),
            Err(err) => {
                println!("lint: {name} FAILED ({:.1}s): {err:#}", took.as_secs_f64());
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("lint failed: {}", failed.join(", "))
    }
}
