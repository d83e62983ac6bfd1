//! Part 2: end to end over veth, client → ClusterSetIP → backends, five ways
//! side by side.
//!
//! ```text
//!  client ns c<i> (10.200.i.2) ─veth─ LB/node ns l<i> ─veth─ backend ns
//!                                    (mode i's dataplane)    (10.101.1.10-19,
//!                                                              one server)
//! ```
//!
//! One client and one LB namespace per mode, all sharing the backend
//! namespace, so every mode's rules live only in its own node namespace
//! (a loaded iptables ruleset would otherwise tax the XDP mode's packets)
//! and every mode's clients have their own addresses (no TIME_WAIT
//! collisions between modes at the backend). Modes:
//!
//! * `direct`   — connect to the backends themselves (the floor; plain routing);
//! * `direct-1` — connect to one backend only: the load shape of a
//!   ClusterSetIP seen from the client (one destination address for all its
//!   ephemeral ports) without any dataplane;
//! * `direct+xdp-pass` — the same through an XDP program that only passes,
//!   on the node's two veths (what attaching any XDP program there costs);
//! * `direct+tc-pass` — the same through a tc program that only passes, on
//!   both directions of the client's veth (what attaching any tc program
//!   where mcs-tc attaches costs);
//! * `direct+tc-write` — the same through a tc program that makes the helper
//!   calls of mcs's tc rewrite with unchanged values (what rewriting packets
//!   there costs before any lookup);
//! * `mcs-xdp`  — the agent binary's XDP program on the node's two veths;
//! * `mcs-tc`   — an agent as the DaemonSet runs it: tc on the pod
//!   interface it discovers (the client's veth), nothing on the uplink;
//! * `mcs-socklb` — the same agent's cgroup socket LB, the client process in
//!   the served cgroup (plain routing in its node namespace);
//! * `iptables` — kube-proxy-shaped `iptables-restore` ruleset;
//! * `nftables` — kube-proxy-shaped nftables ruleset (verdict map + numgen),
//!   built incrementally in chunks.
//!
//! Load: `mcs-bench load` in the client namespace on CPU 0; the server on
//! CPU 1. Every repetition runs every mode once per kind of load, in an
//! order that rotates by repetition.

use std::{
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mcs_agent::dataplane::PinnedMaps;
use mcs_tests::{
    agent::{Agent, AgentConfig},
    netns::{self, Netns},
};
use serde::{Deserialize, Serialize};

use crate::{
    load::{Kind, LoadResult},
    perpacket::progress,
    rules::{self, HTTP_PORT, HTTP_TARGET_PORT, ServiceSet, TARGET_VIP, UDP_PORT, UDP_TARGET_PORT},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Direct,
    /// Direct to one backend address only: the client's side of a
    /// ClusterSetIP (every connection to one destination) without mcs.
    DirectOne,
    /// Direct, through an XDP program that only returns XDP_PASS on the
    /// node's two veths: the floor of any XDP program attached there.
    DirectXdpPass,
    /// Direct, through a tc program that only passes on both directions of
    /// the client's veth: the floor of any tc program attached there.
    DirectTcPass,
    /// Direct, through a tc program that rewrites every packet with its own
    /// values through mcs's checksum helpers: the floor of any rewriting tc
    /// program there.
    DirectTcWrite,
    McsXdp,
    McsTc,
    McsSocklb,
    Iptables,
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 10] = [
        Mode::Direct,
        Mode::DirectOne,
        Mode::DirectXdpPass,
        Mode::DirectTcPass,
        Mode::DirectTcWrite,
        Mode::McsXdp,
        Mode::McsTc,
        Mode::McsSocklb,
        Mode::Iptables,
        Mode::Nftables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::DirectOne => "direct-1",
            Mode::DirectXdpPass => "direct+xdp-pass",
            Mode::DirectTcPass => "direct+tc-pass",
            Mode::DirectTcWrite => "direct+tc-write",
            Mode::McsXdp => "mcs-xdp",
            Mode::McsTc => "mcs-tc",
            Mode::McsSocklb => "mcs-socklb",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }

    /// Position in [`Mode::ALL`]: the mode's namespaces and subnets.
    fn index(self) -> u8 {
        let position = Mode::ALL.iter().position(|m| *m == self).unwrap_or(0);
        u8::try_from(position).unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub scales: Vec<usize>,
    pub endpoints: usize,
    pub reps: usize,
    pub close_seconds: f64,
    pub keepalive_seconds: f64,
    pub udp_seconds: f64,
    pub warmup: f64,
    pub concurrency: usize,
    pub nft_chunk: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: Option<Mode>,
    pub close: Vec<LoadResult>,
    pub keepalive: Vec<LoadResult>,
    pub udp: Vec<LoadResult>,
}

impl ModeResult {
    pub fn runs(&self, kind: Kind) -> &[LoadResult] {
        match kind {
            Kind::Close => &self.close,
            Kind::Keepalive => &self.keepalive,
            Kind::Udp => &self.udp,
        }
    }

    pub fn values(&self, kind: Kind, f: impl Fn(&LoadResult) -> f64) -> Vec<f64> {
        self.runs(kind).iter().map(f).collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub services: usize,
    /// `iptables-restore` of the whole ruleset at this scale (s).
    pub iptables_restore_s: f64,
    /// `nft -f` of the services added for this scale, in chunks (s).
    pub nft_add_s: f64,
    pub nft_added_services: usize,
    /// Manifest rename → the agent's maps hold every frontend (s; includes
    /// the file source's 100 ms debounce and YAML parsing).
    pub agent_sync_s: f64,
    pub modes: Vec<ModeResult>,
}

impl ScaleResult {
    pub fn mode(&self, mode: Mode) -> Option<&ModeResult> {
        self.modes.iter().find(|m| m.mode == Some(mode))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct E2e {
    pub endpoints: usize,
    pub reps: usize,
    pub concurrency: usize,
    pub close_seconds: f64,
    pub keepalive_seconds: f64,
    pub udp_seconds: f64,
    pub iptables_version: String,
    pub nft_version: String,
    pub scales: Vec<ScaleResult>,
    pub notes: Vec<String>,
}

/// The node (LB) namespace's veths towards its client and the backends.
const TO_CLIENT: &str = "to-client";
const TO_BACKEND: &str = "to-backend";

fn backends() -> Vec<Ipv4Addr> {
    (10..20).map(|i| Ipv4Addr::new(10, 101, 1, i)).collect()
}

/// A child process killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory, removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// The namespaces, servers and the agent; torn down in field order.
struct Lab {
    agent: Option<Agent>,
    /// The agent of mode mcs-tc, in its own node namespace.
    agent_tc: Option<Agent>,
    /// The object whose `mcs_bench_pass` is attached in the direct+xdp-pass
    /// node namespace (dropping it detaches).
    _xdp_pass: aya::Ebpf,
    /// The object whose `mcs_bench_tc_pass` is attached in the
    /// direct+tc-pass node namespace.
    _tc_pass: aya::Ebpf,
    /// The object whose `mcs_bench_tc_write` is attached in the
    /// direct+tc-write node namespace.
    _tc_write: aya::Ebpf,
    _server: ChildGuard,
    cgroup: Cgroup,
    manifest_dir: tempfile::TempDir,
    clients: Vec<Netns>,
    lbs: Vec<Netns>,
    _backend: Netns,
    exe: PathBuf,
    cpus: usize,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl Lab {
    fn build(exe: &Path) -> Result<Self> {
        netns::reap_stale()?;
        let prefix = netns::unique_prefix();
        let backend = Netns::create(&format!("{prefix}-be"))?;
        sysctls(&backend)?;
        for addr in backends() {
            backend.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        }
        let mut clients = Vec::new();
        let mut lbs = Vec::new();
        for mode in Mode::ALL {
            let i = mode.index();
            let client = Netns::create(&format!("{prefix}-c{i}"))?;
            let lb = Netns::create(&format!("{prefix}-l{i}"))?;
            sysctls(&client)?;
            sysctls(&lb)?;
            client.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            lb.ip(&[
                "link",
                "add",
                TO_CLIENT,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                client.name(),
            ])?;
            let backend_side = format!("l{i}");
            lb.ip(&[
                "link",
                "add",
                TO_BACKEND,
                "type",
                "veth",
                "peer",
                "name",
                &backend_side,
                "netns",
                backend.name(),
            ])?;
            lb.ip(&["addr", "add", &format!("10.200.{i}.1/24"), "dev", TO_CLIENT])?;
            lb.ip(&[
                "addr",
                "add",
                &format!("10.201.{i}.1/24"),
                "dev",
                TO_BACKEND,
            ])?;
            lb.ip(&["link", "set", TO_CLIENT, "up"])?;
            lb.ip(&["link", "set", TO_BACKEND, "up"])?;
            lb.ip(&[
                "route",
                "add",
                "10.101.1.0/24",
                "via",
                &format!("10.201.{i}.2"),
            ])?;
            client.ip(&["addr", "add", &format!("10.200.{i}.2/24"), "dev", "eth0"])?;
            client.ip(&["link", "set", "eth0", "up"])?;
            client.ip(&["route", "add", "default", "via", &format!("10.200.{i}.1")])?;
            backend.ip(&[
                "addr",
                "add",
                &format!("10.201.{i}.2/24"),
                "dev",
                &backend_side,
            ])?;
            backend.ip(&["link", "set", &backend_side, "up"])?;
            backend.ip(&[
                "route",
                "add",
                &format!("10.200.{i}.0/24"),
                "via",
                &format!("10.201.{i}.1"),
            ])?;
            clients.push(client);
            lbs.push(lb);
        }
        let xdp_pass = attach_xdp_pass(&lbs[usize::from(Mode::DirectXdpPass.index())])?;
        let tc_pass = attach_tc(
            &lbs[usize::from(Mode::DirectTcPass.index())],
            crate::perpacket::BENCH_TC_PASS,
        )?;
        let tc_write = attach_tc(
            &lbs[usize::from(Mode::DirectTcWrite.index())],
            crate::perpacket::BENCH_TC_WRITE,
        )?;
        let cpus = cpus();
        let server_cpu = if cpus > 1 { "1" } else { "0" };
        let mut server = netns::command_in(backend.name(), "taskset")?;
        server
            .args(["-c", server_cpu])
            .arg(exe)
            .args([
                "serve",
                "--http",
                &format!("0.0.0.0:{HTTP_TARGET_PORT}"),
                "--udp",
                &backends()
                    .iter()
                    .map(|b| format!("{b}:{UDP_TARGET_PORT}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let server = ChildGuard(server.spawn().context("start the backend server")?);
        let root = mcs_agent::dataplane::cgroup::node_cgroup_root()
            .context("no cgroup v2 root (socket LB needs one)")?;
        let cgroup = Cgroup(root.join(format!("mcs-bench-{}", std::process::id())));
        fs::create_dir_all(&cgroup.0)
            .with_context(|| format!("create cgroup {}", cgroup.0.display()))?;
        let manifest_dir = tempfile::Builder::new()
            .prefix("mcs-bench-manifest-")
            .tempdir()?;
        Ok(Self {
            agent: None,
            agent_tc: None,
            _xdp_pass: xdp_pass,
            _tc_pass: tc_pass,
            _tc_write: tc_write,
            _server: server,
            cgroup,
            manifest_dir,
            clients,
            lbs,
            _backend: backend,
            exe: exe.to_path_buf(),
            cpus,
        })
    }

    fn lb(&self, mode: Mode) -> &Netns {
        &self.lbs[usize::from(mode.index())]
    }

    fn client(&self, mode: Mode) -> &Netns {
        &self.clients[usize::from(mode.index())]
    }

    fn manifest_path(&self) -> PathBuf {
        self.manifest_dir.path().join("services.yaml")
    }

    /// Writes the manifest atomically (the agent ignores dot files).
    fn write_manifest(&self, set: &ServiceSet) -> Result<()> {
        let tmp = self.manifest_dir.path().join(".services.yaml.tmp");
        fs::write(&tmp, rules::manifest(set)).context("write manifest")?;
        fs::rename(&tmp, self.manifest_path()).context("rename manifest")
    }

    fn start_agent(&mut self) -> Result<()> {
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
    fn wait_for_agent(&mut self, frontends: usize, timeout: Duration) -> Result<()> {
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

/// Waits until `agent`'s pinned maps hold `frontends` frontends.
fn wait_for_frontends(
    agent: &mut Agent,
    frontends: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        agent.ensure_running()?;
        let count = PinnedMaps::open(agent.bpffs_dir())
            .ok()
            .map(|maps| maps.0.services.iter().count());
        if count == Some(frontends) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the agent's maps hold {count:?} frontends after {timeout:?}, expected {frontends}; its log:\n{}",
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
            _ => vec![SocketAddr::V4(SocketAddrV4::new(TARGET_VIP, vip_port))],
        }
    }

    /// Runs `mcs-bench load` in the mode's client namespace on CPU 0 (in
    /// the socket-LB cgroup for that mode).
    fn load(
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

    fn iptables_restore(&self, rules: &str) -> Result<f64> {
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

    fn nft(&self, script: &str) -> Result<()> {
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

/// Attaches the bench's XDP_PASS program (native mode, as the agent does on
/// veth) to both veths of `lb`.
fn attach_xdp_pass(lb: &Netns) -> Result<aya::Ebpf> {
    let mut ebpf = aya::Ebpf::load(&crate::perpacket::calibration_object()?)
        .context("load the calibration object")?;
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(crate::perpacket::BENCH_PASS)
        .context("mcs_bench_pass missing from the object")?
        .try_into()
        .context("mcs_bench_pass is not XDP")?;
    program.load().context("load mcs_bench_pass")?;
    for iface in [TO_CLIENT, TO_BACKEND] {
        // The interface name is resolved in the calling thread's namespace.
        lb.enter(|| program.attach(iface, aya::programs::XdpMode::Driver))?
            .with_context(|| format!("attach XDP_PASS to {iface}"))?;
    }
    Ok(ebpf)
}

/// Attaches the bench's tc program `name` to both directions of the
/// client's veth in `lb`, where mcs-tc attaches its programs.
fn attach_tc(lb: &Netns, name: &str) -> Result<aya::Ebpf> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut ebpf = aya::Ebpf::load(&crate::perpacket::calibration_object()?)
        .context("load the calibration object")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not a tc program"))?;
    program.load().with_context(|| format!("load {name}"))?;
    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
        lb.enter(|| program.attach(TO_CLIENT, direction))?
            .with_context(|| format!("attach {name} ({direction:?})"))?;
    }
    Ok(ebpf)
}

fn sysctls(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    ns.sysctl("net.core.somaxconn", "4096")?;
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    Ok(())
}

fn tool_version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}

pub fn run(config: &Config) -> Result<E2e> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut lab = Lab::build(&exe)?;
    // Scale 0 state: nothing programmed. The agent starts on the first
    // scale's manifest.
    let mut nft_services = 0usize;
    let mut scales = Vec::new();
    for (scale_index, &services) in config.scales.iter().enumerate() {
        progress(&format!(
            "  e2e: programming {services} services × {} endpoints",
            config.endpoints
        ));
        let set = ServiceSet::new(services, config.endpoints, &backends());
        // mcs: the agent follows its manifest.
        let start = Instant::now();
        lab.write_manifest(&set)?;
        if lab.agent.is_none() {
            lab.start_agent()?;
        }
        lab.wait_for_agent(set.mcs_frontends(), Duration::from_secs(600))?;
        let agent_sync_s = start.elapsed().as_secs_f64();
        // iptables: the whole ruleset, as kube-proxy restores it.
        let iptables_restore_s = lab.iptables_restore(&rules::iptables_restore(&set))?;
        // nftables: the base once, then the new services in chunks.
        let nft_start = Instant::now();
        if nft_services == 0 {
            lab.nft(&rules::nft_base())?;
            lab.nft(&rules::nft_services(&set.services[set.len() - 1..]))?; // the target
            nft_services = 1;
        }
        let others = &set.services[..set.len() - 1];
        let added = others.len().saturating_sub(nft_services - 1);
        for (n, chunk) in others[nft_services - 1..]
            .chunks(config.nft_chunk.max(1))
            .enumerate()
        {
            lab.nft(&rules::nft_services(chunk))?;
            if added > config.nft_chunk && n % 5 == 4 {
                progress(&format!(
                    "    nft: {} of {added} services added ({:.0}s)",
                    (n + 1) * config.nft_chunk,
                    nft_start.elapsed().as_secs_f64()
                ));
            }
        }
        nft_services = set.len();
        let nft_add_s = nft_start.elapsed().as_secs_f64();
        for mode in [Mode::Iptables, Mode::Nftables] {
            // Old flows' entries would only fill the table.
            let _ = netns::run(
                lab.lb(mode)
                    .command("conntrack")?
                    .arg("-F")
                    .stderr(Stdio::null()),
            );
        }
        progress(&format!(
            "  e2e: {services} services programmed (agent {agent_sync_s:.1}s, iptables-restore {iptables_restore_s:.1}s, nft +{added} in {nft_add_s:.1}s); checking every mode"
        ));
        for mode in Mode::ALL {
            for kind in [Kind::Close, Kind::Udp] {
                let check = lab.load(mode, kind, 2, 0.3, 0.0)?;
                ensure!(
                    check.ok > 0 && check.errors < check.ok,
                    "{} {} does not work at {services} services: {check:?}",
                    mode.name(),
                    kind.name()
                );
            }
        }
        let mut results: Vec<ModeResult> = Mode::ALL
            .iter()
            .map(|m| ModeResult {
                mode: Some(*m),
                ..ModeResult::default()
            })
            .collect();
        let started = Instant::now();
        for rep in 0..config.reps {
            for (kind, seconds) in [
                (Kind::Close, config.close_seconds),
                (Kind::Keepalive, config.keepalive_seconds),
                (Kind::Udp, config.udp_seconds),
            ] {
                for k in 0..Mode::ALL.len() {
                    let mode = Mode::ALL[(k + rep + scale_index) % Mode::ALL.len()];
                    let result =
                        lab.load(mode, kind, config.concurrency, seconds, config.warmup)?;
                    let slot = &mut results[usize::from(mode.index())];
                    match kind {
                        Kind::Close => slot.close.push(result),
                        Kind::Keepalive => slot.keepalive.push(result),
                        Kind::Udp => slot.udp.push(result),
                    }
                }
            }
            let direct = &results[0].close;
            let line: Vec<String> = results
                .iter()
                .filter_map(|r| {
                    let last = r.close.last()?;
                    Some(format!(
                        "{} {:.0}/s",
                        r.mode.map_or("?", Mode::name),
                        last.rate
                    ))
                })
                .collect();
            progress(&format!(
                "  e2e: {services} services, rep {}/{} ({:.0}s; direct runs {}): new conn/s {}",
                rep + 1,
                config.reps,
                started.elapsed().as_secs_f64(),
                direct.len(),
                line.join(", ")
            ));
        }
        scales.push(ScaleResult {
            services,
            iptables_restore_s,
            nft_add_s,
            nft_added_services: added + usize::from(scale_index == 0),
            agent_sync_s,
            modes: results,
        });
    }
    let _ = std::io::stdout().flush();
    let notes = vec![
        format!(
            "One client and one node (LB) namespace per mode, one backend namespace with 10 endpoint addresses and a single-threaded HTTP/UDP server on CPU {}; load generator on CPU 0, {} concurrent workers.",
            if lab.cpus > 1 { 1 } else { 0 },
            config.concurrency
        ),
        "close: connect, GET with Connection: close, read to EOF (the server closes first), close; rate = completed connections/s; latency = connect to EOF; handshake = connect() time.".to_owned(),
        "The measured ClusterSetIP 10.96.0.10 is the same at every scale and the last service in KUBE-SERVICES.".to_owned(),
        "direct+xdp-pass: direct, through the bench's XDP_PASS program attached in native mode to the node's two veths (as the agent attaches mcs): the same-run floor of any XDP program on veth.".to_owned(),
        "mcs-xdp and mcs-socklb are one agent process (--socket-lb --cgroup): XDP on its node namespace's veths, socket LB for the cgroup the socklb client runs in.".to_owned(),
        "mcs-tc is a second agent as the DaemonSet runs it (--pod-interfaces to-client, no --interface): tc ingress and egress on the client's veth it discovered, nothing on the backend side; direct+tc-pass attaches a pass-only tc program at the same two points, direct+tc-write one that makes the helper calls of mcs's tc rewrite (two L4 checksum updates, an IPv4 header checksum update, two stores) with each packet's own values.".to_owned(),
        "direct-1 connects to the first backend only, with the same workers: every connection of the client goes to one address, as to a ClusterSetIP (the kernel picks the client's ephemeral ports per destination, and a busy single destination reuses them sooner), with no dataplane in the way.".to_owned(),
        "agents' CPU %: CPU time both agent processes used while the mode's close runs ran (all threads, user and system, from /proc), in % of one CPU, median over repetitions; both agents run during every mode, so what a mode's own traffic makes them do (conntrack collection of its flows) shows as the difference to the direct modes.".to_owned(),
    ];
    drop(lab);
    Ok(E2e {
        endpoints: config.endpoints,
        reps: config.reps,
        concurrency: config.concurrency,
        close_seconds: config.close_seconds,
        keepalive_seconds: config.keepalive_seconds,
        udp_seconds: config.udp_seconds,
        iptables_version: tool_version("iptables", "--version"),
        nft_version: tool_version("nft", "--version"),
        scales,
        notes,
    })
}
