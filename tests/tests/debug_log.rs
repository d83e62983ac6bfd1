//! The `debug-log` build of the agent's object: it builds (`cargo xtask
//! test` links it into its own target directory and points
//! `MCS_DEBUG_LOG_OBJECT` at it), the verifier loads it, and its debug lines
//! reach userspace through aya-log — parse verdict, frontend, chosen backend
//! and drop reason — while the default (embedded) object logs none of them.
//! An IPv6 frame is passed untranslated with a line saying so: a
//! `debug-log` build does not translate IPv6 (with both families' paths and
//! their log lines inlined, `mcs_tc_ingress` exceeds the verifier's
//! one-million-instruction budget), the default object does.
//!
//! Needs root (CAP_BPF); run by `cargo xtask test`.

use std::{
    net::Ipv6Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, TestRun as _, TestRunOptions, Xdp},
};
use aya_log::EbpfLogger;
use mcs_agent::{
    dataplane::{EBPF_OBJECT, MapHandles, clock},
    desired,
    model::manifest,
    reconcile::Reconciler,
};
use mcs_common::{names, programs};
use mcs_tests::{
    packet::{Packet, Packet6, Proto, frag},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const CLIENT: [u8; 4] = [10, 101, 1, 2];
const VIP: [u8; 4] = [10, 96, 100, 10];

const MANIFEST: &str = r#"
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec: {ips: ["10.96.100.10"], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.101.1.10"]}]
"#;

/// The `debug-log` object: `MCS_DEBUG_LOG_OBJECT`, else where `cargo xtask
/// test` links it.
fn debug_log_object() -> Vec<u8> {
    let path = std::env::var_os("MCS_DEBUG_LOG_OBJECT").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpf-debug-log/bpfel-unknown-none/release/mcs-ebpf")
        },
        PathBuf::from,
    );
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read the debug-log object {} ({error}): `cargo xtask test` builds it; or set \
             MCS_DEBUG_LOG_OBJECT to an object built by `cargo xtask build-ebpf --debug-log`",
            path.display()
        )
    })
}

/// Collects what aya-log forwards: level and `target: message`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().expect("capture lock").push((
            record.level(),
            format!("{}: {}", record.target(), record.args()),
        ));
    }

    fn flush(&self) {}
}

impl Capture {
    /// The debug lines logged so far, emptied.
    fn take_debug(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("capture lock"))
            .into_iter()
            .filter(|(level, _)| *level == log::Level::Debug)
            .map(|(_, line)| line)
            .collect()
    }
}

/// An object loaded as the agent loads it (every program verified), its
/// maps programmed from [`MANIFEST`] by the agent's reconciler, its log
/// lines captured.
struct Loaded {
    ebpf: Ebpf,
    /// `None` when the object has no log statement at all.
    logger: Option<EbpfLogger<Capture>>,
    capture: Capture,
    _maps: MapHandles,
}

impl Loaded {
    fn new(object: &[u8]) -> Self {
        require_root();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::CONNTRACK, 1024)
            .load(object)
            .expect("load the object");
        let program: &mut Xdp = ebpf
            .program_mut(programs::XDP)
            .expect("XDP program")
            .try_into()
            .expect("an XDP program");
        program
            .load()
            .expect("the verifier accepts the XDP program");
        for name in programs::SOCKET {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .expect("socket-LB program")
                .try_into()
                .expect("a cgroup sock_addr program");
            program
                .load()
                .unwrap_or_else(|error| panic!("the verifier refused {name}: {error}"));
        }
        let capture = Capture::default();
        let logger = EbpfLogger::init_with_logger(&mut ebpf, capture.clone()).ok();
        let mut maps = MapHandles::take(&mut ebpf).expect("map handles");
        clock::calibrate(&mut ebpf, &mut maps.clock).expect("calibrate the clock");
        let (snapshot, _) = manifest::snapshot_from_yaml(MANIFEST).expect("manifest");
        let report = Reconciler::new().apply(&desired::compute(&snapshot).0, &mut maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        Self {
            ebpf,
            logger,
            capture,
            _maps: maps,
        }
    }

    /// Runs `packet` through the XDP program; returns the verdict and the
    /// debug lines it logged.
    fn run(&mut self, packet: &[u8]) -> (u32, Vec<String>) {
        let program: &Xdp = self
            .ebpf
            .program(programs::XDP)
            .expect("XDP program")
            .try_into()
            .expect("an XDP program");
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        (result.return_value, self.capture.take_debug())
    }
}

/// A bare SYN to the ClusterSetIP.
fn syn(sport: u16) -> Vec<u8> {
    Packet::tcp(CLIENT, sport, VIP, 80).payload(b"").build()
}

/// A later segment of the flow [`syn`] opened.
fn ack(sport: u16) -> Vec<u8> {
    Packet::tcp(CLIENT, sport, VIP, 80)
        .established()
        .payload(b"")
        .build()
}

/// A first fragment (more fragments follow) of a UDP datagram to the
/// ClusterSetIP: dropped, as its later fragments carry no ports.
fn fragment() -> Vec<u8> {
    Packet::udp(CLIENT, 40000, VIP, 80)
        .frags(frag::MF)
        .payload(&[0; 8])
        .build()
}

/// A SYN to an IPv6 address (no IPv6 frontend is programmed: the debug-log
/// build stops before any lookup, the default object finds none).
fn syn6() -> Vec<u8> {
    let client = Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 2);
    let vip = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0x100, 0xa);
    Packet6::new(Proto::Tcp, client, 40000, vip, 80).build()
}

fn assert_logged(lines: &[String], wanted: &str) {
    assert!(
        lines.iter().any(|line| line.contains(wanted)),
        "no debug line with {wanted:?} in {lines:#?}"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn the_debug_log_build_loads_and_logs_the_packet_path() {
    let mut loaded = Loaded::new(&debug_log_object());
    assert!(
        loaded.logger.is_some(),
        "no aya-log ring buffer in the object"
    );

    let (verdict, lines) = loaded.run(&syn(40000));
    assert_eq!(verdict, XDP_PASS, "{lines:#?}");
    // The target an operator filters on (`RUST_LOG=mcs_ebpf=debug`).
    assert!(
        lines.iter().all(|line| line.starts_with("mcs_ebpf")),
        "{lines:#?}"
    );
    assert_logged(&lines, "parse: 10.101.1.2:40000 -> 10.96.100.10:80 proto 6");
    assert_logged(&lines, ": 1 backends");
    assert_logged(&lines, ": backend 10.101.1.10:8080 (slot 0)");

    // The flow's next segment (an ACK: a SYN is balanced afresh) is a
    // conntrack hit.
    let (verdict, lines) = loaded.run(&ack(40000));
    assert_eq!(verdict, XDP_PASS, "{lines:#?}");
    assert_logged(&lines, "forward entry, rewrite to 10.101.1.10:8080");

    let (verdict, lines) = loaded.run(&fragment());
    assert_eq!(verdict, XDP_DROP, "{lines:#?}");
    assert_logged(&lines, "parse: fragment to 10.96.100.10 proto 17");
    assert_logged(&lines, "drop: fragment");

    let (verdict, lines) = loaded.run(&syn6());
    assert_eq!(verdict, XDP_PASS, "{lines:#?}");
    assert_logged(&lines, "parse: IPv6, not translated by a debug-log build");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn the_default_object_has_no_debug_lines() {
    let mut loaded = Loaded::new(EBPF_OBJECT);
    for packet in [syn(40000), syn(40000), fragment(), syn6()] {
        let (_, lines) = loaded.run(&packet);
        assert!(lines.is_empty(), "{lines:#?}");
    }
    // The same packets did log in the debug-log build (the test above), so
    // this silence is the feature being off, not a broken logger.
}
