//! Privilege tier: the capabilities the DaemonSet grants are the ones the
//! agent needs — it runs as an unprivileged user with exactly BPF,
//! NET_ADMIN and PERFMON (XDP on one interface, tc on a discovered pod
//! interface), and fails without PERFMON (the verifier forbids the packet
//! programs' packet-pointer arithmetic to processes without it).
//!
//! Needs root to drop to those capabilities; run by `cargo xtask test`.

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use mcs_tests::netns::{Netns, unique_prefix};

const MANIFEST: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
metadata: {name: web, namespace: demo}\nspec: {ips: [\"10.96.100.10\"], ports: [{name: http, port: 80}]}\n";

fn agent_bin() -> String {
    std::env::var("MCS_AGENT_BIN")
        .unwrap_or_else(|_| format!("{}/../target/debug/mcs-agent", env!("CARGO_MANIFEST_DIR")))
}

/// Runs the agent as nobody with only `caps` in the netns; returns whether
/// it became ready (attached XDP to `v0` and tc to the pod interface `v1`)
/// and its log.
fn run_with(caps: &str, tag: &str) -> (bool, String) {
    mcs_tests::require_root();
    let netns = Netns::create(&format!("{}{tag}", unique_prefix())).expect("netns");
    netns
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        .expect("veth");
    netns.ip(&["link", "set", "v0", "up"]).expect("up");
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("m.yaml");
    fs::write(&manifest, MANIFEST).expect("manifest");
    // nobody must be able to read it.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status();
    let bpffs = format!("/sys/fs/bpf/mcs-test-caps-{tag}-{}", std::process::id());
    let set = format!("-all,{caps}");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(agent_bin())
        .args([
            "run",
            "--interface",
            "v0",
            "--pod-interfaces",
            "v1",
            "--detach-on-exit",
            "--bpffs-dir",
            &bpffs,
        ])
        .arg(format!("--source=file:{}", manifest.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attached = false;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        let link = netns
            .ip(&["-d", "link", "show", "dev", "v0"])
            .unwrap_or_default();
        let tc = std::path::Path::new(&bpffs).join("tc/v1/egress");
        if link.contains("prog/xdp") && tc.exists() {
            attached = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().expect("agent output");
    let _ = Command::new(agent_bin())
        .args(["cleanup", "--bpffs-dir", &bpffs])
        .output();
    (
        attached,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn bpf_net_admin_and_perfmon_are_enough() {
    let (attached, log) = run_with("+bpf,+net_admin,+perfmon", "ok");
    assert!(
        attached,
        "agent with BPF, NET_ADMIN, PERFMON did not attach:\n{log}"
    );
    // The clock probe (a test run) needs nothing more either.
    assert!(
        log.contains("datapath clock calibrated"),
        "agent with BPF, NET_ADMIN, PERFMON did not calibrate its clock:\n{log}"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn perfmon_is_required() {
    let (attached, log) = run_with("+bpf,+net_admin", "noperfmon");
    assert!(
        !attached,
        "agent attached without PERFMON: the DaemonSet could drop it"
    );
    assert!(
        log.contains("prohibited for !root"),
        "unexpected failure:\n{log}"
    );
}
