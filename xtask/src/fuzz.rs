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
//! built first. Each target is built before it runs: a build that fails is reported as
//! "build failed" with the compiler's output, never as a crash. A crash (the fuzzer wrote an
//! input) fails the command and keeps its input under `fuzz/artifacts/TARGET/`; a fuzzer
//! that fails without writing one is reported as such. The working corpus lives under
//! `target/fuzz/corpus/TARGET` (seeds: `fuzz/seeds/TARGET`). The figures (executions, corpus
//! size, result per target) are printed and written to `OUT/fuzzing.md` (`--out`, default
//! `fuzz-results/`, ignored by git); only `--update-docs` writes `docs/figures/fuzzing.md`.
//! `MCS_FUZZ_ENGINE=stable` forces the fallback.

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
    /// Where the figures go (`fuzzing.md`).
    pub out: PathBuf,
    /// Also write the figures to `docs/figures/fuzzing.md`.
    pub update_docs: bool,
}

/// Lines of compiler output shown when a build fails (the whole output scrolled by).
const BUILD_OUTPUT_TAIL: usize = 60;

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
    /// The target did not compile: the tail of the compiler's output.
    BuildFailed(String),
    /// The fuzzer found an input that fails: where it is kept (relative to the workspace).
    Crashed(String),
    /// The fuzzer exited unsuccessfully without writing an input (e.g. it could not start).
    Failed(String),
}

impl TargetResult {
    fn passed(&self) -> bool {
        matches!(self, Self::Ran { .. })
    }

    fn failed(&self) -> bool {
        !matches!(self, Self::Ran { .. } | Self::Skipped(_))
    }
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
    // The stable driver is one binary for every target: built once.
    let stable_build = (engine == Engine::Stable).then(build_stable);
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
        let result = match (&stable_build, engine) {
            (_, Engine::LibFuzzer) => match build_libfuzzer(target)? {
                Ok(()) => run_libfuzzer(target, options.time)?,
                Err(output) => build_failed(target, output),
            },
            (Some(Ok(binary)), Engine::Stable) => run_stable(binary, target, options.time)?,
            (Some(Err(output)), Engine::Stable) => build_failed(target, output.clone()),
            (None, Engine::Stable) => unreachable!("the stable driver is built first"),
        };
        outcomes.push(Outcome { target, result });
    }

    let engine_name = match engine {
        Engine::LibFuzzer => "libFuzzer (cargo fuzz, nightly)",
        Engine::Stable => "stable fallback (random mutation, no coverage)",
    };
    let table = summary(&outcomes, engine_name, options.time);
    println!("\n{table}");
    let out = if options.out.is_absolute() {
        options.out.clone()
    } else {
        std::env::current_dir()
            .context("current directory")?
            .join(&options.out)
    };
    let written = write_figures(&out, &table)?;
    println!("figures: {}", written.display());
    if options.update_docs {
        let docs = workspace_root().join("docs").join("figures");
        let written = write_figures(&docs, &table)?;
        println!("docs updated: {}", written.display());
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.result.failed())
        .map(|o| format!("{} ({})", o.target, o.result.short()))
        .collect();
    let passed = outcomes.iter().filter(|o| o.result.passed()).count();
    let skipped = outcomes.len() - passed - failed.len();
    // The plain closing line CI reads (one per target).
    let skipped = if skipped > 0 {
        format!(", {skipped} skipped")
    } else {
        String::new()
    };
    println!("fuzz: {passed} passed, {} failed{skipped}", failed.len());
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

impl TargetResult {
    /// One word for the closing error line.
    fn short(&self) -> &'static str {
        match self {
            Self::Ran { .. } => "ok",
            Self::Skipped(_) => "skipped",
            Self::BuildFailed(_) => "build failed",
            Self::Crashed(_) => "crashed",
            Self::Failed(_) => "fuzzer failed",
        }
    }
}

/// Reports a target that did not compile, with the compiler's last lines.
fn build_failed(target: &str, output: String) -> TargetResult {
    eprintln!(
        "\nfuzz target `{target}`: BUILD FAILED (not a crash: nothing was fuzzed). Compiler \
         output (last lines):\n{output}"
    );
    TargetResult::BuildFailed(output)
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

/// `cargo fuzz build TARGET`: `Err` holds the tail of the compiler's output.
fn build_libfuzzer(target: &'static str) -> Result<Result<(), String>> {
    let cmd = cargo_fuzz()
        .args(["build", target, "--sanitizer", "none", "--fuzz-dir"])
        .arg(fuzz_dir());
    let (status, lines) = run_streaming(&cmd, |_| true)?;
    Ok(if status.success() {
        Ok(())
    } else {
        Err(tail(&lines, BUILD_OUTPUT_TAIL))
    })
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
    let stat = |name: &str| final_stat(&lines, name);
    if !status.success() {
        // libFuzzer names the input it kept (crash, timeout, out of memory).
        let Some(artifact) = lines
            .iter()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(|p| relative(Path::new(p.trim())))
        else {
            return Ok(fuzzer_failed(target, &lines, status));
        };
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

/// A fuzzer that exited unsuccessfully without keeping an input.
fn fuzzer_failed(target: &str, lines: &[String], status: std::process::ExitStatus) -> TargetResult {
    let output = tail(lines, BUILD_OUTPUT_TAIL);
    eprintln!(
        "\nfuzz target `{target}`: the fuzzer failed ({}) without keeping an input (not a \
         crash). Output (last lines):\n{output}",
        crate::cmd::describe(status)
    );
    TargetResult::Failed(crate::cmd::describe(status))
}

/// The last `count` lines that say something, joined: cargo's progress
/// lines (`Compiling …`) and cargo-fuzz's own backtrace are left out.
fn tail(lines: &[String], count: usize) -> String {
    let progress = [
        "Compiling ",
        "Checking ",
        "Downloaded ",
        "Downloading ",
        "Updating ",
        "Locking ",
    ];
    let telling: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .take_while(|line| !line.starts_with("Stack backtrace:"))
        .filter(|line| !progress.iter().any(|p| line.trim_start().starts_with(p)))
        .collect();
    telling[telling.len().saturating_sub(count)..].join("\n")
}

/// The compiler's first error line, for the summary table.
fn first_error(output: &str) -> String {
    output
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or("see the output above")
        .replace('|', "\\|")
}

/// `path` relative to the workspace when it is inside it (no machine paths in figures).
fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Builds the stable driver (`fuzz-stable`, every target): `Err` holds the tail of the
/// compiler's output.
fn build_stable() -> Result<PathBuf, String> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let cmd = Cmd::cargo()
        .args([
            "build",
            "--release",
            "--no-default-features",
            "--bin",
            "fuzz-stable",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", host_target_dir().join("fuzz-stable"));
    match run_streaming(&cmd, |_| true) {
        Ok((status, _)) if status.success() => Ok(host_target_dir()
            .join("fuzz-stable")
            .join("release")
            .join("fuzz-stable")),
        Ok((_, lines)) => Err(tail(&lines, BUILD_OUTPUT_TAIL)),
        Err(error) => Err(crate::cmd::error_chain(&error)),
    }
}

fn run_stable(binary: &Path, target: &'static str, time: u64) -> Result<TargetResult> {
    let artifacts = artifact_dir(target)?;
    let seeds = fuzz_dir().join("seeds").join(target);
    let cmd = Cmd::new(binary)
        .arg(target)
        .args(["--time", &time.to_string()])
        .arg("--seeds")
        .arg(&seeds)
        .arg("--artifacts")
        .arg(&artifacts);
    let started = Instant::now();
    let (status, lines) = run_streaming(&cmd, |_| true)?;
    let seconds = started.elapsed().as_secs_f64();
    let stat = |name: &str| final_stat(&lines, name);
    if !status.success() {
        // The driver keeps a failing input and names it.
        let Some(artifact) = lines
            .iter()
            .find_map(|l| l.split("input saved to ").nth(1))
            .map(|p| relative(Path::new(p.trim())))
        else {
            return Ok(fuzzer_failed(target, &lines, status));
        };
        eprintln!(
            "fuzz target `{target}` CRASHED; input kept at {artifact}\n  reproduce: {} {target} \
             --replay {artifact}",
            relative(binary)
        );
        return Ok(TargetResult::Crashed(artifact));
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
            TargetResult::BuildFailed(output) => writeln!(
                table,
                "| {} | **build failed** (not fuzzed: {}) | – | – | – |",
                outcome.target,
                first_error(output)
            ),
            TargetResult::Crashed(artifact) => writeln!(
                table,
                "| {} | **CRASH** (input: {artifact}) | – | – | – |",
                outcome.target
            ),
            TargetResult::Failed(why) => writeln!(
                table,
                "| {} | **fuzzer failed** ({why}, no input kept) | – | – | – |",
                outcome.target
            ),
        };
    }
    table
}

/// Writes `fuzzing.md` into `dir` (created); returns its path.
fn write_figures(dir: &Path, table: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("fuzzing.md");
    fs::write(
        &path,
        format!("<!-- written by `cargo xtask fuzz --update-docs`; do not edit -->\n{table}"),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A number the fuzzer printed in its final statistics (`name: value`).
fn final_stat(lines: &[String], name: &str) -> Option<u64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_failure_shows_the_compiler_errors_not_the_progress() {
        let lines: Vec<String> = [
            "   Compiling mcs-agent v0.1.0",
            "error[E0308]: mismatched types",
            "  --> src/manifest.rs:125:22",
            "error: could not compile `mcs-fuzz` (lib) due to 1 previous error",
            "Error: failed to build fuzz script: cargo build",
            "",
            "Stack backtrace:",
            "   0: anyhow::error::<impl anyhow::Error>::msg",
        ]
        .map(str::to_owned)
        .to_vec();
        let shown = tail(&lines, 60);
        assert!(
            !shown.contains("Compiling") && !shown.contains("backtrace"),
            "{shown}"
        );
        assert!(shown.starts_with("error[E0308]"), "{shown}");
        assert_eq!(first_error(&shown), "error[E0308]: mismatched types");
        assert_eq!(
            tail(&lines, 2),
            "Error: failed to build fuzz script: cargo build\n"
        );
    }

    #[test]
    fn artifacts_are_named_relative_to_the_workspace() {
        let inside = workspace_root().join("fuzz/artifacts/manifest/crash-1");
        assert_eq!(relative(&inside), "fuzz/artifacts/manifest/crash-1");
        assert_eq!(relative(Path::new("/elsewhere/x")), "/elsewhere/x");
    }
}
