//! Stable-toolchain fallback for the fuzz targets, used by `cargo xtask
//! fuzz` when no nightly toolchain (hence no libFuzzer instrumentation) is
//! installed: seeds plus random mutations (bit flips, byte writes, inserted
//! and removed ranges, splices, dictionary tokens) for a time budget,
//! without coverage feedback. A panic writes the input to
//! `ARTIFACTS/crash-<hash>` and exits 1, like libFuzzer.
//!
//! Usage: `fuzz-stable TARGET --time SECS --seeds DIR --artifacts DIR`
//!        `fuzz-stable TARGET --replay FILE`

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Tokens that make mutated manifests and frames reach deeper code.
const DICTIONARY: &[&[u8]] = &[
    b"\n---\n",
    b"\n#--next--\n",
    b"kind: List\nitems:\n- ",
    b"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
    b"apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\n",
    b"10.96.100.10",
    b"127.0.0.1",
    b"0.0.0.0",
    b"::ffff:10.0.0.1",
    b"port: 0",
    b"port: 65536",
    b"protocol: UDP",
    b"addressType: IPv6",
    b"conditions: {ready: false, serving: true, terminating: true}",
    b"sessionAffinity: ClientIP",
    b"dataplane.mcs.dev/locality: local-first",
    b"&a [*a, *a]",
    b"{",
    b"[",
    b"\x08\x00\x45\x00",
    b"\x0a\x60\x64\x0a\x00\x50",
    b"\x0a\x60\x64\x14\x00\x35",
];

/// xorshift64*: small, seedable, good enough for mutation choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// `ascii`: keep text targets' inputs 7-bit, so mutants stay UTF-8 and reach
/// the parser instead of being refused as bytes.
fn mutate(rng: &mut Rng, pool: &[Vec<u8>], input: &mut Vec<u8>, ascii: bool) {
    let mask = if ascii { 0x7f } else { 0xff };
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= (1 << rng.below(8)) & mask;
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8 & mask;
            }
            2 => {
                let at = rng.below(input.len() + 1);
                let bytes: Vec<u8> = (0..=rng.below(16))
                    .map(|_| rng.next() as u8 & mask)
                    .collect();
                input.splice(at..at, bytes);
            }
            3 if !input.is_empty() => {
                let at = rng.below(input.len());
                let end = (at + 1 + rng.below(32)).min(input.len());
                input.drain(at..end);
            }
            4 if !input.is_empty() => {
                let at = rng.below(input.len());
                let end = (at + 1 + rng.below(64)).min(input.len());
                let copy = input[at..end].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, copy);
            }
            5 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len() + 1);
                let at = rng.below(input.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(input.len() + 1);
                input.splice(at..at, token.iter().copied());
            }
        }
    }
    input.truncate(64 * 1024);
}

fn hash(data: &[u8]) -> u64 {
    // FNV-1a: names artifacts stably.
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Args {
    target: String,
    time: Duration,
    seeds: Option<PathBuf>,
    artifacts: PathBuf,
    replay: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let target = args.next().ok_or(
        "usage: fuzz-stable TARGET [--time SECS] [--seeds DIR] [--artifacts DIR] [--replay FILE]",
    )?;
    let mut parsed = Args {
        target,
        time: Duration::from_secs(60),
        seeds: None,
        artifacts: PathBuf::from("artifacts"),
        replay: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--time" => {
                parsed.time =
                    Duration::from_secs(value.parse().map_err(|_| "--time takes seconds")?)
            }
            "--seeds" => parsed.seeds = Some(value.into()),
            "--artifacts" => parsed.artifacts = value.into(),
            "--replay" => parsed.replay = Some(value.into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !mcs_fuzz::TARGETS.contains(&parsed.target.as_str()) {
        return Err(format!(
            "unknown target {}; targets: {:?}",
            parsed.target,
            mcs_fuzz::TARGETS
        ));
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("fuzz-stable: {message}");
            return ExitCode::from(2);
        }
    };
    let target = args.target.as_str();
    if let Some(file) = &args.replay {
        let data = fs::read(file).expect("read the input to replay");
        mcs_fuzz::run(target, &data);
        println!("fuzz-stable: {} ran without failure", file.display());
        return ExitCode::SUCCESS;
    }

    let mut pool: Vec<Vec<u8>> = Vec::new();
    if let Some(dir) = &args.seeds
        && let Ok(entries) = fs::read_dir(dir)
    {
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        pool.extend(files.iter().filter_map(|f| fs::read(f).ok()));
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    println!(
        "fuzz-stable: target {target}, {} seed input(s), {} s, rng seed {seed:#x} (no coverage feedback)",
        pool.len(),
        args.time.as_secs()
    );
    // Panics are the findings: keep the default hook's message, then save.
    let start = Instant::now();
    let mut executions: u64 = 0;
    let mut last_report = Instant::now();
    while start.elapsed() < args.time {
        let mut input = pool[rng.below(pool.len())].clone();
        if executions >= pool.len() as u64 {
            mutate(&mut rng, &pool, &mut input, target == "manifest");
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| mcs_fuzz::run(target, &input)));
        executions += 1;
        if outcome.is_err() {
            fs::create_dir_all(&args.artifacts).expect("create the artifact directory");
            let path = args.artifacts.join(format!("crash-{:016x}", hash(&input)));
            fs::write(&path, &input).expect("write the artifact");
            eprintln!(
                "fuzz-stable: CRASH after {executions} executions; input saved to {}\n  replay: fuzz-stable {target} --replay {}",
                path.display(),
                path.display()
            );
            return ExitCode::FAILURE;
        }
        // Keep a bounded rolling pool of mutated inputs to build on.
        if rng.below(8) == 0 {
            if pool.len() < 4096 {
                pool.push(input);
            } else {
                let at = rng.below(pool.len());
                pool[at] = input;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            println!("fuzz-stable: #{executions} pool {}", pool.len());
            last_report = Instant::now();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz-stable: DONE target {target}: {executions} executions in {secs:.0} s ({:.0}/s), pool {}, 0 crashes",
        executions as f64 / secs,
        pool.len()
    );
    println!("stat::number_of_executed_units: {executions}");
    println!("stat::corpus_size: {}", pool.len());
    ExitCode::SUCCESS
}
