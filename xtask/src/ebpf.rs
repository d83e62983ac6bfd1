//! `cargo xtask build-ebpf`: build `mcs-ebpf` for `bpfel-unknown-none`.
//!
//! rustup's toolchain has no `rust-src`, so `-Z build-std` is impossible. Instead, rustup's
//! cargo drives Debian's rustc (`rustc-web`, LLVM 22) whose sysroot has a prebuilt `core` for
//! the BPF target; `RUSTC_BOOTSTRAP=1` unlocks the nightly features aya-ebpf uses, and
//! `bpf-linker` (found on PATH by rustc) links the objects. The flags are the ones aya-build
//! passes. A separate target directory keeps the two compilers from invalidating each other's
//! artifacts; `mcs-agent`'s build script embeds the agent's object from there.
//!
//! The package links two objects: `mcs-ebpf` (the agent's, embedded) and `mcs-bench-ebpf`
//! (the bench's calibration programs, which `cargo xtask bench` loads from here).

use std::{env::consts::ARCH, fs, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{Cmd, heading, workspace_root},
    setup::DEBIAN_RUSTC,
};

/// The eBPF target triple.
pub const TARGET: &str = "bpfel-unknown-none";
/// Target directory of the eBPF build, relative to the workspace root.
pub const TARGET_DIR: &str = "target/bpf";
/// The eBPF package.
pub const PACKAGE: &str = "mcs-ebpf";
/// The bench's calibration object, linked beside the agent's.
pub const BENCH_OBJECT: &str = "mcs-bench-ebpf";
/// Cargo feature of `mcs-ebpf` that compiles in its debug-level aya-log statements.
pub const DEBUG_LOG_FEATURE: &str = "debug-log";
/// Target directory of the `debug-log` variant `cargo xtask test` builds for its test (apart,
/// so the object the agent embeds stays the default one).
pub const DEBUG_LOG_TARGET_DIR: &str = "target/bpf-debug-log";

/// `CARGO_ENCODED_RUSTFLAGS` (flags separated by 0x1f) for the eBPF build and its clippy run.
pub fn encoded_rustflags() -> String {
    [
        // aya-ebpf's helpers read the kernel's registers per architecture: the host's.
        format!("--cfg=bpf_target_arch=\"{ARCH}\""),
        "-Cdebuginfo=2".to_owned(),
        // BTF for the maps and programs (bpftool prints typed keys and values).
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
}

/// A cargo command set up for the BPF target: Debian's rustc, bootstrap, the eBPF rustflags.
pub fn bpf_cargo(program: Cmd) -> Cmd {
    program
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", encoded_rustflags())
}

/// Where an object linked into `target_dir` ends up.
fn linked(target_dir: &str, object: &str) -> PathBuf {
    workspace_root()
        .join(target_dir)
        .join(TARGET)
        .join("release")
        .join(object)
}

/// Where the bench's calibration object ends up.
pub fn bench_object_path() -> PathBuf {
    linked(TARGET_DIR, BENCH_OBJECT)
}

/// Where [`build_debug_log_variant`] puts the agent's object with `debug-log`.
pub fn debug_log_object_path() -> PathBuf {
    linked(DEBUG_LOG_TARGET_DIR, PACKAGE)
}

/// Builds the eBPF objects (release; `debug_log` enables mcs-ebpf's `debug-log` feature) and
/// prints their paths and sizes. Assumes the toolchain is present (`setup::ensure`).
pub fn build(debug_log: bool) -> Result<()> {
    build_into(TARGET_DIR, debug_log)
}

/// Builds the agent's object with `debug-log` into its own target directory (what the
/// `debug_log` root test loads; the object the agent embeds is left as it is).
pub fn build_debug_log_variant() -> Result<()> {
    build_into(DEBUG_LOG_TARGET_DIR, true)
}

fn build_into(target_dir: &str, debug_log: bool) -> Result<()> {
    let features = if debug_log {
        format!(" --features {DEBUG_LOG_FEATURE}")
    } else {
        String::new()
    };
    heading(&format!(
        "build {PACKAGE} for {TARGET}{features} into {target_dir}"
    ));
    let mut cargo = bpf_cargo(Cmd::cargo())
        .args(["build", "-p", PACKAGE, "--release"])
        .args(["--target", TARGET, "--target-dir", target_dir]);
    if debug_log {
        cargo = cargo.args(["--features", DEBUG_LOG_FEATURE]);
    }
    cargo
        .run()
        .with_context(|| format!("building {PACKAGE}{features}"))?;
    for object in [PACKAGE, BENCH_OBJECT] {
        let path = linked(target_dir, object);
        let size = fs::metadata(&path)
            .with_context(|| format!("the build succeeded but {} is missing", path.display()))?
            .len();
        #[expect(clippy::cast_precision_loss, reason = "a display size in KiB")]
        let kib = size as f64 / 1024.0;
        println!(
            "eBPF object: {} ({size} bytes, {kib:.1} KiB)",
            path.display()
        );
    }
    Ok(())
}
