//! The goal table judged, report.md and the plots rendered, report.json
//! read back, all from a made-up report.

use super::*;
use crate::{
    control::{AgentMemory, ChangeTimes},
    e2e::ModeResult,
    perpacket::{Case, CaseResult, PointResult},
};

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
                    Mode::DirectXdpPass => 9_500.0,
                    Mode::DirectTcPass => 9_800.0,
                    Mode::McsXdp => xdp,
                    Mode::McsTc => 9_700.0,
                    Mode::McsSocklb => 9_900.0,
                    Mode::Iptables => 2_000.0,
                    Mode::Nftables => 8_000.0,
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
    assert_eq!(find("new flow adds").met, Some(true)); // 5 ≤ 6
    assert_eq!(find("grows ≤ 1.3×").met, Some(false)); // ct hit 2×
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
    assert_eq!(find("cold sync of 10k").met, Some(true));
    assert_eq!(find("30× faster").met, Some(true)); // 15/0.35 ≈ 43
    assert_eq!(find("p50 endpoint change").met, Some(false)); // 50 ms
    assert_eq!(find("peak RSS").met, Some(true));
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
    assert!(!md.contains("NaN"));
    let files = plots(&report);
    let names: Vec<_> = files.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "perpacket.svg",
            "e2e-conn.svg",
            "e2e-p99.svg",
            "control.svg"
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
    let goals = goals(&report);
    let find = |text: &str| goals.iter().find(|g| g.goal.contains(text)).unwrap();
    assert_eq!(find("cold sync of 10k").met, None);
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
    let parts: Vec<_> = goals(&report).into_iter().map(|g| g.part).collect();
    assert_eq!(parts, ["per-packet"; 4]);
}
