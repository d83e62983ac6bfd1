//! `cargo xtask test`: every tier, in order, with a summary table.
//!
//! 1. setup (check, install what is missing)    5. build mcs-agent (tests spawn its binary)
//! 2. build-ebpf                                 6. unit: `cargo test --workspace`
//! 3. build-ebpf --debug-log (apart, for the     7. root: `cargo test -p mcs-tests -- --ignored`
//!    `debug_log` root test)
//! 4. lint
//!
//! Tests that need root (BPF_PROG_TEST_RUN, network namespaces) are `#[ignore = "needs root
//! ..."]`, so tier 6 runs every other test without root and tier 7 runs exactly those (each
//! test runs once). Tests spawn the agent binary as shipped: tier 5's build is copied aside
//! before tier 6, whose `cargo test` rebuilds `target/debug/mcs-agent` with the `testing`
//! feature its integration tests turn on. A failed build stops the tiers after it; a failed
//! lint or unit tier does not. Last, the work tree must be as it was before the run: a test
//! that writes into the repository (figures go to `target/figures/`, see `cargo xtask
//! figures`) fails the command.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{Cmd, error_chain, heading, host_target_dir, is_root, workspace_root},
    ebpf, lint,
    setup::{self, Mode, Report},
};

pub struct Options {
    pub no_root_tiers: bool,
    /// Arguments for `cargo test`; anything after a `--` in them goes to the test binaries.
    pub extra: Vec<String>,
}

const ROOT_TIER: &str = "root: BPF_PROG_TEST_RUN + netns e2e";
/// The agent binary the tests spawn: `cargo build -p mcs-agent`'s, copied (see the module docs).
const AGENT_UNDER_TEST: &str = "mcs-agent-under-test";

enum Outcome {
    Pass,
    Fail,
    Skip(String),
    NotRun(String),
}

struct Tier {
    name: &'static str,
    outcome: Outcome,
    took: Duration,
}

#[derive(Default)]
struct Runner {
    tiers: Vec<Tier>,
    /// The blocking tier that failed; later tiers do not run.
    blocked_by: Option<&'static str>,
}

impl Runner {
    /// Runs one tier unless an earlier blocking tier failed. `blocking`: later tiers need it.
    fn tier(&mut self, name: &'static str, blocking: bool, f: impl FnOnce() -> Result<()>) {
        if let Some(failed) = self.blocked_by {
            let outcome = Outcome::NotRun(format!("{failed} failed"));
            self.tiers.push(Tier {
                name,
                outcome,
                took: Duration::ZERO,
            });
            return;
        }
        heading(&format!("tier: {name}"));
        let start = Instant::now();
        let outcome = match f() {
            Ok(()) => Outcome::Pass,
            Err(err) => {
                eprintln!("tier `{name}` failed: {}", error_chain(&err));
                if blocking {
                    self.blocked_by = Some(name);
                }
                Outcome::Fail
            }
        };
        self.tiers.push(Tier {
            name,
            outcome,
            took: start.elapsed(),
        });
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        let outcome = Outcome::Skip(why.to_owned());
        self.tiers.push(Tier {
            name,
            outcome,
            took: Duration::ZERO,
        });
    }

    fn any_failed(&self) -> bool {
        self.tiers
            .iter()
            .any(|t| matches!(t.outcome, Outcome::Fail))
    }

    fn print_summary(&self) {
        let width = self.tiers.iter().map(|t| t.name.len()).max().unwrap_or(0);
        println!("\nSummary");
        println!("  {:<width$}  {:<7}  {:>8}", "tier", "result", "time");
        for tier in &self.tiers {
            let (result, note) = match &tier.outcome {
                Outcome::Pass => ("pass", String::new()),
                Outcome::Fail => ("FAIL", String::new()),
                Outcome::Skip(why) => ("skip", format!("  ({why})")),
                Outcome::NotRun(why) => ("not run", format!("  ({why})")),
            };
            let took = format!("{:.1}s", tier.took.as_secs_f64());
            println!("  {:<width$}  {result:<7}  {took:>8}{note}", tier.name);
        }
    }
}

pub fn run(options: &Options) -> Result<ExitCode> {
    let (cargo_args, test_args) = split_extra(&options.extra);
    let debug_dir = host_target_dir().join("debug");
    let agent_bin = debug_dir.join(AGENT_UNDER_TEST);
    let root = is_root();
    let mut runner = Runner::default();
    let tree_before = tree_status();

    runner.tier("setup", true, || {
        setup::ensure(Report::Summary, Mode::Install)
    });
    runner.tier("build-ebpf", true, || ebpf::build(false));
    // Not blocking: only the `debug_log` root test needs it (and fails without it).
    runner.tier(
        "build-ebpf --debug-log",
        false,
        ebpf::build_debug_log_variant,
    );
    runner.tier("lint", false, lint::run);
    runner.tier("build mcs-agent", true, || {
        Cmd::cargo().args(["build", "-p", "mcs-agent"]).run()?;
        fs::copy(debug_dir.join("mcs-agent"), &agent_bin)
            .with_context(|| format!("copy the agent to {}", agent_bin.display()))?;
        Ok(())
    });
    runner.tier("unit: cargo test --workspace", false, || {
        cargo_test(&agent_bin, &["--workspace"], cargo_args, None, test_args)
    });
    let skipped_root_tiers = if options.no_root_tiers {
        runner.skip(ROOT_TIER, "--no-root-tiers");
        Some("--no-root-tiers was given")
    } else if !root {
        runner.skip(ROOT_TIER, "not root");
        Some("not running as root")
    } else {
        runner.tier(ROOT_TIER, false, || {
            cargo_test(
                &agent_bin,
                &["-p", "mcs-tests"],
                cargo_args,
                Some("--ignored"),
                test_args,
            )
        });
        None
    };
    match &tree_before {
        Ok(before) => runner.tier("work tree unchanged", false, || tree_unchanged(before)),
        Err(error) => runner.skip("work tree unchanged", &error_chain(error)),
    }

    runner.print_summary();
    if let Some(why) = skipped_root_tiers {
        print_skipped_banner(why);
    }
    if runner.any_failed() {
        eprintln!("\ncargo xtask test: FAILED");
        return Ok(ExitCode::FAILURE);
    }
    if skipped_root_tiers.is_some() && !options.no_root_tiers {
        eprintln!(
            "\ncargo xtask test: the root tiers did not run; run as root, or pass \
             --no-root-tiers to accept skipping them"
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("\ncargo xtask test: ok");
    Ok(ExitCode::SUCCESS)
}

/// `cargo test <selection> <cargo args> [-- <harness flag> <test args>]` with MCS_AGENT_BIN
/// and MCS_DEBUG_LOG_OBJECT set.
fn cargo_test(
    agent_bin: &Path,
    selection: &[&str],
    cargo_args: &[String],
    harness_flag: Option<&str>,
    test_args: &[String],
) -> Result<()> {
    let mut cmd = Cmd::cargo()
        .env("MCS_AGENT_BIN", agent_bin)
        .env("MCS_DEBUG_LOG_OBJECT", ebpf::debug_log_object_path())
        .arg("test")
        .args(selection)
        .args(cargo_args);
    if harness_flag.is_some() || !test_args.is_empty() {
        cmd = cmd.arg("--").args(harness_flag).args(test_args);
    }
    cmd.run()
}

/// `git status --porcelain` of the workspace, untracked files included (ignored ones not).
pub fn tree_status() -> Result<BTreeSet<String>> {
    let out = Cmd::new("git")
        .args(["status", "--porcelain=v1", "--untracked-files=all"])
        .probe()?;
    if !out.status.success() {
        bail!(
            "`git status` failed in {}: {}",
            workspace_root().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Fails naming every path the run added or changed (ignored paths such as `target/` aside).
fn tree_unchanged(before: &BTreeSet<String>) -> Result<()> {
    let after = tree_status()?;
    let changed: Vec<&String> = after.difference(before).collect();
    if changed.is_empty() {
        return Ok(());
    }
    for line in &changed {
        eprintln!("  {line}");
    }
    bail!(
        "the run changed the work tree ({} path(s) above): generated files belong in an \
         ignored output folder (target/, bench-results/, fuzz-results/)",
        changed.len()
    )
}

/// `cargo xtask figures`: the figure tests, writing their tables to `docs/figures/`.
pub fn figures() -> Result<()> {
    let docs = workspace_root().join("docs").join("figures");
    Cmd::cargo()
        .env("MCS_FIGURES_DIR", &docs)
        .args([
            "test",
            "-p",
            "mcs-agent",
            "--test",
            "churn_model",
            "--test",
            "hostile_input",
            "--",
            "--nocapture",
        ])
        .run()?;
    println!("figures updated in {}", docs.display());
    Ok(())
}

/// Splits `cargo test` arguments at the first `--` into cargo's and the test binaries'.
fn split_extra(extra: &[String]) -> (&[String], &[String]) {
    match extra.iter().position(|a| a == "--") {
        Some(at) => (&extra[..at], &extra[at + 1..]),
        None => (extra, &[]),
    }
}

fn print_skipped_banner(why: &str) {
    let lines = [
        String::new(),
        "SKIPPED TIERS: BPF_PROG_TEST_RUN and netns end-to-end need root".to_owned(),
        format!("({why})"),
        String::new(),
        "Run them as root, without --no-root-tiers:".to_owned(),
        "  sudo -E env \"PATH=$PATH\" cargo xtask test".to_owned(),
        String::new(),
    ];
    let width = lines.iter().map(String::len).max().unwrap_or(0) + 4;
    let rule = "#".repeat(width + 2);
    eprintln!("\n{rule}");
    for line in &lines {
        eprintln!("#  {line:<w$}#", w = width - 2);
    }
    eprintln!("{rule}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|&s| s.to_owned()).collect()
    }

    #[test]
    fn splits_cargo_and_test_args() {
        let extra = strings(&["--lib", "--", "--nocapture", "--", "x"]);
        let (cargo, tests) = split_extra(&extra);
        assert_eq!(cargo, strings(&["--lib"]));
        assert_eq!(tests, strings(&["--nocapture", "--", "x"]));
        let extra = strings(&["--lib"]);
        assert_eq!(split_extra(&extra), (&extra[..], &[][..]));
    }
}
