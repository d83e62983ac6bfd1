//! `cargo xtask test`: every tier, in order, with a summary table.
//!
//! 1. setup (check, install what is missing)    5. build mcs-agent (tests spawn its binary)
//! 2. build-ebpf                                 6. unit: `cargo test --workspace`
//! 3. build-ebpf --debug-log (apart, for the     7. root: `cargo test -p mcs-tests -- --include-ignored`
//!    `debug_log` root test)
//! 4. lint
//!
//! Tests that need root (BPF_PROG_TEST_RUN, network namespaces) are `#[ignore = "needs root
//! ..."]`, so tier 5 runs without root and tier 6 runs them. A failed build stops the tiers
//! after it; a failed lint or unit tier does not.

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    cmd::{Cmd, error_chain, heading, host_target_dir, is_root},
    ebpf, lint,
    setup::{self, Mode, Report},
};

pub struct Options {
    pub no_root_tiers: bool,
    /// Arguments for `cargo test`; anything after a `--` in them goes to the test binaries.
    pub extra: Vec<String>,
}

const ROOT_TIER: &str = "root: BPF_PROG_TEST_RUN + netns e2e";

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
    let agent_bin = host_target_dir().join("debug").join("mcs-agent");
    let root = is_root();
    let mut runner = Runner::default();

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
        Cmd::cargo().args(["build", "-p", "mcs-agent"]).run()
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
                Some("--include-ignored"),
                test_args,
            )
        });
        None
    };

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
