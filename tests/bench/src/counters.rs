//! Part 1's counter calibration: do per-packet counters need per-CPU
//! copies? A conntrack hit updates two counters (its frontend's and its
//! backend's packets and bytes). The calibration object has both shapes —
//! `mcs_bench_count_pcpu` (per-CPU array) and `mcs_bench_count_shared` (one
//! array, atomic adds) — run through `BPF_PROG_TEST_RUN` with `repeat` on
//! one CPU, and on every CPU at once (all updating the same two counters:
//! one hot service), each against `mcs_bench_pass` in the same round.

use std::sync::Barrier;

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use serde::{Deserialize, Serialize};

use crate::perpacket;

pub const COUNT_PCPU: &str = "mcs_bench_count_pcpu";
pub const COUNT_SHARED: &str = "mcs_bench_count_shared";

/// ns per run of each program, one sample per round, on one CPU and on
/// every CPU at once (the mean over the CPUs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterCalibration {
    pub cpus: usize,
    pub repeat: u32,
    pub pass_one_cpu: Vec<f64>,
    pub per_cpu_one_cpu: Vec<f64>,
    pub shared_one_cpu: Vec<f64>,
    pub pass_all_cpus: Vec<f64>,
    pub per_cpu_all_cpus: Vec<f64>,
    pub shared_all_cpus: Vec<f64>,
}

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    let program: &Xdp = ebpf
        .program(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    Ok(program)
}

/// Runs `program` `repeat` times on the calling thread (pinned to `cpu`):
/// ns per run as the kernel reports it.
fn timed(program: &Xdp, frame: &[u8], repeat: u32, cpu: Option<usize>) -> Result<f64> {
    if let Some(cpu) = cpu {
        perpacket::pin_current_thread(cpu);
    }
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let verdict = result.return_value;
    ensure!(verdict == 2, "verdict {verdict}, expected XDP_PASS");
    Ok(result.duration.as_nanos() as f64)
}

/// Every CPU runs `program` at once (released together); the mean ns per run.
fn timed_on_all(program: &Xdp, frame: &[u8], repeat: u32, cpus: usize) -> Result<f64> {
    let barrier = Barrier::new(cpus);
    let results: Vec<Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cpus)
            .map(|cpu| {
                let barrier = &barrier;
                scope.spawn(move || {
                    perpacket::pin_current_thread(cpu);
                    barrier.wait();
                    timed(program, frame, repeat, None)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let times = results.into_iter().collect::<Result<Vec<f64>>>()?;
    #[expect(clippy::cast_precision_loss, reason = "a few CPUs")]
    Ok(times.iter().sum::<f64>() / times.len() as f64)
}

/// `rounds` interleaved rounds (a warm-up discarded) of the three programs
/// on one CPU (the last) and on every CPU at once.
pub fn calibrate(
    calibration: &Ebpf,
    frame: &[u8],
    rounds: usize,
    repeat: u32,
) -> Result<CounterCalibration> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let pass = program(calibration, perpacket::BENCH_PASS)?;
    let per_cpu = program(calibration, COUNT_PCPU)?;
    let shared = program(calibration, COUNT_SHARED)?;
    let mut result = CounterCalibration {
        cpus,
        repeat,
        ..CounterCalibration::default()
    };
    for round in 0..=rounds {
        let one = [pass, per_cpu, shared].map(|p| timed(p, frame, repeat, Some(cpus - 1)));
        let all = [pass, per_cpu, shared].map(|p| timed_on_all(p, frame, repeat, cpus));
        if round == 0 {
            continue;
        }
        let [p, c, s] = one;
        result.pass_one_cpu.push(p?);
        result.per_cpu_one_cpu.push(c?);
        result.shared_one_cpu.push(s?);
        let [p, c, s] = all;
        result.pass_all_cpus.push(p?);
        result.per_cpu_all_cpus.push(c?);
        result.shared_all_cpus.push(s?);
    }
    perpacket::pin_current_thread(cpus - 1);
    Ok(result)
}
