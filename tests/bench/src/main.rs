//! `mcs-bench`: the benchmarks behind `cargo xtask bench` — mcs against its
//! baselines on one machine in one run (per-packet cost through
//! BPF_PROG_TEST_RUN, end to end over veth against kube-proxy-shaped
//! iptables and nftables rules, control plane, the export controller across
//! simulated clusters), written as JSON, markdown and SVG plots. Needs root (BPF, network namespaces, cgroups).
//!
//! `serve` and `load` are the backend server and the load generator that
//! `run` starts inside its network namespaces.

mod bpfsys;
mod change;
mod control;
mod controller;
mod counters;
mod dns;
mod e2e;
mod load;
mod packet;
mod perpacket;
mod report;
mod rules;
mod scale;
mod server;
mod stats;
mod svg;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "mcs-bench",
    about = "Benchmarks of mcs and its baselines (run by `cargo xtask bench`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Size {
    /// A few minutes; every part at small scales (CI).
    Smoke,
    /// The sizes of the goals (10k services, 1M conntrack entries, 1 000
    /// exports across 3 clusters).
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    PerPacket,
    E2e,
    Control,
    Controller,
    /// The control plane at 100k services.
    Scale,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmarks and write report.json, report.md and SVG plots.
    Run {
        #[arg(long, value_enum, default_value_t = Size::Full)]
        size: Size,
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Parts to run (comma-separated; default all).
        #[arg(long, value_enum, value_delimiter = ',')]
        parts: Vec<Part>,
    },
    /// Re-render report.md and the plots from a report.json.
    Render {
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Backend server: HTTP/1.1 and UDP echo (runs inside the backend namespace).
    Serve {
        /// HTTP addresses (comma-separated; IPv6 ones IPv6-only).
        #[arg(long, value_delimiter = ',', required = true)]
        http: Vec<SocketAddr>,
        /// UDP echo addresses (comma-separated; one socket each).
        #[arg(long, value_delimiter = ',', required = true)]
        udp: Vec<SocketAddr>,
    },
    /// Load generator; prints one JSON result line.
    Load {
        #[arg(long, value_enum)]
        kind: load::Kind,
        /// Comma-separated ADDR:PORT list.
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
}

struct Plan {
    per_packet: perpacket::Config,
    e2e: e2e::Config,
    control: control::Config,
    controller: controller::Config,
    scale: Vec<scale::Config>,
}

fn plan(size: Size) -> Plan {
    match size {
        Size::Smoke => Plan {
            per_packet: perpacket::Config {
                services: vec![1, 1000],
                conntrack: vec![1000],
                rounds: 3,
                runs_per_sample: 2000,
                repeat: 20_000,
            },
            e2e: e2e::Config {
                scales: vec![1, 100],
                endpoints: 10,
                reps: 2,
                close_seconds: 1.0,
                keepalive_seconds: 0.5,
                udp_seconds: 0.5,
                warmup: 0.2,
                concurrency: 16,
                nft_chunk: 1000,
            },
            control: control::Config {
                services: 1000,
                endpoints: 10,
                reps: 2,
                changes: 50,
                batch_entries: 20_000,
                dns_queries: 20_000,
            },
            controller: controller::Config {
                exports: 150,
                endpoints: 4,
                export_rate: 10.0,
                changes: 40,
                change_rate: 2.0,
            },
            scale: [false, true]
                .map(|three_ports| scale::Config {
                    services: 2000,
                    endpoints: 10,
                    three_ports,
                    reps: 1,
                    changes: 20,
                    conntrack: 1 << 16,
                })
                .to_vec(),
        },
        Size::Full => Plan {
            per_packet: perpacket::Config {
                services: vec![1, 1000, 10_000, 100_000],
                conntrack: vec![1000, 1_000_000],
                rounds: 21,
                runs_per_sample: 20_000,
                repeat: 200_000,
            },
            e2e: e2e::Config {
                scales: vec![1, 1000, 10_000],
                endpoints: 10,
                reps: 5,
                close_seconds: 3.0,
                keepalive_seconds: 2.0,
                udp_seconds: 2.0,
                warmup: 0.5,
                concurrency: 16,
                nft_chunk: 1000,
            },
            control: control::Config {
                services: 10_000,
                endpoints: 10,
                reps: 5,
                changes: 500,
                batch_entries: 200_000,
                dns_queries: 200_000,
            },
            controller: controller::Config {
                exports: 1000,
                endpoints: 4,
                export_rate: 10.0,
                changes: 200,
                change_rate: 2.0,
            },
            scale: vec![
                scale::Config {
                    services: 100_000,
                    endpoints: 10,
                    three_ports: false,
                    reps: 3,
                    changes: 500,
                    conntrack: 1 << 20,
                },
                scale::Config {
                    services: 100_000,
                    endpoints: 10,
                    three_ports: true,
                    reps: 2,
                    changes: 100,
                    conntrack: 1 << 20,
                },
            ],
        },
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn run(size: Size, out: &std::path::Path, parts: &[Part]) -> Result<ExitCode> {
    let all = parts.is_empty();
    let wanted = |part| all || parts.contains(&part);
    let plan = plan(size);
    let started = Instant::now();
    let mut report = report::Report {
        size: format!("{size:?}").to_lowercase(),
        commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
        kernel: command_output("uname", &["-r"]),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        ..report::Report::default()
    };
    let save = |report: &mut report::Report| -> Result<Vec<report::Goal>> {
        report.duration_s = started.elapsed().as_secs_f64();
        report::write(report, out)
    };
    if wanted(Part::PerPacket) {
        println!("\n==> bench 1/4: per-packet cost (BPF_PROG_TEST_RUN)");
        report.per_packet = Some(perpacket::run(&plan.per_packet).context("per-packet benchmark")?);
        save(&mut report)?;
    }
    if wanted(Part::E2e) {
        println!(
            "\n==> bench 2/4: end to end over veth (direct, mcs XDP, mcs socket LB, iptables, nftables)"
        );
        report.e2e = Some(e2e::run(&plan.e2e).context("end-to-end benchmark")?);
        save(&mut report)?;
    }
    if wanted(Part::Control) {
        println!("\n==> bench 3/4: control plane");
        report.control = Some(control::run(&plan.control).context("control-plane benchmark")?);
        save(&mut report)?;
    }
    if wanted(Part::Scale) {
        println!("\n==> bench 3b: control plane at scale");
        report.scale = scale::run(&plan.scale).context("scale benchmark")?;
    }
    if wanted(Part::Controller) {
        println!(
            "\n==> bench 4/4: the export controller (export → import, endpoint change → map, three clusters)"
        );
        report.controller =
            Some(controller::run(&plan.controller).context("controller benchmark")?);
    }
    let goals = save(&mut report)?;
    println!(
        "\n==> goals ({:.0}s in total)",
        started.elapsed().as_secs_f64()
    );
    for goal in &goals {
        let verdict = match goal.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not judged",
        };
        println!("  {verdict:<10} {}: {}", goal.goal, goal.measured);
    }
    println!("\nreport: {}", out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run { size, out, parts } => run(size, &out, &parts),
        Command::Render { json, out } => report::read(&json)
            .and_then(|r| report::write(&r, &out))
            .map(|_| ExitCode::SUCCESS),
        Command::Serve { http, udp } => server::serve(&http, &udp).map(|()| ExitCode::SUCCESS),
        Command::Load {
            kind,
            targets,
            concurrency,
            seconds,
            warmup,
        } => load::run(kind, &targets, concurrency, seconds, warmup).and_then(|result| {
            println!("{}", serde_json::to_string(&result).context("JSON")?);
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
