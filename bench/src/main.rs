//! `mcs-bench`: see `cargo xtask bench`.
mod bpfsys;
mod e2e;
mod load;
mod packet;
mod perpacket;
mod rules;
mod server;
mod stats;

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mcs-bench", about = "Benchmarks of mcs and its baselines (run by `cargo xtask bench`).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Backend server: HTTP/1.1 and UDP echo (runs inside the backend namespace).
    Serve {
        #[arg(long)]
        http: SocketAddr,
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
    E2eTest,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve { http, udp } => server::serve(http, &udp),
        Command::Load { kind, targets, concurrency, seconds, warmup } => {
            let result = load::run(kind, &targets, concurrency, seconds, warmup)?;
            println!("{}", serde_json::to_string(&result).context("JSON")?);
            Ok(())
        }
        Command::E2eTest => {
            let cfg = e2e::Config { scales: vec![1, 100], endpoints: 10, reps: 1, close_seconds: 1.0, keepalive_seconds: 1.0, udp_seconds: 1.0, warmup: 0.2, concurrency: 16, nft_chunk: 1000 };
            let r = e2e::run(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
    }
}
