//! A background HTTP client that keeps requesting through a ClusterSetIP
//! while a test breaks something (kills the agent, takes its source away),
//! and counts every request that failed.
//!
//! The thread enters the client pod's network namespace once, for its whole
//! life, so every socket it opens belongs there.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

use crate::client::TIMEOUT;

/// How long outage tests break things: `MCS_OUTAGE_SECONDS`, 60 s unless
/// set (a shorter value speeds up a local run; CI uses the default).
pub fn outage_duration() -> Duration {
    Duration::from_secs(
        std::env::var("MCS_OUTAGE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    )
}

/// What each round of the load does.
#[derive(Clone, Copy, Debug)]
pub enum LoadPattern {
    /// One request on a new connection, then a pause.
    NewConnections { pause: Duration },
    /// One request on a connection opened at the start and kept alive, and
    /// one on a new connection, with no pause: both established flows and
    /// new flows must survive.
    EstablishedAndNew,
}

/// What the load saw, once stopped.
#[derive(Debug)]
pub struct LoadTotals {
    pub sent: usize,
    pub failed: usize,
    /// The error of every failed request, in order.
    pub failures: Vec<String>,
}

impl LoadTotals {
    /// Panics unless at least `min_sent` requests were sent and none of
    /// them failed (`what` names the situation in the message).
    pub fn assert_all_answered(&self, min_sent: usize, what: &str) {
        assert!(
            self.sent >= min_sent,
            "{what}: only {} requests sent",
            self.sent
        );
        assert_eq!(
            self.failed, 0,
            "{what}: {} of {} requests failed: {:?}",
            self.failed, self.sent, self.failures
        );
    }
}

#[derive(Default)]
struct Counters {
    stop: AtomicBool,
    sent: AtomicUsize,
    failed: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Counters {
    fn record(&self, result: io::Result<String>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut failures) = self.failures.lock() {
                failures.push(error.to_string());
            }
        }
    }
}

/// A running load; [`BackgroundLoad::stop`] ends it and returns the totals.
pub struct BackgroundLoad {
    counters: Arc<Counters>,
    thread: JoinHandle<io::Result<()>>,
}

impl BackgroundLoad {
    /// Starts requesting `target` from inside the namespace at `netns_path`
    /// (e.g. [`crate::netns::path_of`] of the client pod).
    pub fn start(netns_path: PathBuf, target: SocketAddr, pattern: LoadPattern) -> Self {
        let counters = Arc::new(Counters::default());
        let thread = {
            let counters = counters.clone();
            std::thread::spawn(move || {
                let netns = std::fs::File::open(&netns_path)?;
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                run(&counters, target, pattern)
            })
        };
        Self { counters, thread }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        self.counters.sent.load(Ordering::Relaxed)
    }

    /// Waits until `count` requests were sent, or `timeout` passed.
    pub fn wait_for(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.sent() < count && Instant::now() < deadline && !self.thread.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the load and returns what it saw; fails when the load thread
    /// could not run (namespace, first connection).
    pub fn stop(self) -> Result<LoadTotals> {
        self.counters.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("load thread panicked"))?
            .context("load thread")?;
        let failures = std::mem::take(
            &mut *self
                .counters
                .failures
                .lock()
                .map_err(|_| anyhow!("failure list poisoned"))?,
        );
        Ok(LoadTotals {
            sent: self.counters.sent.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            failures,
        })
    }
}

fn run(counters: &Counters, target: SocketAddr, pattern: LoadPattern) -> io::Result<()> {
    let connect = || {
        let stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok::<_, io::Error>(stream)
    };
    let fresh_request = || connect().and_then(|mut stream| http_get_on(&mut stream));
    match pattern {
        LoadPattern::NewConnections { pause } => {
            while !counters.stop.load(Ordering::Relaxed) {
                counters.record(fresh_request());
                std::thread::sleep(pause);
            }
        }
        LoadPattern::EstablishedAndNew => {
            let mut established = connect()?;
            while !counters.stop.load(Ordering::Relaxed) {
                counters.record(http_get_on(&mut established));
                counters.record(fresh_request());
            }
        }
    }
    Ok(())
}

/// One HTTP/1.1 GET on `stream`, left open for the next one; returns the
/// body of a `200` answer and an error for anything else.
pub fn http_get_on(stream: &mut TcpStream) -> io::Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
    let mut reader = BufReader::new(&mut *stream);
    let mut status = String::new();
    if reader.read_line(&mut status)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("answer {:?}", status.trim_end())));
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the header",
            ));
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value
                .trim()
                .parse()
                .map_err(|_| io::Error::other(format!("bad {}", line.trim_end())))?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
