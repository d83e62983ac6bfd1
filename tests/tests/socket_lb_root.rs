//! Socket LB as the DaemonSet runs it: attached at the node's cgroup v2
//! root found among the mounts (no `--cgroup`), so a process in a cgroup
//! created after the agent started is covered; and `--socket-lb-host-only`,
//! which leaves pods' sockets to the per-packet path (tc).
//!
//! Attaching at the real root serves every process of the machine: the
//! manifest uses a ClusterSetIP of its own (no other test or program
//! connects to it). One test per binary: the test process moves between
//! cgroups. Needs root; run by `cargo xtask test`.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::Command,
};

use mcs_agent::dump::DumpReport;
use mcs_tests::{
    client::HttpConn,
    manifest::Protocol,
    scenario::{self, APPLY_TIMEOUT, BACKENDS, ClusterSet, HTTP_PORT, Hooks, VIP},
};

/// This test's own ClusterSetIP.
const ROOT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 177, 10);

/// A cgroup created under the root, removed on drop; the test process
/// sits in it while [`Joined`] lives.
struct LateCgroup {
    path: PathBuf,
}

struct Joined {
    original: PathBuf,
}

impl LateCgroup {
    fn create(root: &std::path::Path) -> Self {
        let path = root.join(format!("mcs-test-late-{}", std::process::id()));
        fs::create_dir_all(&path).expect("create a cgroup after the agent started");
        Self { path }
    }

    fn join(&self, root: &std::path::Path) -> Joined {
        let own = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("cgroup v2 membership")
            .trim_start_matches('/')
            .to_owned();
        fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("join the new cgroup");
        Joined {
            original: root.join(relative),
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let _ = fs::write(
            self.original.join("cgroup.procs"),
            std::process::id().to_string(),
        );
    }
}

impl Drop for LateCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

fn dump(bpffs_dir: &std::path::Path) -> DumpReport {
    let output = Command::new(mcs_tests::agent::binary())
        .args(["dump", "--output", "json", "--bpffs-dir"])
        .arg(bpffs_dir)
        .output()
        .expect("run mcs-agent dump");
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("dump JSON")
}

/// (socket-LB new flows, packet-path new flows) of the HTTP frontend.
fn http_flows(bpffs_dir: &std::path::Path) -> (u64, u64) {
    let report = dump(bpffs_dir);
    let frontend = report
        .services
        .iter()
        .find(|s| s.vip == ROOT_VIP && s.port == HTTP_PORT)
        .expect("HTTP frontend");
    (frontend.socket_stats.new_flows, frontend.stats.new_flows)
}

/// `n` connections from the client pod to the ClusterSetIP, each seeing it
/// as peer.
fn connect(set: &ClusterSet, n: usize) {
    let target = SocketAddr::V4(SocketAddrV4::new(ROOT_VIP, HTTP_PORT));
    let client = set.client().expect("client");
    for i in 0..n {
        let mut conn =
            HttpConn::connect(client, target).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert_eq!(conn.peer(), target, "getpeername shows the ClusterSetIP");
        conn.get().unwrap_or_else(|e| panic!("request {i}: {e:#}"));
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn socket_lb_at_the_node_root_covers_cgroups_created_later() {
    mcs_tests::require_root();
    let root = mcs_agent::dataplane::cgroup::node_cgroup_root().expect("the cgroup v2 root");
    let yaml = scenario::manifest(&scenario::all_backends_ready())
        .to_yaml()
        .replace(&VIP.to_string(), &ROOT_VIP.to_string());
    let mut set = ClusterSet::create(&yaml, &|_| {}).expect("building the ClusterSet");
    set.use_vip(ROOT_VIP);
    set.use_hooks(Hooks::Tc);

    // Whole node: processes of a cgroup made after the start are served by
    // socket LB (the packet path sees backend addresses only).
    set.start_agent_with(&["--socket-lb"]).expect("agent");
    let agent = set.agent().expect("agent");
    agent
        .wait_until(APPLY_TIMEOUT, |d| {
            d.service(ROOT_VIP, HTTP_PORT, Protocol::Tcp)
                .is_some_and(|s| s.backends.len() == BACKENDS.len())
        })
        .expect("backends programmed");
    let log = agent.log();
    assert!(
        log.contains("socket LB attached") && log.contains(&root.display().to_string()),
        "attached at {}:\n{log}",
        root.display()
    );
    let bpffs = agent.bpffs_dir().to_path_buf();
    let late = LateCgroup::create(&root);
    let joined = late.join(&root);
    let before = http_flows(&bpffs);
    connect(&set, 20);
    let after = http_flows(&bpffs);
    assert_eq!(after.0, before.0 + 20, "socket LB translated every connect");
    assert_eq!(after.1, before.1, "the packet path translated nothing");
    drop(joined);

    // Host namespace only: the client pod's sockets are left alone and tc
    // balances its packets instead.
    let stopped = set.stop_agent_keeping_dataplane().expect("stop");
    set.adopt_agent(stopped.dataplane, &["--socket-lb", "--socket-lb-host-only"])
        .expect("host-only agent");
    let joined = late.join(&root);
    let before = http_flows(&bpffs);
    connect(&set, 20);
    let after = http_flows(&bpffs);
    assert_eq!(after.0, before.0, "no pod socket translated");
    assert_eq!(
        after.1,
        before.1 + 20,
        "tc translated the pod's connections"
    );
    drop(joined);
    drop(set);
    drop(late);
}
