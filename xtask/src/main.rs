//! Project tasks for mcs: `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! The eBPF object cannot be built by plain `cargo build`: it needs Debian's rustc and a
//! bpf-linker built against the same LLVM (see `setup.rs`). These commands install that
//! toolchain, build the object, lint, and run every test tier.

mod bench;
mod cmd;
mod demo;
mod ebpf;
mod fuzz;
mod lint;
mod setup;
mod test;

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, lint and test mcs (eBPF/XDP dataplane)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the toolchain and tools piece by piece and install what is missing.
    ///
    /// Pieces: the Debian packages (Debian's rustc 1.96 with LLVM 22 and the prebuilt core
    /// for bpfel-unknown-none, LLVM 22, clippy for the BPF target, network tools), bpf-linker
    /// 0.13 built against LLVM 22, bpffs mounted at /sys/fs/bpf, and rustup's rustfmt and
    /// clippy. Prints one line per piece. Quick (well under 2 s) when all are present.
    /// Installing uses apt-get (needs root) and `cargo install bpf-linker` (3-5 minutes).
    Setup {
        /// Only report; fail if something is missing instead of installing it.
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF programs (mcs-ebpf) for bpfel-unknown-none.
    ///
    /// Runs the setup check first (installing what is missing), then builds with Debian's
    /// rustc into target/bpf and prints the objects' paths and sizes: mcs-ebpf, which
    /// mcs-agent embeds (target/bpf/bpfel-unknown-none/release/mcs-ebpf) when it is built,
    /// and mcs-bench-ebpf, the calibration programs `cargo xtask bench` loads.
    BuildEbpf {
        /// Enable mcs-ebpf's `debug-log` feature (debug-level aya-log statements).
        #[arg(long)]
        debug_log: bool,
    },
    /// Check formatting and run clippy with -D warnings, on the host and for the BPF target.
    ///
    /// Runs `cargo fmt --all --check`, `cargo clippy --workspace --all-targets --keep-going`
    /// (mcs-ebpf is a stub on the host) and Debian's clippy over mcs-ebpf (and mcs-common)
    /// for bpfel-unknown-none. Runs all three even if one fails.
    Lint,
    /// Run every tier: setup, build-ebpf, lint, build mcs-agent, unit tests, root tests.
    ///
    /// The unit tier is `cargo test --workspace` (no root needed). The root tier is
    /// `cargo test -p mcs-tests -- --ignored` (the tests marked as needing root:
    /// BPF_PROG_TEST_RUN and network-namespace end-to-end tests). MCS_AGENT_BIN points at a copy
    /// of the agent as `cargo build -p mcs-agent` builds it. Without root the
    /// root tier is skipped and the command fails, unless --no-root-tiers is given. Ends with
    /// a summary table.
    Test {
        /// Skip the root tiers on purpose (exit 0 if everything else passes).
        #[arg(long)]
        no_root_tiers: bool,
        /// Extra arguments for `cargo test`; after a further `--` they go to the test
        /// binaries, e.g. `cargo xtask test -- --lib -- --nocapture`.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        extra: Vec<String>,
    },
    /// Build everything and run the mcs-demo binary (from mcs-tests) as root.
    ///
    /// Runs setup, build-ebpf, `cargo build -p mcs-agent -p mcs-tests --bins`, then
    /// target/debug/mcs-demo with MCS_AGENT_BIN set, and exits with its exit code.
    Demo {
        /// Arguments passed to mcs-demo (after `--`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the fuzz targets of fuzz/ for a time budget each (manifest, checksum, xdp).
    ///
    /// libFuzzer via `cargo fuzz` when a nightly toolchain is installed (cargo-fuzz is
    /// installed when missing), otherwise a stable fallback driver (random mutation, no
    /// coverage), announced loudly. `xdp` needs root (BPF_PROG_TEST_RUN) and is skipped with a
    /// banner without it. Each target is built first: a build failure is reported as "build
    /// failed" with the compiler's output (not as a crash) and fails the command, as does a
    /// crash, which keeps its input under fuzz/artifacts/TARGET/. Figures go to
    /// OUT/fuzzing.md; docs/figures/fuzzing.md changes only with --update-docs.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Run only this target.
        #[arg(long)]
        target: Option<String>,
        /// Output directory of the figures (fuzzing.md).
        #[arg(long, default_value = "fuzz-results", value_name = "DIR")]
        out: std::path::PathBuf,
        /// Also write the figures to docs/figures/fuzzing.md (a run of every target).
        #[arg(long, conflicts_with = "target")]
        update_docs: bool,
    },
    /// Run the tests that measure the figures of docs/reliability.md (churn model, hostile
    /// input) and write their tables to docs/figures/.
    ///
    /// Plain test runs write these tables to target/figures/ and never touch docs/; this is
    /// the explicit update.
    Figures,
    /// Benchmarks: mcs against its baselines in one run (needs root).
    ///
    /// Per-packet cost through BPF_PROG_TEST_RUN (XDP_PASS, a calibration lookup, mcs on a
    /// miss, new flow, conntrack hit and reverse-NAT reply; services and conntrack fill
    /// swept), end to end over veth in network namespaces (direct, mcs XDP, mcs socket LB,
    /// kube-proxy-shaped iptables and nftables rules), the control plane (cold sync,
    /// endpoint-change latency, batched map writes, agent RSS, BPF map memory) and the export
    /// controller across three simulated clusters (export → import and endpoint change → map,
    /// p50/p99 with 1 000 exports). Writes report.json, report.md and SVG plots. `--size
    /// smoke` takes a few minutes (CI).
    Bench {
        #[arg(long, value_enum, default_value_t = bench::Size::Full)]
        size: bench::Size,
        /// Output directory.
        #[arg(long, default_value = "bench-results", value_name = "DIR")]
        out: std::path::PathBuf,
        /// Only these parts (comma-separated: per-packet, e2e, control, controller).
        #[arg(long)]
        parts: Option<String>,
        /// Copy the report to docs/benchmarks.md and its plots to docs/benchmarks/.
        #[arg(long)]
        update_docs: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cmd::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Setup { check } => {
            let mode = if check {
                setup::Mode::CheckOnly
            } else {
                setup::Mode::Install
            };
            setup::ensure(setup::Report::EveryPiece, mode)?;
        }
        Command::BuildEbpf { debug_log } => {
            setup::ensure(setup::Report::Summary, setup::Mode::Install)?;
            ebpf::build(debug_log)?;
        }
        Command::Lint => {
            setup::ensure(setup::Report::Summary, setup::Mode::Install)?;
            lint::run()?;
        }
        Command::Test {
            no_root_tiers,
            extra,
        } => {
            return test::run(&test::Options {
                no_root_tiers,
                extra,
            });
        }
        Command::Demo { args } => return demo::run(&args),
        Command::Fuzz {
            time,
            target,
            out,
            update_docs,
        } => fuzz::run(&fuzz::Options {
            time,
            target,
            out,
            update_docs,
        })?,
        Command::Figures => test::figures()?,
        Command::Bench {
            size,
            out,
            parts,
            update_docs,
        } => {
            return bench::run(&bench::Options {
                size,
                out,
                parts,
                update_docs,
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
