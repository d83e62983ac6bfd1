//! Runs the `mcs-agent` binary inside a node namespace and reads its state.
//!
//! The agent is started with only the network namespace entered (see
//! [`Netns::command`]): under `ip netns exec` it would get a private sysfs
//! and pin its maps into a bpffs that vanishes with it. Each agent gets its
//! own `--bpffs-dir`, so agents of parallel tests never share maps. Its
//! stdout and stderr go to a log file that is printed when a test fails (the
//! agent is dropped during the panic) and available through [`Agent::log`].
//!
//! The agent pins its maps and XDP links: after SIGTERM the dataplane keeps
//! serving for the next agent (hitless restarts) unless it runs with
//! `--detach-on-exit`. Dropping an [`Agent`] therefore stops it and then
//! removes the dataplane with `mcs-agent cleanup`, as an operator retiring a
//! node would. To test a restart, [`Agent::stop_keeping_dataplane`] hands the
//! pinned dataplane over as a [`PinnedDataplane`] guard, which
//! [`Agent::adopt`] passes to the next agent and which otherwise removes the
//! dataplane when dropped.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Deserialize;

use crate::{manifest::Protocol, netns::Netns};

/// Environment variable naming the agent binary (set by `cargo xtask test`).
pub const AGENT_BIN_ENV: &str = "MCS_AGENT_BIN";
/// Where bpffs is mounted; per-agent directories go below it.
pub const BPFFS: &str = "/sys/fs/bpf";
/// How long [`Agent::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Start of the name of each agent's bpffs directory: `mcs-e2e-<pid>-<n>`.
const BPFFS_PREFIX: &str = "mcs-e2e-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The agent binary: `$MCS_AGENT_BIN`, else `target/debug/mcs-agent` of
/// this workspace.
pub fn binary() -> PathBuf {
    match std::env::var_os(AGENT_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("mcs-agent"),
    }
}

/// Mounts bpffs on [`BPFFS`] unless it is mounted already.
pub fn ensure_bpffs() -> Result<()> {
    let mounted = nix::sys::statfs::statfs(BPFFS)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if !mounted {
        crate::netns::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
            .context("mounting bpffs")?;
    }
    Ok(())
}

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `--source file:PATH`: a YAML file or a directory of YAML files.
    pub source: PathBuf,
    /// `--interface`, repeated.
    pub interfaces: Vec<String>,
    /// `--cluster-id`.
    pub cluster_id: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--bpffs-dir`; `None` picks a new private directory. Give the
    /// directory of a stopped agent to have the new one adopt its dataplane.
    pub bpffs_dir: Option<PathBuf>,
    /// Extra arguments after the others.
    pub extra_args: Vec<String>,
    /// `--source` value other than `file:SOURCE` (e.g. `kube`).
    pub source_arg: Option<String>,
}

impl AgentConfig {
    pub fn new(source: impl Into<PathBuf>, interfaces: Vec<String>) -> Self {
        Self {
            source: source.into(),
            interfaces,
            cluster_id: None,
            log_format: None,
            bpffs_dir: None,
            extra_args: Vec::new(),
            source_arg: None,
        }
    }
}

/// A running agent; stopped with SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct Agent {
    bin: PathBuf,
    netns: String,
    bpffs_dir: PathBuf,
    log_path: PathBuf,
    // Holds the log file; deleted on drop.
    _log_dir: tempfile::TempDir,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    /// Leave the pinned dataplane in place on drop (a successor adopts it).
    keep_dataplane: bool,
}

impl Agent {
    /// Starts `mcs-agent run` in `netns` (network namespace only).
    pub fn start(netns: &Netns, config: &AgentConfig) -> Result<Self> {
        ensure_bpffs()?;
        let bin = binary();
        ensure!(
            bin.is_file(),
            "agent binary {} not found: build it (`cargo build -p mcs-agent`) or set {AGENT_BIN_ENV}",
            bin.display()
        );
        reap_stale_bpffs();
        let bpffs_dir = config.bpffs_dir.clone().unwrap_or_else(|| {
            PathBuf::from(BPFFS).join(format!(
                "{BPFFS_PREFIX}{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let log_dir = tempfile::Builder::new()
            .prefix("mcs-agent-log-")
            .tempdir()?;
        let log_path = log_dir.path().join("agent.log");
        let log = File::create(&log_path)?;

        let mut cmd = netns.command(&bin)?;
        cmd.arg("run").arg("--source").arg(
            config
                .source_arg
                .clone()
                .unwrap_or_else(|| format!("file:{}", config.source.display())),
        );
        for iface in &config.interfaces {
            cmd.args(["--interface", iface]);
        }
        cmd.arg("--bpffs-dir").arg(&bpffs_dir);
        if let Some(id) = &config.cluster_id {
            cmd.args(["--cluster-id", id]);
        }
        if let Some(format) = &config.log_format {
            cmd.args(["--log-format", format]);
        }
        cmd.args(&config.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a Ctrl-C at the terminal reaches only the
            // test or demo, which then stops the agent in order.
            .process_group(0);
        // If the test process dies without running its Drops (SIGKILL, a
        // Ctrl-C of `cargo test`), the agent must not live on in a namespace
        // nobody can name any more: it gets SIGTERM when its parent goes.
        // (The signal follows the spawning *thread*; agents are spawned and
        // stopped by the thread that owns them.)
        let parent = std::process::id();
        // SAFETY: prctl(2) and getppid(2) are async-signal-safe; nothing is
        // allocated.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            bin,
            netns: netns.name().to_owned(),
            bpffs_dir,
            log_path,
            _log_dir: log_dir,
            child: Some(child),
            exit: None,
            keep_dataplane: false,
        })
    }

    /// The agent's `--bpffs-dir`.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// The namespace the agent runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<cannot read agent log: {e}>"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the agent has exited.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            self.exit = Some(status);
            self.child = None;
        }
        Ok(self.exit)
    }

    /// Fails (with the log) if the agent has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_exit_status()? {
            bail!("mcs-agent exited ({status}); its log:\n{}", self.log());
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`] for the agent to exit,
    /// then kills it. Returns how it exited; fails if it had to be killed.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return self.exit.context("agent was never started");
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        // ESRCH: it already exited; wait() below reaps it.
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                self.exit = Some(status);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait()?;
                self.exit = Some(status);
                bail!("mcs-agent ignored SIGTERM for {STOP_TIMEOUT:?} and was killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the agent with SIGKILL (no chance to clean up, like a crash or
    /// an OOM kill) and keeps its pinned dataplane; pass the returned guard
    /// to [`Agent::adopt`].
    pub fn kill_keeping_dataplane(mut self) -> Result<StoppedAgent> {
        let mut child = self.child.take().context("agent was never started")?;
        child.kill().context("SIGKILL the agent")?;
        let status = child.wait()?;
        self.exit = Some(status);
        Ok(self.keeping_dataplane(status))
    }

    /// Stops the agent like [`stop`](Self::stop) and keeps its pinned
    /// dataplane serving; pass the returned guard to [`Agent::adopt`].
    pub fn stop_keeping_dataplane(mut self) -> Result<StoppedAgent> {
        let status = self.stop()?;
        Ok(self.keeping_dataplane(status))
    }

    /// The stopped agent with a guard of its pinned dataplane, which this
    /// agent's drop no longer removes.
    fn keeping_dataplane(&mut self, status: ExitStatus) -> StoppedAgent {
        self.keep_dataplane = true;
        StoppedAgent {
            status,
            log: self.log(),
            dataplane: PinnedDataplane {
                bin: self.bin.clone(),
                netns: self.netns.clone(),
                dir: self.bpffs_dir.clone(),
                armed: true,
            },
        }
    }

    /// Starts an agent that adopts the dataplane a stopped agent left
    /// pinned (same `--bpffs-dir`). If it cannot be started, the dataplane
    /// is removed.
    pub fn adopt(netns: &Netns, config: &AgentConfig, pinned: PinnedDataplane) -> Result<Self> {
        let mut config = config.clone();
        config.bpffs_dir = Some(pinned.dir.clone());
        let agent = Self::start(netns, &config)?;
        pinned.disarm();
        Ok(agent)
    }

    /// `mcs-agent cleanup` of this agent's dataplane (see [`cleanup`]).
    pub fn cleanup(&self) -> Result<()> {
        cleanup(&self.bin, &self.netns, &self.bpffs_dir)
    }

    /// `mcs-agent dump --output json`, parsed.
    pub fn dump(&self) -> Result<Dump> {
        let text = self.dump_raw("json")?;
        serde_json::from_str(&text).with_context(|| format!("parsing dump output {text:?}"))
    }

    /// `mcs-agent dump --output text`.
    pub fn dump_text(&self) -> Result<String> {
        self.dump_raw("text")
    }

    fn dump_raw(&self, output: &str) -> Result<String> {
        // Dump only reads pinned maps, which are visible from any namespace.
        crate::netns::run(
            Command::new(&self.bin)
                .arg("dump")
                .arg("--bpffs-dir")
                .arg(&self.bpffs_dir)
                .args(["--output", output]),
        )
    }

    /// Polls [`dump`](Self::dump) until `pred` holds, and returns that dump.
    /// Fails after `timeout` (with the last dump or error) or as soon as the
    /// agent exits.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Dump) -> bool,
    ) -> Result<Dump> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            let last = match self.dump() {
                Ok(dump) if pred(&dump) => return Ok(dump),
                Ok(dump) => format!("{dump:#?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "agent state did not reach the expected condition within {timeout:?}; \
                     last dump: {last}\nagent log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let mut failed = std::thread::panicking();
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("warning: {e:#}");
            failed = true;
        }
        if !self.keep_dataplane {
            // A test's dataplane must not outlive the test.
            if let Err(e) = self.cleanup() {
                eprintln!("warning: {e:#}");
            }
            if let Err(e) = remove_bpffs_dir(&self.bpffs_dir) {
                eprintln!("warning: removing {}: {e:#}", self.bpffs_dir.display());
            }
        }
        if failed {
            eprintln!(
                "----- mcs-agent log ({}) -----\n{}\n----- end of mcs-agent log -----",
                self.netns,
                self.log()
            );
        }
    }
}

/// What [`Agent::stop_keeping_dataplane`] leaves.
#[derive(Debug)]
pub struct StoppedAgent {
    pub status: ExitStatus,
    /// Everything the agent printed.
    pub log: String,
    pub dataplane: PinnedDataplane,
}

/// A dataplane (maps and XDP links) pinned by an agent that has exited.
/// Removed with `mcs-agent cleanup` on drop unless handed to
/// [`Agent::adopt`].
#[derive(Debug)]
pub struct PinnedDataplane {
    bin: PathBuf,
    netns: String,
    dir: PathBuf,
    armed: bool,
}

impl PinnedDataplane {
    /// The `--bpffs-dir` holding the pins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the dataplane now (`mcs-agent cleanup`).
    pub fn cleanup(mut self) -> Result<()> {
        self.armed = false;
        cleanup(&self.bin, &self.netns, &self.dir)?;
        remove_bpffs_dir(&self.dir)
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PinnedDataplane {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = cleanup(&self.bin, &self.netns, &self.dir) {
                eprintln!("warning: {e:#}");
            }
            if let Err(e) = remove_bpffs_dir(&self.dir) {
                eprintln!("warning: removing {}: {e:#}", self.dir.display());
            }
        }
    }
}

/// `mcs-agent cleanup --bpffs-dir DIR`: detaches the pinned XDP links and
/// removes the pinned maps. Runs in the agent's namespace `netns` (where the
/// interfaces are) while it exists.
pub fn cleanup(bin: &Path, netns: &str, dir: &Path) -> Result<()> {
    let mut cmd = if crate::netns::path_of(netns).exists() {
        crate::netns::command_in(netns, bin)?
    } else {
        Command::new(bin)
    };
    crate::netns::run(cmd.arg("cleanup").arg("--bpffs-dir").arg(dir))
        .map(drop)
        .context("mcs-agent cleanup")
}

fn remove_bpffs_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes `mcs-e2e-<pid>-<n>` bpffs directories of processes that no
/// longer run.
fn reap_stale_bpffs() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(BPFFS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !crate::netns::pid_alive(pid)
            && let Err(e) = remove_bpffs_dir(&entry.path())
        {
            eprintln!("warning: removing stale {name}: {e:#}");
        }
    }
}

/// Output of `mcs-agent dump --output json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Dump {
    #[serde(default)]
    pub services: Vec<DumpService>,
    #[serde(default)]
    pub drops: Drops,
    /// Conntrack entries (both directions of each flow).
    #[serde(default)]
    pub conntrack_entries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DumpService {
    pub frontend_id: u32,
    /// `namespace/name:port-name`.
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    #[serde(default)]
    pub backends: Vec<DumpBackend>,
    #[serde(default)]
    pub stats: ServiceStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DumpBackend {
    pub slot: u32,
    pub addr: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub cluster: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ServiceStats {
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub new_flows: u64,
    #[serde(default)]
    pub no_backend: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Drops {
    #[serde(default)]
    pub no_backend: u64,
    #[serde(default)]
    pub fragment: u64,
    #[serde(default)]
    pub malformed: u64,
    #[serde(default)]
    pub conntrack_full: u64,
    #[serde(default)]
    pub backend_missing: u64,
}

impl Dump {
    /// The frontend `vip:port/protocol`, if programmed.
    pub fn service(
        &self,
        vip: impl Into<IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> Option<&DumpService> {
        let vip = vip.into();
        self.services.iter().find(|s| {
            s.vip == vip && s.port == port && s.protocol.eq_ignore_ascii_case(protocol.as_str())
        })
    }
}

impl DumpService {
    /// IPv4 backend addresses, sorted (a frontend has one family).
    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        let mut addrs: Vec<Ipv4Addr> = self
            .backends
            .iter()
            .filter_map(|b| match b.addr {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        addrs.sort();
        addrs
    }

    /// Backend addresses of either family, sorted.
    pub fn backend_ips(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self.backends.iter().map(|b| b.addr).collect();
        addrs.sort();
        addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_dump() {
        let json = r#"{"services":[{"frontend_id":1,"name":"demo/web:http","vip":"10.96.100.10","port":80,"protocol":"TCP",
   "backends":[{"slot":0,"addr":"10.101.1.10","port":8080,"cluster":"cluster-a"}],
   "stats":{"packets":3,"bytes":0,"new_flows":1,"no_backend":0}}],
 "drops":{"no_backend":0,"fragment":0,"malformed":0,"conntrack_full":0,"backend_missing":0}}"#;
        let dump: Dump = serde_json::from_str(json).unwrap();
        let svc = dump
            .service(Ipv4Addr::new(10, 96, 100, 10), 80, Protocol::Tcp)
            .unwrap();
        assert_eq!(svc.backend_addrs(), [Ipv4Addr::new(10, 101, 1, 10)]);
        assert_eq!(svc.backends[0].cluster, "cluster-a");
        assert_eq!(svc.stats.new_flows, 1);
        assert!(
            dump.service(Ipv4Addr::new(10, 96, 100, 10), 80, Protocol::Udp)
                .is_none()
        );
    }

    #[test]
    fn binary_defaults_to_the_workspace_target() {
        if std::env::var_os(AGENT_BIN_ENV).is_none() {
            assert!(binary().ends_with("target/debug/mcs-agent"));
        }
    }
}
