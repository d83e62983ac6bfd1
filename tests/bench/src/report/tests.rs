//! The goal table judged, report.md and the plots rendered, report.json
//! read back, all from a made-up report.

use super::*;
use crate::{
    change::ChangeTimes,
    control::AgentMemory,
    controller::{ControllerBench, ReconcileStats},
    counters::CounterCalibration,
    e2e::ModeResult,
    perpacket::{Case, CaseResult, PointResult},
    scale::{ScalePoint, TableSharing},
};

fn scale_point(ports: usize, cold: f64, rss_mib: u64, bpf_mib: u64, p99_ms: f64) -> ScalePoint {
    ScalePoint {
        services: 100_000,
        endpoints: 10,
        ports_per_service: ports,
        service_ports: 100_000 * ports,
        frontends: 100_000 * (ports + 2),
        flags: vec![
            "--frontends-max=316025".into(),
            "--conntrack-max=1048576".into(),
        ],
        cpus: 2,
        parse_and_compute_s: 15.0,
        maglev_build_s: 1.5,
        cold_sync_s: vec![cold, cold * 1.1],
        cold_map_writes: 1_500_000,
        tables: TableSharing {
            frontends_with_backends: 100_000,
            distinct_tables: 100_000,
            table_bytes: 100 << 20,
            distinct_table_bytes: 100 << 20,
        },
        change: ChangeTimes {
            total_ms: vec![p99_ms / 2.0, p99_ms],
            compute_ms: vec![p99_ms / 2.0; 2],
            apply_ms: vec![0.05; 2],
            diff_ms: vec![p99_ms / 3.0; 2],
            source_ms: vec![p99_ms; 2],
            map_writes_per_change: 2.0,
        },
        agent: AgentMemory {
            vm_hwm_kib: rss_mib * 1024,
            vm_rss_kib: rss_mib * 1024,
            bpf_memlock_bytes: bpf_mib << 20,
            bpf_maps: vec![("MCS_CT_V1".into(), 120 << 20)],
            start_to_synced_s: 20.0,
        },
        model_bpf_maps: vec![("MCS_CT_V1".into(), 120 << 20)],
        model_agent_bytes: 400 << 20,
    }
}

fn load(kind: Kind, rate: f64, p99: f64) -> LoadResult {
    LoadResult {
        kind,
        ok: 100,
        errors: 0,
        seconds: 1.0,
        rate,
        p50_us: p99 / 3.0,
        p99_us: p99,
        handshake_p50_us: 50.0,
        handshake_p99_us: 90.0,
        agents_cpu_pct: 1.0,
    }
}

fn sample_report() -> Report {
    let point = |services, pass: f64, ct: f64| PointResult {
        services,
        conntrack_fill: 1000,
        conntrack_capacity: 524_288,
        programmed_by: "test".into(),
        cases: Case::ALL
            .iter()
            .map(|case| {
                let v = match case {
                    Case::Pass => pass,
                    Case::Lookup => pass + 30.0,
                    Case::LruInsert | Case::LruInsertPerCpu => pass + 60.0,
                    Case::Miss => pass + 60.0,
                    Case::NewFlow => pass + 150.0,
                    Case::CtHit => pass + ct,
                    Case::Reply => pass + ct,
                    // IPv6: 1.1× the IPv4 cases' cost over XDP_PASS.
                    Case::MissV6 => pass + 66.0,
                    Case::NewFlowV6 => pass + 165.0,
                    Case::CtHitV6 | Case::ReplyV6 => pass + 1.1 * ct,
                };
                CaseResult {
                    case: *case,
                    katran_ns: vec![v, v + 1.0, v - 1.0],
                    repeat_ns: vec![v / 2.0; 3],
                    dropped_runs: 0,
                }
            })
            .collect(),
    };
    let modes = |xdp: f64| {
        Mode::ALL
            .iter()
            .map(|mode| {
                let rate = match mode {
                    Mode::Direct => 10_000.0,
                    Mode::DirectOne => 9_900.0,
                    Mode::DirectXdpPass => 9_500.0,
                    Mode::DirectTcPass => 9_800.0,
                    Mode::DirectTcWrite => 9_750.0,
                    Mode::McsXdp => xdp,
                    Mode::McsTc => 9_700.0,
                    Mode::McsSocklb => 9_900.0,
                    Mode::Iptables => 2_000.0,
                    Mode::Nftables => 8_000.0,
                    Mode::DirectV6 => 9_800.0,
                    Mode::McsTcV6 => 9_500.0,
                    Mode::McsXdpV6 => 9_000.0,
                };
                ModeResult {
                    mode: Some(*mode),
                    close: vec![load(Kind::Close, rate, 1000.0); 3],
                    keepalive: vec![load(Kind::Keepalive, rate * 3.0, 300.0); 3],
                    udp: vec![load(Kind::Udp, rate * 2.0, 200.0); 3],
                }
            })
            .collect()
    };
    Report {
        size: "test".into(),
        commit: "abc".into(),
        kernel: "6.x".into(),
        cpus: 2,
        per_packet: Some(PerPacket {
            rounds: 3,
            runs_per_sample: 10,
            repeat: 10,
            points: vec![point(1, 100.0, 60.0), point(10_000, 100.0, 120.0)],
            counters: Some(CounterCalibration {
                cpus: 2,
                repeat: 1000,
                pass_one_cpu: vec![10.0; 3],
                per_cpu_one_cpu: vec![12.0; 3],
                shared_one_cpu: vec![20.0; 3],
                pass_all_cpus: vec![10.0; 3],
                per_cpu_all_cpus: vec![12.0; 3],
                shared_all_cpus: vec![80.0; 3],
            }),
            notes: vec!["note".into()],
        }),
        e2e: Some(E2e {
            endpoints: 10,
            reps: 3,
            concurrency: 16,
            close_seconds: 1.0,
            keepalive_seconds: 1.0,
            udp_seconds: 1.0,
            iptables_version: "iptables v1".into(),
            nft_version: "nftables v1".into(),
            scales: vec![
                ScaleResult {
                    services: 1,
                    iptables_restore_s: 0.1,
                    nft_add_s: 0.1,
                    nft_added_services: 1,
                    agent_sync_s: 0.2,
                    modes: modes(9_800.0),
                },
                ScaleResult {
                    services: 10_000,
                    iptables_restore_s: 10.0,
                    nft_add_s: 60.0,
                    nft_added_services: 9_999,
                    agent_sync_s: 2.0,
                    modes: modes(9_000.0),
                },
            ],
            notes: vec![],
        }),
        control: Some(Control {
            services: 10_000,
            endpoints: 10,
            frontends: 30_001,
            cold_map_writes: 200_000,
            cold_sync_s: vec![0.3, 0.4, 0.35],
            iptables_restore_s: vec![15.0, 14.0, 16.0],
            iptables_rules: 200_000,
            change: ChangeTimes {
                total_ms: (1..=100).map(f64::from).collect(),
                compute_ms: vec![1.0; 100],
                apply_ms: vec![0.1; 100],
                diff_ms: vec![0.5; 100],
                source_ms: vec![5.0; 100],
                map_writes_per_change: 3.0,
            },
            batch_entries: 1000,
            single_updates_per_s: vec![1e6; 3],
            batch_updates_per_s: vec![3e6; 3],
            agent: AgentMemory {
                vm_hwm_kib: 100 * 1024,
                vm_rss_kib: 90 * 1024,
                bpf_memlock_bytes: 50 << 20,
                bpf_maps: vec![("MCS_CT_V1".into(), 40 << 20)],
                start_to_synced_s: 1.0,
            },
            ..Control::default()
        }),
        controller: Some(ControllerBench {
            clusters: 3,
            exports: 1000,
            endpoints: 4,
            export_rate: 20.0,
            change_rate: 5.0,
            // p99 = 990 ms: met; p50 500 ms.
            export_to_import_ms: (1..=1000).map(f64::from).collect(),
            export_to_first_import_ms: vec![100.0; 1000],
            exports_not_seen: 0,
            // p99 = 1200 ms: missed.
            endpoint_change_ms: (1..=100).map(|v| f64::from(v) * 12.0).collect(),
            change_controller_ms: (1..=100).map(|v| f64::from(v) * 10.0).collect(),
            change_agent_ms: vec![20.0; 100],
            changes_not_seen: 0,
            controllers: vec![ReconcileStats {
                cluster: "cluster-a".into(),
                reconciles: 400,
                mean_ms: 12.5,
                writes: 4000,
                vm_hwm_kib: 40 * 1024,
            }],
            agent_vm_hwm_kib: 30 * 1024,
            notes: vec!["note".into()],
        }),
        scale: vec![
            scale_point(1, 2.0, 400, 600, 2.0),
            scale_point(3, 6.0, 900, 1200, 3.0),
        ],
        ..Report::default()
    }
}

#[test]
fn goals_are_judged_from_the_numbers() {
    let report = sample_report();
    let goals = goals(&report);
    let find = |text: &str| {
        goals
            .iter()
            .find(|g| g.goal.contains(text))
            .unwrap_or_else(|| panic!("{text}"))
    };
    // CT hit: 60/30 = 2 lookups at 1 service, 4 at 10k: missed (every point).
    assert_eq!(find("conntrack hit adds").met, Some(false));
    assert!(!find("conntrack hit adds").limits.is_empty());
    assert_eq!(find("miss (not a ClusterSetIP) adds").met, Some(false)); // 2 > 1.5
    // 150 ns over a floor of 2 × 60 + 4 × 30 = 240 ns.
    assert_eq!(find("new flow adds").met, Some(true));
    assert_eq!(find("grows ≤ 1.3×").met, Some(false)); // ct hit 2×
    let ipv6 = find("IPv6: miss, new flow");
    assert_eq!(ipv6.met, Some(true)); // 1.1 ≤ 1.2
    assert!(ipv6.measured.contains("ct_hit 1.10"), "{}", ipv6.measured);
    assert_eq!(find("mcs XDP ≥ 0.95× direct").met, Some(false)); // 0.9 at 10k
    assert!(
        find("mcs XDP ≥ 0.95× direct")
            .measured
            .contains("10k: 0.90")
    );
    assert_eq!(find("p99 latency").met, Some(true));
    assert_eq!(find("3.5× iptables").met, Some(true)); // 4.5
    assert_eq!(find("1.15× nftables").met, Some(false)); // 1.125
    assert_eq!(find("socket LB").met, Some(true));
    assert_eq!(find("cold sync of 10k").met, Some(false)); // 0.35 > 0.2
    assert_eq!(find("30× faster").met, Some(true)); // 15/0.35 ≈ 43
    assert_eq!(find("p50 endpoint change").met, Some(false)); // 50 ms
    assert_eq!(find("peak RSS ≤ 128").met, Some(true));
    // At scale: the one-port set is judged, the three-port set shown.
    let cold = find("cold sync of 100k");
    assert_eq!(cold.met, Some(true)); // 2.1 ≤ 2.5
    assert!(cold.measured.contains("100k×10×3") && cold.measured.contains("not judged"));
    assert_eq!(find("peak RSS ≤ 512").met, Some(true));
    let bpf = find("BPF map memory");
    assert_eq!(bpf.met, Some(false)); // 600 MiB
    assert!(
        bpf.measured.contains("1048576 conntrack entries"),
        "{}",
        bpf.measured
    );
    assert!(!bpf.limits.is_empty());
    let change = find("change → map ≤ 1 ms");
    assert_eq!(change.met, Some(false));
    assert!(
        change.limits.contains("changed set takes"),
        "{}",
        change.limits
    );
    let import = find("export → import");
    assert_eq!(import.met, Some(true));
    assert!(
        import.measured.contains("p99 990 ms (p50 500 ms"),
        "{}",
        import.measured
    );
    // Where the time goes is shown even when the goal is met.
    assert!(
        import.limits.contains("take 12.5 ms per reconcile"),
        "{}",
        import.limits
    );
    let change = find("endpoint change → map on a node");
    assert_eq!(change.met, Some(false));
    assert!(
        change.limits.contains("p50 500 / p99 990 ms")
            && change.limits.contains("p50 20 / p99 20 ms"),
        "{}",
        change.limits
    );
    // An IPv6 case 1.5× its IPv4 case's cost misses the IPv6 goal.
    let mut report = sample_report();
    if let Some(pp) = &mut report.per_packet {
        let point = &mut pp.points[0];
        let pass = point.case(Case::Pass).unwrap().katran_ns.clone();
        let miss = point.case(Case::Miss).unwrap().katran_ns.clone();
        let v6 = point
            .cases
            .iter_mut()
            .find(|c| c.case == Case::MissV6)
            .unwrap();
        v6.katran_ns = miss
            .iter()
            .zip(&pass)
            .map(|(m, p)| p + 1.5 * (m - p))
            .collect();
    }
    let ipv6 = super::goals(&report)
        .into_iter()
        .find(|g| g.goal.contains("IPv6: miss, new flow"))
        .unwrap();
    assert_eq!(ipv6.met, Some(false));
    assert!(
        ipv6.measured.contains("worst 1.50 (miss_v6"),
        "{}",
        ipv6.measured
    );
    // A change never seen misses the goal whatever the percentiles say.
    let mut report = sample_report();
    if let Some(c) = &mut report.controller {
        c.exports_not_seen = 1;
    }
    let judged = super::goals(&report);
    let import = judged
        .iter()
        .find(|g| g.goal.contains("export → import"))
        .unwrap();
    assert_eq!(import.met, Some(false));
    assert!(import.measured.contains("1 never seen"));
}

#[test]
fn markdown_and_plots_render() {
    let report = sample_report();
    let goals = goals(&report);
    let md = markdown(&report, &goals);
    assert!(md.starts_with("# mcs benchmarks"));
    assert!(md.contains("| per-packet |"));
    assert!(md.contains("**missed**") && md.contains("**met**"));
    assert!(md.contains("### 10k services"));
    assert!(md.contains("| mcs-xdp | 9000 (9000–9000) | 0.90 (0.90–0.90) |"));
    assert!(md.contains("| MCS_CT_V1 | 40.00 |"));
    assert!(md.contains("## 4. Export controller"));
    assert!(md.contains("| cluster-a | 400 | 12.5 | 4000 | 40.0 |"));
    assert!(md.contains("## 3b. Control plane at scale"));
    assert!(md.contains("| MCS_CT_V1 | 120.00 / 120.00 | 120.00 / 120.00 |"));
    assert!(md.contains("| shared (array, atomic adds) | 10.0 (10.0–10.0) | 70.0 (70.0–70.0) |"));
    assert!(!md.contains("NaN"));
    let files = plots(&report);
    let names: Vec<_> = files.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "perpacket.svg",
            "e2e-conn.svg",
            "e2e-p99.svg",
            "control.svg",
            "controller.svg"
        ]
    );
    for (name, svg) in &files {
        assert!(svg.contains("</svg>"), "{name}");
        assert!(!svg.contains("NaN"), "{name}");
    }
    // Every table row has as many cells as its header.
    for table in md.split("\n\n").filter(|t| t.starts_with('|')) {
        let widths: Vec<usize> = table
            .lines()
            .map(|l| l.replace("\\|", "").matches('|').count())
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
    }
}

#[test]
fn smoke_sizes_are_not_judged_against_full_size_goals() {
    let mut report = sample_report();
    if let Some(c) = &mut report.control {
        c.services = 100;
    }
    if let Some(e2e) = &mut report.e2e {
        e2e.scales[1].services = 100;
    }
    if let Some(c) = &mut report.controller {
        c.exports = 60;
    }
    for point in &mut report.scale {
        point.services = 2000;
    }
    let goals = goals(&report);
    let find = |text: &str| goals.iter().find(|g| g.goal.contains(text)).unwrap();
    assert_eq!(find("export → import").met, None);
    assert!(find("export → import").measured.contains("smoke size"));
    assert_eq!(find("cold sync of 10k").met, None);
    assert_eq!(find("cold sync of 100k").met, None);
    assert!(find("cold sync of 100k").measured.contains("smoke"));
    assert_eq!(find("3.5× iptables").met, None);
    assert!(find("3.5× iptables").measured.contains("smoke"));
}

#[test]
fn report_json_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample_report();
    write(&report, dir.path()).unwrap();
    let back = read(&dir.path().join("report.json")).unwrap();
    assert_eq!(back.size, "test");
    assert_eq!(back.e2e.unwrap().scales.len(), 2);
    assert!(dir.path().join("control.svg").exists());
    assert!(read(&dir.path().join("missing.json")).is_err());
}

#[test]
fn every_placeholder_of_the_goal_table_is_filled() {
    let mut report = sample_report();
    goals::every_text_filled(&report).unwrap();
    // Without the per-packet part, the end-to-end texts fall back to `?`.
    report.per_packet = None;
    goals::every_text_filled(&report).unwrap();
    let goals = goals(&report);
    let xdp = goals
        .iter()
        .find(|g| g.goal.starts_with("mcs XDP ≥ 0.95× direct"))
        .unwrap();
    assert!(xdp.limits.contains("accounts for ≈ ? µs"), "{}", xdp.limits);
}

#[test]
fn a_report_without_parts_has_no_goals() {
    assert!(goals(&Report::default()).is_empty());
    let mut report = sample_report();
    report.e2e = None;
    report.control = None;
    report.controller = None;
    report.scale.clear();
    let parts: Vec<_> = goals(&report).into_iter().map(|g| g.part).collect();
    assert_eq!(parts, ["per-packet"; 5]);
}
