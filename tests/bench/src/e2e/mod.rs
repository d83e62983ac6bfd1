//! Part 2: end to end over veth, client → ClusterSetIP → backends, many ways
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
//!   built incrementally in chunks;
//! * `direct-v6`, `mcs-tc-v6`, `mcs-xdp-v6` — direct, mcs-tc and mcs-xdp
//!   over IPv6 (ULA, no DAD) on the same veths, namespaces and agents: the
//!   measured service is dual-stack (an IPv6 ClusterSetIP over an IPv6
//!   EndpointSlice of the same backends).
//!
//! Load: `mcs-bench load` in the client namespace on CPU 0; the server on
//! CPU 1. Every repetition runs every mode once per kind of load, in an
//! order that rotates by repetition.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mcs_tests::netns;
use serde::{Deserialize, Serialize};

use crate::{
    load::{Kind, LoadResult},
    perpacket::progress,
    rules::{self, ServiceSet},
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
    /// Direct to the backends' IPv6 addresses, in direct's namespaces.
    DirectV6,
    /// The IPv6 ClusterSetIP through mcs-tc's agent and namespaces.
    McsTcV6,
    /// The IPv6 ClusterSetIP through mcs-xdp's agent and namespaces.
    McsXdpV6,
}

impl Mode {
    /// IPv4 modes first: their positions are the namespaces' indices.
    pub const ALL: [Mode; 13] = [
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
        Mode::DirectV6,
        Mode::McsTcV6,
        Mode::McsXdpV6,
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
            Mode::DirectV6 => "direct-v6",
            Mode::McsTcV6 => "mcs-tc-v6",
            Mode::McsXdpV6 => "mcs-xdp-v6",
        }
    }

    /// The IPv4 mode whose namespaces (and agent) an IPv6 mode shares:
    /// both families on the same veths, so the same hooks see both.
    pub fn ipv4(self) -> Mode {
        match self {
            Mode::DirectV6 => Mode::Direct,
            Mode::McsTcV6 => Mode::McsTc,
            Mode::McsXdpV6 => Mode::McsXdp,
            other => other,
        }
    }

    pub fn is_ipv6(self) -> bool {
        self.ipv4() != self
    }

    /// The direct path of the mode's family: what its ratios compare to.
    pub fn direct(self) -> Mode {
        if self.is_ipv6() {
            Mode::DirectV6
        } else {
            Mode::Direct
        }
    }

    /// Position in [`Mode::ALL`]: the mode's results slot (its IPv4 mode's
    /// position: its namespaces and subnets).
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

mod attach;
mod lab;
mod topology;

use lab::Lab;
use topology::backends;

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
        lab.wait_for_agent(
            (set.mcs_frontends(), rules::mcs_frontends_v6(&set)),
            Duration::from_secs(600),
        )?;
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
        "direct-v6, mcs-tc-v6 and mcs-xdp-v6 run over IPv6 (ULA fd00::/8, no DAD) on the veths, namespaces and agents of direct, mcs-tc and mcs-xdp: the measured service is dual-stack (IPv6 ClusterSetIP fd00:96::10 over an addressType IPv6 EndpointSlice of the same 10 backends, listening on both families); the × direct columns of an IPv6 mode compare it to direct-v6.".to_owned(),
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
