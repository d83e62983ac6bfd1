//! The lab: its agents, manifests and load runs.

use std::{
    fs,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mcs_agent::dataplane::PinnedMaps;
use mcs_tests::{
    agent::{Agent, AgentConfig},
    netns::{self, Netns},
};

use super::{
    Mode,
    topology::{TO_BACKEND, TO_CLIENT, backends, backends_v6},
};
use crate::{
    load::{Kind, LoadResult},
    rules::{
        self, HTTP_PORT, HTTP_TARGET_PORT, ServiceSet, TARGET_VIP, TARGET_VIP6, UDP_PORT,
        UDP_TARGET_PORT,
    },
};

/// A child process killed on drop.
pub(super) struct ChildGuard(pub(super) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory, removed on drop.
pub(super) struct Cgroup(pub(super) PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// The namespaces, servers and the agent; torn down in field order.
pub(super) struct Lab {
    pub(super) agent: Option<Agent>,
    /// The agent of mode mcs-tc, in its own node namespace.
    pub(super) agent_tc: Option<Agent>,
    /// The object whose `mcs_bench_pass` is attached in the direct+xdp-pass
    /// node namespace (dropping it detaches).
    pub(super) _xdp_pass: aya::Ebpf,
    /// The object whose `mcs_bench_tc_pass` is attached in the
    /// direct+tc-pass node namespace.
    pub(super) _tc_pass: aya::Ebpf,
    /// The object whose `mcs_bench_tc_write` is attached in the
    /// direct+tc-write node namespace.
    pub(super) _tc_write: aya::Ebpf,
    pub(super) _server: ChildGuard,
    pub(super) cgroup: Cgroup,
    pub(super) manifest_dir: tempfile::TempDir,
    pub(super) clients: Vec<Netns>,
    pub(super) lbs: Vec<Netns>,
    pub(super) _backend: Netns,
    pub(super) exe: PathBuf,
    pub(super) cpus: usize,
}

pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl Lab {
    pub(super) fn lb(&self, mode: Mode) -> &Netns {
        &self.lbs[usize::from(mode.ipv4().index())]
    }

    pub(super) fn client(&self, mode: Mode) -> &Netns {
        &self.clients[usize::from(mode.ipv4().index())]
    }

    fn manifest_path(&self) -> PathBuf {
        self.manifest_dir.path().join("services.yaml")
    }

    /// Writes the manifest atomically (the agent ignores dot files).
    pub(super) fn write_manifest(&self, set: &ServiceSet) -> Result<()> {
        let tmp = self.manifest_dir.path().join(".services.yaml.tmp");
        fs::write(&tmp, rules::manifest_dual_stack_target(set, &backends_v6()))
            .context("write manifest")?;
        fs::rename(&tmp, self.manifest_path()).context("rename manifest")
    }

    pub(super) fn start_agent(&mut self) -> Result<()> {
        let mut config = AgentConfig::new(
            self.manifest_dir.path(),
            vec![TO_CLIENT.to_owned(), TO_BACKEND.to_owned()],
        );
        config.extra_args = vec![
            "--socket-lb".to_owned(),
            "--cgroup".to_owned(),
            self.cgroup.0.display().to_string(),
            "--log-level".to_owned(),
            "warn".to_owned(),
        ];
        self.agent = Some(Agent::start(self.lb(Mode::McsXdp), &config)?);
        // mcs-tc: pod interfaces discovered, nothing listed by hand.
        let mut config = AgentConfig::new(self.manifest_dir.path(), Vec::new());
        config.extra_args = ["--pod-interfaces", TO_CLIENT, "--log-level", "info"]
            .map(str::to_owned)
            .to_vec();
        self.agent_tc = Some(Agent::start(self.lb(Mode::McsTc), &config)?);
        Ok(())
    }

    /// Waits until both agents' pinned maps hold `frontends` frontends (and
    /// the tc agent attached to the client's veth).
    pub(super) fn wait_for_agent(
        &mut self,
        frontends: (usize, usize),
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for agent in [self.agent.as_mut(), self.agent_tc.as_mut()] {
            let agent = agent.context("agent not started")?;
            wait_for_frontends(agent, frontends, deadline, timeout)?;
        }
        let agent = self.agent_tc.as_mut().context("agent not started")?;
        while !agent.log().contains("following link notifications") {
            agent.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "the tc agent never attached its hooks; its log:\n{}",
                    agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Waits until `agent`'s pinned maps hold `frontends` (IPv4, IPv6)
/// frontends.
fn wait_for_frontends(
    agent: &mut Agent,
    frontends: (usize, usize),
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        agent.ensure_running()?;
        let count = PinnedMaps::open(agent.bpffs_dir()).ok().map(|maps| {
            (
                maps.0.services.iter().count(),
                maps.0.services_v6.iter().count(),
            )
        });
        if count == Some(frontends) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the agent's maps hold {count:?} frontends after {timeout:?}, expected {frontends:?} (IPv4, IPv6); its log:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Lab {
    fn targets(&self, mode: Mode, kind: Kind) -> Vec<SocketAddr> {
        let (vip_port, target_port) = match kind {
            Kind::Udp => (UDP_PORT, UDP_TARGET_PORT),
            Kind::Close | Kind::Keepalive => (HTTP_PORT, HTTP_TARGET_PORT),
        };
        match mode {
            Mode::Direct | Mode::DirectXdpPass | Mode::DirectTcPass | Mode::DirectTcWrite => {
                backends()
                    .into_iter()
                    .map(|b| SocketAddr::V4(SocketAddrV4::new(b, target_port)))
                    .collect()
            }
            Mode::DirectOne => backends()
                .into_iter()
                .take(1)
                .map(|b| SocketAddr::V4(SocketAddrV4::new(b, target_port)))
                .collect(),
            Mode::DirectV6 => backends_v6()
                .into_iter()
                .map(|b| SocketAddr::V6(SocketAddrV6::new(b, target_port, 0, 0)))
                .collect(),
            Mode::McsTcV6 | Mode::McsXdpV6 => {
                vec![SocketAddr::V6(SocketAddrV6::new(
                    TARGET_VIP6,
                    vip_port,
                    0,
                    0,
                ))]
            }
            Mode::McsXdp | Mode::McsTc | Mode::McsSocklb | Mode::Iptables | Mode::Nftables => {
                vec![SocketAddr::V4(SocketAddrV4::new(TARGET_VIP, vip_port))]
            }
        }
    }

    /// Runs `mcs-bench load` in the mode's client namespace on CPU 0 (in
    /// the socket-LB cgroup for that mode).
    pub(super) fn load(
        &self,
        mode: Mode,
        kind: Kind,
        concurrency: usize,
        seconds: f64,
        warmup: f64,
    ) -> Result<LoadResult> {
        let targets: Vec<String> = self
            .targets(mode, kind)
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut cmd = netns::command_in(self.client(mode).name(), "taskset")?;
        cmd.args(["-c", "0"])
            .arg(&self.exe)
            .args([
                "load",
                "--kind",
                kind.name(),
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args([
                "--seconds",
                &seconds.to_string(),
                "--warmup",
                &warmup.to_string(),
            ])
            .args(["--targets", &targets.join(",")])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped());
        if mode == Mode::McsSocklb {
            let procs = std::ffi::CString::new(
                self.cgroup
                    .0
                    .join("cgroup.procs")
                    .as_os_str()
                    .as_encoded_bytes(),
            )
            .context("cgroup path")?;
            // SAFETY: open/write/close are async-signal-safe; the path was
            // allocated before fork. Writing "0" moves the writer itself.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let cpu_before = self.agents_cpu_seconds();
        let started = Instant::now();
        let output = cmd.output().context("run mcs-bench load")?;
        let agents_cpu = self.agents_cpu_seconds() - cpu_before;
        let wall = started.elapsed().as_secs_f64();
        ensure!(
            output.status.success(),
            "load ({} {}) failed: {}",
            mode.name(),
            kind.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let mut result: LoadResult = serde_json::from_slice(&output.stdout).with_context(|| {
            format!("load output {:?}", String::from_utf8_lossy(&output.stdout))
        })?;
        result.agents_cpu_pct = 100.0 * agents_cpu / wall.max(f64::EPSILON);
        Ok(result)
    }

    /// User and system CPU time of both agents so far, in seconds: whatever
    /// they do while a mode's load runs (conntrack collection, metrics,
    /// watches) competes with the client and server for the two CPUs.
    fn agents_cpu_seconds(&self) -> f64 {
        [self.agent.as_ref(), self.agent_tc.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(Agent::pid)
            .filter_map(|pid| process_cpu_seconds(pid).ok())
            .sum()
    }

    pub(super) fn iptables_restore(&self, rules: &str) -> Result<f64> {
        let path = self.manifest_dir.path().join(".iptables.rules");
        fs::write(&path, rules)?;
        let start = Instant::now();
        netns::run(
            self.lb(Mode::Iptables)
                .command("iptables-restore")?
                .stdin(fs::File::open(&path)?),
        )
        .context("iptables-restore")?;
        Ok(start.elapsed().as_secs_f64())
    }

    pub(super) fn nft(&self, script: &str) -> Result<()> {
        let path = self.manifest_dir.path().join(".nft.rules");
        fs::write(&path, script)?;
        netns::run(self.lb(Mode::Nftables).command("nft")?.arg("-f").arg(&path))
            .context("nft -f")?;
        Ok(())
    }
}

/// `utime + stime` of process `pid` (all its threads), in seconds.
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it don't.
    let after_name = stat.rsplit_once(')').context("no ')' in /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|i| {
            fields
                .get(*i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / per_second.max(1) as f64)
}
