//! `cargo xtask build-ebpf`: build `mcs-ebpf` for `bpfel-unknown-none`.
//!
//! rustup's toolchain has no `rust-src`, so `-Z build-std` is impossible. Instead, rustup's
//! cargo drives Debian's rustc (`rustc-web`, LLVM 22) whose sysroot has a prebuilt `core` for
//! the BPF target; `RUSTC_BOOTSTRAP=1` unlocks the nightly features aya-ebpf uses, and
//! `bpf-linker` (found on PATH by rustc) links the object. The flags are the ones aya-build
//! passes. A separate target directory keeps the two compilers from invalidating each other's
//! artifacts; `mcs-agent`'s build script embeds the object from there.

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
/// Cargo feature of `mcs-ebpf` that compiles in its debug-level aya-log statements.
const DEBUG_LOG_FEATURE: &str = "debug-log";

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

/// Where the linked eBPF object ends up.
pub fn object_path() -> PathBuf {
    workspace_root()
        .join(TARGET_DIR)
        .join(TARGET)
        .join("release")
        .join(PACKAGE)
}

/// Builds the eBPF object (release; `debug_log` enables mcs-ebpf's `debug-log` feature) and
/// prints its path and size. Assumes the toolchain is present (`setup::ensure`).
pub fn build(debug_log: bool) -> Result<()> {
    heading(&format!("build {PACKAGE} for {TARGET}"));
    let mut cargo = bpf_cargo(Cmd::cargo())
        .args(["build", "-p", PACKAGE, "--release"])
        .args(["--target", TARGET, "--target-dir", TARGET_DIR]);
    if debug_log {
        cargo = cargo.args(["--features", DEBUG_LOG_FEATURE]);
    }
    cargo.run().with_context(|| {
        if debug_log {
            format!("building {PACKAGE} (--debug-log needs a `{DEBUG_LOG_FEATURE}` feature in {PACKAGE}/Cargo.toml)")
        } else {
            format!("building {PACKAGE}")
        }
    })?;
    let object = object_path();
    let size = fs::metadata(&object)
        .with_context(|| format!("the build succeeded but {} is missing", object.display()))?
        .len();
    #[expect(clippy::cast_precision_loss, reason = "a display size in KiB")]
    let kib = size as f64 / 1024.0;
    println!(
        "eBPF object: {} ({size} bytes, {kib:.1} KiB)",
        object.display()
    );
    Ok(())
}
