//! The load generator of the end-to-end part (`mcs-bench load`): N
//! concurrent workers on one thread for a fixed time, each in a loop of
//!
//! * `close` — connect, `GET` with `Connection: close`, read to EOF (the
//!   server closes first), close: new connections/s, request latency and
//!   TCP handshake time (connect() → established);
//! * `keepalive` — requests on one connection per worker;
//! * `udp` — request/response datagrams on a connected UDP socket.
//!
//! Latencies go into HDR histograms (µs). The result is one JSON line.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Close,
    Keepalive,
    Udp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Close => "close",
            Kind::Keepalive => "keepalive",
            Kind::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadResult {
    pub kind: Kind,
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Completed requests (close: connections) per second.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// TCP handshake (connect) time, close mode only.
    pub handshake_p50_us: f64,
    pub handshake_p99_us: f64,
    /// CPU the two agents used during the run (every thread, user and
    /// system), in % of one CPU; filled in by the end-to-end part.
    #[serde(default)]
    pub agents_cpu_pct: f64,
}

const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const REQUEST_KEEPALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const UDP_TIMEOUT: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Worker {
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
    ok: u64,
    errors: u64,
}

impl Worker {
    fn new() -> Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
            handshake: Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
            ok: 0,
            errors: 0,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Length of a complete HTTP response at the start of `buf`, if complete
/// (head plus `Content-Length` bytes).
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let end = crate::server::head_end(buf)?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let total = end + length;
    (buf.len() >= total).then_some(total)
}

/// One connection: returns (handshake, whole request) times.
async fn close_once(target: SocketAddr, buf: &mut [u8]) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(target))
        .await
        .context("connect timed out")?
        .context("connect")?;
    let connected = start.elapsed();
    stream.set_nodelay(true)?;
    stream.write_all(REQUEST_CLOSE).await?;
    let mut have = 0;
    loop {
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf[have..]))
            .await
            .context("read timed out")??;
        if n == 0 {
            break;
        }
        have = (have + n).min(buf.len() - 1);
    }
    if !buf[..have].starts_with(b"HTTP/1.1 200") {
        bail!("unexpected answer");
    }
    drop(stream);
    Ok((connected, start.elapsed()))
}

async fn close_worker(
    targets: Vec<SocketAddr>,
    offset: usize,
    deadline: Instant,
    record_from: Instant,
) -> Result<Worker> {
    let mut worker = Worker::new()?;
    let mut buf = vec![0u8; 4096];
    let mut i = offset;
    while Instant::now() < deadline {
        let target = targets[i % targets.len()];
        i += 1;
        let started = Instant::now();
        let result = close_once(target, &mut buf).await;
        if started < record_from {
            continue;
        }
        match result {
            Ok((handshake, total)) => {
                worker.ok += 1;
                worker.handshake.saturating_record(micros(handshake));
                worker.latency.saturating_record(micros(total));
            }
            Err(_) => {
                worker.errors += 1;
                // Do not spin on a failing connect (e.g. out of ports).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    Ok(worker)
}

async fn keepalive_worker(
    target: SocketAddr,
    deadline: Instant,
    record_from: Instant,
) -> Result<Worker> {
    let mut worker = Worker::new()?;
    let mut buf = vec![0u8; 4096];
    'reconnect: while Instant::now() < deadline {
        let Ok(Ok(mut stream)) = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(target)).await
        else {
            worker.errors += 1;
            continue;
        };
        stream.set_nodelay(true)?;
        while Instant::now() < deadline {
            let start = Instant::now();
            if stream.write_all(REQUEST_KEEPALIVE).await.is_err() {
                worker.errors += 1;
                continue 'reconnect;
            }
            let mut have = 0;
            loop {
                let read = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf[have..])).await;
                match read {
                    Ok(Ok(n)) if n > 0 => have += n,
                    _ => {
                        worker.errors += 1;
                        continue 'reconnect;
                    }
                }
                if let Some(len) = response_len(&buf[..have]) {
                    buf.copy_within(len..have, 0);
                    break;
                }
                if have == buf.len() {
                    worker.errors += 1;
                    continue 'reconnect;
                }
            }
            if start >= record_from {
                worker.ok += 1;
                worker.latency.saturating_record(micros(start.elapsed()));
            }
        }
    }
    Ok(worker)
}

async fn udp_worker(
    target: SocketAddr,
    id: usize,
    deadline: Instant,
    record_from: Instant,
) -> Result<Worker> {
    let mut worker = Worker::new()?;
    let any: SocketAddr = if target.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await.context("bind UDP")?;
    socket.connect(target).await.context("connect UDP")?;
    let mut buf = [0u8; 256];
    let mut seq = 0u64;
    while Instant::now() < deadline {
        seq += 1;
        let message = format!("ping {id} {seq}");
        let start = Instant::now();
        if socket.send(message.as_bytes()).await.is_err() {
            worker.errors += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        // Skip late answers to earlier (timed-out) requests.
        let answered = loop {
            match tokio::time::timeout(UDP_TIMEOUT, socket.recv(&mut buf)).await {
                Ok(Ok(n)) if &buf[..n] == message.as_bytes() => break true,
                Ok(Ok(_)) => {}
                _ => break false,
            }
        };
        if start < record_from {
            continue;
        }
        if answered {
            worker.ok += 1;
            worker.latency.saturating_record(micros(start.elapsed()));
        } else {
            worker.errors += 1;
        }
    }
    Ok(worker)
}

/// Runs `concurrency` workers of `kind` against `targets` (round robin over
/// them per connection in close mode; worker `i` uses target `i` otherwise)
/// for `warmup + seconds`, recording only after the warm-up.
pub fn run(
    kind: Kind,
    targets: &[SocketAddr],
    concurrency: usize,
    seconds: f64,
    warmup: f64,
) -> Result<LoadResult> {
    if targets.is_empty()
        || concurrency == 0
        || seconds.is_nan()
        || seconds <= 0.0
        || warmup.is_nan()
        || warmup < 0.0
    {
        bail!("need targets, concurrency > 0 and a positive duration");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let start = Instant::now();
    let record_from = start + Duration::from_secs_f64(warmup);
    let deadline = record_from + Duration::from_secs_f64(seconds);
    let workers: Vec<Worker> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..concurrency {
            let targets = targets.to_vec();
            let target = targets[i % targets.len()];
            tasks.push(spawn_worker(
                kind,
                targets,
                target,
                i,
                deadline,
                record_from,
            ));
        }
        let mut done = Vec::new();
        for task in tasks {
            done.push(task.await.context("worker panicked")??);
        }
        Ok::<_, anyhow::Error>(done)
    })?;
    let elapsed = Instant::now()
        .saturating_duration_since(record_from)
        .as_secs_f64();
    let mut total = Worker::new()?;
    for worker in &workers {
        total.ok += worker.ok;
        total.errors += worker.errors;
        total.latency.add(&worker.latency).context("merge")?;
        total.handshake.add(&worker.handshake).context("merge")?;
    }
    #[expect(clippy::cast_precision_loss, reason = "counts and µs")]
    let result = LoadResult {
        kind,
        ok: total.ok,
        errors: total.errors,
        seconds: elapsed,
        rate: total.ok as f64 / elapsed.max(1e-9),
        p50_us: total.latency.value_at_quantile(0.50) as f64,
        p99_us: total.latency.value_at_quantile(0.99) as f64,
        handshake_p50_us: total.handshake.value_at_quantile(0.50) as f64,
        handshake_p99_us: total.handshake.value_at_quantile(0.99) as f64,
        agents_cpu_pct: 0.0,
    };
    Ok(result)
}

fn spawn_worker(
    kind: Kind,
    targets: Vec<SocketAddr>,
    target: SocketAddr,
    id: usize,
    deadline: Instant,
    record_from: Instant,
) -> tokio::task::JoinHandle<Result<Worker>> {
    match kind {
        Kind::Close => tokio::spawn(close_worker(targets, id, deadline, record_from)),
        Kind::Keepalive => tokio::spawn(keepalive_worker(target, deadline, record_from)),
        Kind::Udp => tokio::spawn(udp_worker(target, id, deadline, record_from)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_length_needs_head_and_body() {
        let full = crate::server::RESPONSE_KEEPALIVE;
        assert_eq!(response_len(full), Some(full.len()));
        assert_eq!(response_len(&full[..full.len() - 1]), None);
        let mut two = full.to_vec();
        two.extend_from_slice(full);
        assert_eq!(response_len(&two), Some(full.len()));
        assert_eq!(response_len(b"HTTP/1.1 200 OK\r\n\r\n"), Some(19));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let target: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(run(Kind::Close, &[], 1, 1.0, 0.0).is_err());
        assert!(run(Kind::Close, &[target], 0, 1.0, 0.0).is_err());
        assert!(run(Kind::Close, &[target], 1, f64::NAN, 0.0).is_err());
    }
}
