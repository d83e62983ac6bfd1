//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` for a time budget each.
//!
//! Engine: libFuzzer through `cargo fuzz` when a nightly toolchain is installed (cargo-fuzz
//! needs nightly for its instrumentation flags; it is installed with `cargo install` when
//! missing, like bpf-linker in setup), otherwise the stable fallback driver `fuzz-stable`
//! (seeds + random mutations, no coverage feedback), announced loudly. A nightly toolchain
//! cannot be installed here (no toolchain downloads), so the fallback is what a machine
//! without one gets.
//!
//! Targets: `manifest` and `checksum` run anywhere; `xdp` needs root (BPF_PROG_TEST_RUN) and
//! the eBPF object, so without root it is skipped with a banner, and as root the object is
//! built first. A crash fails the command and keeps its input under `fuzz/artifacts/TARGET/`.
//! The working corpus lives under `target/fuzz/corpus/TARGET` (seeds: `fuzz/seeds/TARGET`).
//! The figures (executions, corpus size, crashes per target) are printed and written to
//! `docs/figures/fuzzing.md`. `MCS_FUZZ_ENGINE=stable` forces the fallback.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{Cmd, cargo_bin_dir, heading, host_target_dir, is_root, timed, which, workspace_root},
    ebpf,
    setup::{self, Mode, Report},
};

/// The targets, in the order they run.
pub const TARGETS: [&str; 3] = ["manifest", "checksum", "xdp"];
/// cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub struct Options {
    pub time: u64,
    pub target: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    LibFuzzer,
    Stable,
}

struct Outcome {
    target: &'static str,
    result: TargetResult,
}

enum TargetResult {
    Ran {
        executions: u64,
        /// Executions per second while fuzzing (builds excluded).
        per_second: u64,
        corpus: u64,
    },
    Skipped(String),
    Crashed(String),
}

pub fn run(options: &Options) -> Result<()> {
    let targets: Vec<&'static str> = match &options.target {
        Some(name) => vec![
            TARGETS
                .iter()
                .copied()
                .find(|t| t == name)
                .with_context(|| format!("unknown fuzz target {name:?}; targets: {TARGETS:?}"))?,
        ],
        None => TARGETS.to_vec(),
    };
    let root = is_root();
    // MCS_FUZZ_ENGINE=stable forces the fallback (to test it, or to fuzz without nightly).
    let forced_stable = std::env::var_os("MCS_FUZZ_ENGINE").is_some_and(|e| e == "stable");
    let engine = if !forced_stable && has_nightly() {
        ensure_cargo_fuzz()?;
        Engine::LibFuzzer
    } else {
        let why = if forced_stable {
            "MCS_FUZZ_ENGINE=stable: libFuzzer (cargo fuzz) not used."
        } else {
            "NO NIGHTLY TOOLCHAIN: libFuzzer (cargo fuzz) needs one."
        };
        banner(&[
            why,
            "Running the stable fallback driver instead: seeds + random",
            "mutations, no coverage feedback (weaker, still checks every",
            "invariant). Install a nightly with rustup to get libFuzzer.",
        ]);
        Engine::Stable
    };
    if targets.contains(&"xdp") && root {
        // The xdp target loads the object embedded in mcs-agent.
        setup::ensure(Report::Summary, Mode::Install)?;
        ebpf::build(false)?;
    }

    let mut outcomes = Vec::new();
    for target in targets {
        heading(&format!("fuzz target: {target} ({} s)", options.time));
        if target == "xdp" && !root {
            banner(&[
                "SKIPPED: fuzz target `xdp` needs root (BPF_PROG_TEST_RUN).",
                "Run `cargo xtask fuzz` as root to fuzz the XDP program.",
            ]);
            outcomes.push(Outcome {
                target,
                result: TargetResult::Skipped("needs root".into()),
            });
            continue;
        }
        let result = match engine {
            Engine::LibFuzzer => run_libfuzzer(target, options.time)?,
            Engine::Stable => run_stable(target, options.time)?,
        };
        outcomes.push(Outcome { target, result });
    }

    let engine_name = match engine {
        Engine::LibFuzzer => "libFuzzer (cargo fuzz, nightly)",
        Engine::Stable => "stable fallback (random mutation, no coverage)",
    };
    let table = summary(&outcomes, engine_name, options.time);
    println!("\n{table}");
    write_figures(&table)?;
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| matches!(o.result, TargetResult::Crashed(_)))
        .map(|o| o.target)
        .collect();
    let passed = outcomes
        .iter()
        .filter(|o| matches!(o.result, TargetResult::Ran { .. }))
        .count();
    let skipped = outcomes.len() - passed - crashed.len();
    // The plain closing line CI reads (one per target).
    let skipped = if skipped > 0 {
        format!(", {skipped} skipped")
    } else {
        String::new()
    };
    println!("fuzz: {passed} passed, {} failed{skipped}", crashed.len());
    if !crashed.is_empty() {
        bail!("fuzz target(s) crashed: {}", crashed.join(", "));
    }
    Ok(())
}

fn banner(lines: &[&str]) {
    let width = lines.iter().map(|l| l.len()).max().unwrap_or(0) + 4;
    let rule = "#".repeat(width + 2);
    eprintln!("\n{rule}");
    for line in lines {
        eprintln!("#  {line:<w$}#", w = width - 2);
    }
    eprintln!("{rule}\n");
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Whether rustup has a nightly toolchain that runs.
fn has_nightly() -> bool {
    which("rustup").is_some()
        && Cmd::new("rustup")
            .args(["run", "nightly", "rustc", "--version"])
            .probe()
            .is_ok_and(|out| out.status.success())
}

/// Installs cargo-fuzz when `cargo fuzz` is missing (idempotent, like bpf-linker in setup).
fn ensure_cargo_fuzz() -> Result<()> {
    if let Some(path) = which("cargo-fuzz")
        && let Ok(version) = Cmd::new(&path).arg("--version").probe_stdout()
    {
        println!("fuzz: {} at {}", version.trim(), path.display());
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install, about a minute)");
    let (result, took) = timed(|| {
        Cmd::cargo()
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .run()
    });
    result?;
    println!("cargo-fuzz built in {:.0}s", took.as_secs_f64());
    if which("cargo-fuzz").is_none() {
        bail!(
            "cargo-fuzz still not found after cargo install (looked on PATH and in {})",
            cargo_bin_dir().unwrap_or_default().display()
        );
    }
    Ok(())
}

/// `rustup run nightly cargo fuzz …` (the nightly toolchain, whatever cargo runs the xtask).
fn cargo_fuzz() -> Cmd {
    Cmd::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz"])
        .env("CARGO_TARGET_DIR", host_target_dir().join("fuzz"))
}

fn corpus_dir(target: &str) -> Result<PathBuf> {
    let dir = host_target_dir().join("fuzz").join("corpus").join(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn artifact_dir(target: &str) -> Result<PathBuf> {
    let dir = fuzz_dir().join("artifacts").join(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn run_libfuzzer(target: &'static str, time: u64) -> Result<TargetResult> {
    let corpus = corpus_dir(target)?;
    let artifacts = artifact_dir(target)?;
    let seeds = fuzz_dir().join("seeds").join(target);
    // Safe Rust: AddressSanitizer buys little and doubles build and run time; debug
    // assertions stay on (cargo fuzz's default) so overflows are crashes.
    let cmd = cargo_fuzz()
        .args(["run", target, "--sanitizer", "none", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={time}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-print_final_stats=1", "-max_len=65536", "-timeout=10"]);
    let (status, lines) = run_streaming(&cmd, |line| {
        // libFuzzer is chatty: show progress lines sparsely, everything else.
        !(line.starts_with('#') && (line.contains(" NEW ") || line.contains(" REDUCE ")))
    })?;
    let stat = |name: &str| -> Option<u64> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
    };
    if !status.success() {
        let artifact = lines
            .iter()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map_or_else(|| artifacts.display().to_string(), |p| p.trim().to_owned());
        eprintln!(
            "fuzz target `{target}` CRASHED; input kept at {artifact}\n  reproduce: rustup run \
             nightly cargo fuzz run {target} --sanitizer none --fuzz-dir fuzz {artifact}"
        );
        return Ok(TargetResult::Crashed(artifact));
    }
    let corpus_size = fs::read_dir(&corpus).map_or(0, |d| d.count() as u64);
    Ok(TargetResult::Ran {
        executions: stat("stat::number_of_executed_units").unwrap_or(0),
        per_second: stat("stat::average_exec_per_sec").unwrap_or(0),
        corpus: corpus_size,
    })
}

fn run_stable(target: &'static str, time: u64) -> Result<TargetResult> {
    let artifacts = artifact_dir(target)?;
    let seeds = fuzz_dir().join("seeds").join(target);
    let manifest = fuzz_dir().join("Cargo.toml");
    Cmd::cargo()
        .args([
            "build",
            "--release",
            "--no-default-features",
            "--bin",
            "fuzz-stable",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", host_target_dir().join("fuzz-stable"))
        .run()?;
    let binary = host_target_dir()
        .join("fuzz-stable")
        .join("release")
        .join("fuzz-stable");
    let cmd = Cmd::new(&binary)
        .arg(target)
        .args(["--time", &time.to_string()])
        .arg("--seeds")
        .arg(&seeds)
        .arg("--artifacts")
        .arg(&artifacts);
    let started = Instant::now();
    let (status, lines) = run_streaming(&cmd, |_| true)?;
    let seconds = started.elapsed().as_secs_f64();
    let stat = |name: &str| -> Option<u64> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
    };
    if !status.success() {
        eprintln!(
            "fuzz target `{target}` CRASHED; input kept under {}\n  reproduce: {} {target} \
             --replay FILE",
            artifacts.display(),
            binary.display()
        );
        return Ok(TargetResult::Crashed(artifacts.display().to_string()));
    }
    let executions = stat("stat::number_of_executed_units").unwrap_or(0);
    Ok(TargetResult::Ran {
        executions,
        per_second: (executions as f64 / seconds.max(0.001)) as u64,
        corpus: stat("stat::corpus_size").unwrap_or(0),
    })
}

/// Runs `cmd` with stdout and stderr merged into one pipe, echoing the lines `show` accepts
/// (and every 10 000th progress line), and returns the exit status and all lines.
fn run_streaming(
    cmd: &Cmd,
    show: impl Fn(&str) -> bool,
) -> Result<(std::process::ExitStatus, Vec<String>)> {
    println!("+ {}", cmd.display());
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut command = cmd.command();
    command
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("cloning the pipe")?)
        .stderr(writer);
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd.display()))?;
    // The parent's copies of the write end must be gone for EOF to arrive.
    drop(command);
    let mut lines = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.context("reading the fuzzer's output")?;
        if show(&line) || index % 10_000 == 0 {
            println!("{line}");
        }
        lines.push(line);
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    Ok((status, lines))
}

fn summary(outcomes: &[Outcome], engine: &str, time: u64) -> String {
    let mut table = format!(
        "Fuzzing: engine {engine}, budget {time} s per target\n\n\
         | target | result | executions | exec/s | corpus size |\n|---|---|---:|---:|---:|\n"
    );
    for outcome in outcomes {
        let _ = match &outcome.result {
            TargetResult::Ran {
                executions,
                per_second,
                corpus,
            } => writeln!(
                table,
                "| {} | ok, 0 crashes | {executions} | {per_second} | {corpus} |",
                outcome.target
            ),
            TargetResult::Skipped(why) => {
                writeln!(
                    table,
                    "| {} | skipped ({why}) | – | – | – |",
                    outcome.target
                )
            }
            TargetResult::Crashed(artifact) => writeln!(
                table,
                "| {} | **CRASH** (input: {artifact}) | – | – | – |",
                outcome.target
            ),
        };
    }
    table
}

fn write_figures(table: &str) -> Result<()> {
    let dir = workspace_root().join("docs").join("figures");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path: &Path = &dir.join("fuzzing.md");
    fs::write(
        path,
        format!("<!-- written by `cargo xtask fuzz`; do not edit -->\n{table}"),
    )
    .with_context(|| format!("writing {}", path.display()))
}
