//! Logging: `tracing` to stderr as text or JSON; eBPF `aya-log` records are
//! forwarded through the `log` → `tracing` bridge.

use std::{error::Error, fmt::Write as _};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::warn;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    // hickory logs every DNS query at info; only its warnings by default.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("hickory_server=warn,{default_level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // `try_init` also installs the `log` bridge (aya-log uses `log`).
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
}

/// An error and all its sources on one line: "a: b: c".
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Drains the eBPF log ring buffer whenever it becomes readable.
pub struct BpfLogTask(tokio::task::JoinHandle<()>);

impl BpfLogTask {
    /// Starts forwarding; `None` when the object has no log map (all log
    /// statements compiled out), which is not an error.
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("no async runtime: eBPF logs are not forwarded");
            return None;
        };
        let logger = match EbpfLogger::init(ebpf) {
            Ok(logger) => logger,
            Err(error) => {
                warn!(error = %chain(&error), "eBPF logs unavailable");
                return None;
            }
        };
        // SAFETY: the logger owns its ring-buffer fd and keeps it open, and
        // it is moved into the AsyncFd, so the fd is not closed or replaced
        // while registered.
        let registered =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(error) => {
                warn!(%error, "cannot poll eBPF logs");
                return None;
            }
        };
        Some(Self(runtime.spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        })))
    }
}

impl Drop for BpfLogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
