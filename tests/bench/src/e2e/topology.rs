//! The lab's namespaces, veths, addresses and routes, and its server.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Stdio,
};

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

/// The backends' IPv6 addresses (ULA, beside the IPv4 ones).
pub(super) fn backends_v6() -> Vec<Ipv6Addr> {
    (0x10..0x1a)
        .map(|i| Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, i))
        .collect()
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
        for addr in backends_v6() {
            backend.ip(&["-6", "addr", "add", &format!("{addr}/128"), "dev", "lo"])?;
        }
        let mut clients = Vec::new();
        let mut lbs = Vec::new();
        for mode in Mode::ALL.into_iter().filter(|m| !m.is_ipv6()) {
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
            wire_v6(&client, &lb, &backend, i, &backend_side)?;
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
                &format!("0.0.0.0:{HTTP_TARGET_PORT},[::]:{HTTP_TARGET_PORT}"),
                "--udp",
                &backends()
                    .iter()
                    .map(|b| format!("{b}:{UDP_TARGET_PORT}"))
                    .chain(
                        backends_v6()
                            .iter()
                            .map(|b| format!("[{b}]:{UDP_TARGET_PORT}")),
                    )
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

/// Mode `i`'s IPv6 addresses and routes on the veths IPv4 uses: client
/// fd00:200:i::2, node fd00:200:i::1 / fd00:201:i::1, backend side
/// fd00:201:i::2 (`nodad`: usable at once).
fn wire_v6(client: &Netns, lb: &Netns, backend: &Netns, i: u8, backend_side: &str) -> Result<()> {
    let addr = |net: u16, host: u16| Ipv6Addr::new(0xfd00, net, u16::from(i), 0, 0, 0, 0, host);
    let add = |ns: &Netns, a: Ipv6Addr, dev: &str| {
        ns.ip(&["-6", "addr", "add", &format!("{a}/64"), "dev", dev, "nodad"])
    };
    add(lb, addr(0x200, 1), TO_CLIENT)?;
    add(lb, addr(0x201, 1), TO_BACKEND)?;
    add(client, addr(0x200, 2), "eth0")?;
    add(backend, addr(0x201, 2), backend_side)?;
    lb.ip(&[
        "-6",
        "route",
        "add",
        "fd00:101:1::/64",
        "via",
        &addr(0x201, 2).to_string(),
    ])?;
    client.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &addr(0x200, 1).to_string(),
    ])?;
    backend.ip(&[
        "-6",
        "route",
        "add",
        &format!("{}/64", addr(0x200, 0)),
        "via",
        &addr(0x201, 1).to_string(),
    ])?;
    Ok(())
}

pub(super) fn sysctls(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "0")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // No duplicate address detection (addresses usable at once) and no
    // router solicitations/autoconfiguration on the lab's links.
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_ra", "0")?;
    ns.sysctl("net.ipv6.conf.default.router_solicitations", "0")?;
    ns.sysctl("net.core.somaxconn", "4096")?;
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    Ok(())
}
