//! The lab's namespaces, veths, addresses and routes, and its server.

use std::{fs, net::Ipv4Addr, path::Path, process::Stdio};

use anyhow::{Context as _, Result};
use mcs_tests::netns::{self, Netns};

use super::{
    Mode,
    attach::{attach_tc, attach_xdp_pass},
    lab::{Cgroup, ChildGuard, Lab, cpus},
};
use crate::rules::{HTTP_TARGET_PORT, UDP_TARGET_PORT};

/// The node (LB) namespace's veths towards its client and the backends.
pub(super) const TO_CLIENT: &str = "to-client";
pub(super) const TO_BACKEND: &str = "to-backend";

pub(super) fn backends() -> Vec<Ipv4Addr> {
    (10..20).map(|i| Ipv4Addr::new(10, 101, 1, i)).collect()
}

impl Lab {
    pub(super) fn build(exe: &Path) -> Result<Self> {
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
}

pub(super) fn sysctls(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    ns.sysctl("net.core.somaxconn", "4096")?;
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    Ok(())
}
