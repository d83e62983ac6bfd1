//! report.md: the goal table, then each part's measurements as tables of
//! medians with (min–max), and links to the plots.

use std::fmt::Write as _;

use super::{Goal, Report, fmt_summary, ratio, scale_name};
use crate::{
    control::Control,
    controller::ControllerBench,
    counters::CounterCalibration,
    e2e::{E2e, Mode},
    load::{Kind, LoadResult},
    perpacket::{Case, PerPacket},
    scale::ScalePoint,
    stats::{self, Summary},
};

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn us_to_ms(v: f64) -> f64 {
    v / 1000.0
}

pub fn markdown(report: &Report, goals: &[Goal]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# mcs benchmarks\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench --size {}` at commit `{}`, kernel {}, {} CPUs, load average at start {}; took {:.0} s.\n",
        report.size,
        report.commit,
        report.kernel,
        report.cpus,
        report.load_average,
        report.duration_s
    );
    md.push_str(
        "All numbers come from this one run on a shared, noisy machine: values are medians with (min–max) over interleaved repetitions, and comparisons are ratios to baselines measured in the same run, paired per repetition. Absolute numbers from another run or machine are not comparable.\n\n",
    );
    md.push_str("## Goals\n\n| part | goal | measured (median (min–max)) | result | what limits it |\n|---|---|---|---|---|\n");
    for goal in goals {
        let result = match goal.met {
            Some(true) => "**met**",
            Some(false) => "**missed**",
            None => "not judged",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {result} | {} |",
            cell(&goal.part),
            cell(&goal.goal),
            cell(&goal.measured),
            cell(&goal.limits)
        );
    }
    if let Some(pp) = &report.per_packet {
        per_packet_section(&mut md, pp);
    }
    if let Some(e2e) = &report.e2e {
        e2e_section(&mut md, e2e);
    }
    if let Some(c) = &report.control {
        control_section(&mut md, c);
    }
    if let Some(c) = &report.controller {
        controller_section(&mut md, c);
    }
    if !report.scale.is_empty() {
        scale_section(&mut md, &report.scale);
    }
    md
}

#[expect(clippy::cast_precision_loss, reason = "bytes to MiB")]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// A row of the scale table: its label and how each point shows it.
type ScaleRow = (&'static str, Box<dyn Fn(&ScalePoint) -> String>);

fn scale_section(md: &mut String, points: &[ScalePoint]) {
    let _ = writeln!(md, "\n## 3b. Control plane at scale\n");
    md.push_str("* Each set: services × endpoints × ports per service (every port its own frontend with its own target port; the measured target service has TCP and UDP); the agent's maps sized for the set as an operator would (the flags below; 1M conntrack entries in a full run); no two services share an endpoint set.\n");
    md.push_str("* Cold sync and endpoint change as in part 3, into maps of those sizes; the agent on the set's manifest (file source) with those flags for its peak RSS and the kernel's accounting of its maps, next to the memory model of docs/operations.md for the same sizes (names counted for the service ports).\n");
    md.push_str("* Tables: frontends whose member lists (address, port, weight in slot order) are identical have identical Maglev tables; the last rows say what sharing them would save.\n");
    let header: Vec<String> = points
        .iter()
        .map(|p| {
            format!(
                "{}×{}×{}",
                scale_name(p.services),
                p.endpoints,
                p.ports_per_service
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "\n| measurement | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(points.len())
    );
    let p = |v: &[f64], q| stats::percentile(v, q).map_or("–".to_owned(), |v| format!("{v:.3}"));
    let rows: Vec<ScaleRow> = vec![
        (
            "service ports (frontends)",
            Box::new(|s| format!("{} ({})", s.service_ports, s.frontends)),
        ),
        ("map-size flags", Box::new(|s| s.flags.join(" "))),
        (
            "manifest parse + desired state (once, not part of the sync)",
            Box::new(|s| format!("{:.2} s", s.parse_and_compute_s)),
        ),
        (
            "Maglev tables of every frontend, built alone (part of the sync)",
            Box::new(|s| format!("{:.3} s", s.maglev_build_s)),
        ),
        (
            "cold sync (Reconciler::apply)",
            Box::new(|s| {
                format!(
                    "{} s, {} map writes",
                    fmt_summary(Summary::of(&s.cold_sync_s), 3),
                    s.cold_map_writes
                )
            }),
        ),
        (
            "endpoint change → map: p50 / p99",
            Box::new(move |s| {
                format!(
                    "{} / {} ms",
                    p(&s.change.total_ms, 50.0),
                    p(&s.change.total_ms, 99.0)
                )
            }),
        ),
        (
            "of which changed set (from the update's journal) p50 / p99",
            Box::new(move |s| {
                format!(
                    "{} / {} ms",
                    p(&s.change.diff_ms, 50.0),
                    p(&s.change.diff_ms, 99.0)
                )
            }),
        ),
        (
            "before it, the source journaling the change (not included) p50 / p99",
            Box::new(move |s| {
                format!(
                    "{} / {} ms",
                    p(&s.change.source_ms, 50.0),
                    p(&s.change.source_ms, 99.0)
                )
            }),
        ),
        (
            "of which map writes p50 / p99",
            Box::new(move |s| {
                format!(
                    "{} / {} ms",
                    p(&s.change.apply_ms, 50.0),
                    p(&s.change.apply_ms, 99.0)
                )
            }),
        ),
        (
            "agent start → all frontends in the maps",
            Box::new(|s| format!("{:.1} s", s.agent.start_to_synced_s)),
        ),
        (
            "agent peak RSS (VmHWM) / RSS after sync / model",
            Box::new(|s| {
                format!(
                    "{:.1} / {:.1} / {:.0} MiB",
                    s.agent.vm_hwm_kib as f64 / 1024.0,
                    s.agent.vm_rss_kib as f64 / 1024.0,
                    mib(s.model_agent_bytes)
                )
            }),
        ),
        (
            "BPF map memory: measured / model",
            Box::new(|s| {
                format!(
                    "{:.1} / {:.1} MiB ({} possible CPUs)",
                    mib(s.agent.bpf_memlock_bytes),
                    mib(s.model_bpf_bytes()),
                    s.cpus
                )
            }),
        ),
        (
            "frontends with backends / distinct Maglev tables",
            Box::new(|s| {
                format!(
                    "{} / {}",
                    s.tables.frontends_with_backends, s.tables.distinct_tables
                )
            }),
        ),
        (
            "Maglev table bytes / if identical tables were shared",
            Box::new(|s| {
                format!(
                    "{:.1} / {:.1} MiB",
                    mib(s.tables.table_bytes),
                    mib(s.tables.distinct_table_bytes)
                )
            }),
        ),
    ];
    for (label, value) in rows {
        let cells: Vec<String> = points.iter().map(|s| cell(&value(s))).collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
    md.push_str("\nBPF map memory by map (MiB), measured / model:\n\n");
    let _ = writeln!(
        md,
        "| map | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(points.len())
    );
    let names: Vec<&String> = points
        .first()
        .map(|s| s.model_bpf_maps.iter().map(|(name, _)| name).collect())
        .unwrap_or_default();
    for name in names {
        let cells: Vec<String> = points
            .iter()
            .map(|s| {
                let measured = s
                    .agent
                    .bpf_maps
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, b)| *b);
                let model = s
                    .model_bpf_maps
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, b)| *b);
                format!(
                    "{} / {}",
                    measured.map_or("–".into(), |b| format!("{:.2}", mib(b))),
                    model.map_or("–".into(), |b| format!("{:.2}", mib(b)))
                )
            })
            .collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
}

fn per_packet_section(md: &mut String, pp: &PerPacket) {
    let _ = writeln!(md, "\n## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        md,
        "{} rounds after a warm-up; Katran method: {} runs of repeat=1 per sample; repeat method: repeat={}.\n",
        pp.rounds, pp.runs_per_sample, pp.repeat
    );
    for note in &pp.notes {
        let _ = writeln!(md, "* {note}");
    }
    md.push_str("\nns per packet are the kernel-reported durations (Katran method includes the test-run overhead that the XDP_PASS program also has); Δ = cost − XDP_PASS of the same round; \"lookups\" = Δ / Δ(calibration lookup) of the same round.\n\n");
    md.push_str("| services | conntrack (capacity) | case | ns/packet | Δ ns | lookups | repeat method ns | repeat Δ ns |\n|---|---|---|---|---|---|---|---|\n");
    for p in &pp.points {
        for case in Case::ALL {
            let Some(c) = p.case(case) else { continue };
            let _ = writeln!(
                md,
                "| {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
                scale_name(p.services),
                scale_name(p.conntrack_fill),
                p.conntrack_capacity,
                case.label(),
                fmt_summary(Summary::of(&c.katran_ns), 0),
                if case == Case::Pass {
                    "–".into()
                } else {
                    fmt_summary(p.delta(case), 0)
                },
                if matches!(case, Case::Pass | Case::Lookup) {
                    "–".into()
                } else {
                    fmt_summary(p.in_lookups(case), 2)
                },
                fmt_summary(Summary::of(&c.repeat_ns), 0),
                if case == Case::Pass {
                    "–".into()
                } else {
                    fmt_summary(p.repeat_delta(case), 0)
                },
            );
        }
    }
    md.push_str("\nHow the service maps were written:\n\n");
    let mut seen = Vec::new();
    for p in &pp.points {
        if !seen.contains(&p.services) {
            seen.push(p.services);
            let _ = writeln!(
                md,
                "* {} services: {}",
                scale_name(p.services),
                p.programmed_by
            );
        }
    }
    if let Some(counters) = &pp.counters {
        counters_table(md, counters);
    }
    md.push_str("\n![per-packet cost](perpacket.svg)\n");
}

fn counters_table(md: &mut String, c: &CounterCalibration) {
    let _ = writeln!(
        md,
        "\nCounter updates of a conntrack hit (two counters' packets and bytes), repeat={}: Δ ns over XDP_PASS of the same round, on one CPU and on all {} CPUs at once updating the same counters.\n\n| counters | Δ ns, one CPU | Δ ns, all CPUs at once |\n|---|---|---|",
        c.repeat, c.cpus
    );
    for (label, one, all) in [
        (
            "per CPU (per-CPU array)",
            &c.per_cpu_one_cpu,
            &c.per_cpu_all_cpus,
        ),
        (
            "shared (array, atomic adds)",
            &c.shared_one_cpu,
            &c.shared_all_cpus,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} |",
            fmt_summary(stats::paired_delta(one, &c.pass_one_cpu), 1),
            fmt_summary(stats::paired_delta(all, &c.pass_all_cpus), 1),
        );
    }
}

fn e2e_section(md: &mut String, e2e: &E2e) {
    let _ = writeln!(md, "\n## 2. End to end over veth\n");
    let _ = writeln!(
        md,
        "{} endpoints per service, {} interleaved repetitions per scale (every mode once per repetition and load kind, order rotating), {} concurrent workers; close {} s, keep-alive {} s, UDP {} s per run. {}; {}.\n",
        e2e.endpoints,
        e2e.reps,
        e2e.concurrency,
        e2e.close_seconds,
        e2e.keepalive_seconds,
        e2e.udp_seconds,
        e2e.iptables_version,
        e2e.nft_version
    );
    for note in &e2e.notes {
        let _ = writeln!(md, "* {note}");
    }
    for scale in &e2e.scales {
        let _ = writeln!(
            md,
            "\n### {} services\n\nSetup: iptables-restore of the whole ruleset {:.2} s; nft -f of {} added services {:.2} s (in chunks); agent manifest → maps {:.2} s.\n",
            scale_name(scale.services),
            scale.iptables_restore_s,
            scale.nft_added_services,
            scale.nft_add_s,
            scale.agent_sync_s
        );
        md.push_str("| mode | new conn/s (close) | × direct | p50 ms | p99 ms | p99 × direct | handshake p50/p99 µs | keep-alive req/s | × direct | ka p50/p99 µs | UDP req/s | × direct | UDP p99 µs | agents' CPU % (close) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for mode in Mode::ALL {
            let Some(m) = scale.mode(mode) else { continue };
            let s = |kind, f: fn(&LoadResult) -> f64| Summary::of(&m.values(kind, f));
            let med = |kind, f: fn(&LoadResult) -> f64| s(kind, f).map_or(f64::NAN, |s| s.median);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.2} | {} | {:.0} / {:.0} | {} | {} | {:.0} / {:.0} | {} | {} | {:.0} | {:.1} |",
                mode.name(),
                fmt_summary(s(Kind::Close, |r| r.rate), 0),
                fmt_summary(
                    ratio(scale, mode, mode.direct(), Kind::Close, |r| r.rate),
                    2
                ),
                us_to_ms(med(Kind::Close, |r| r.p50_us)),
                us_to_ms(med(Kind::Close, |r| r.p99_us)),
                fmt_summary(
                    ratio(scale, mode, mode.direct(), Kind::Close, |r| r.p99_us),
                    2
                ),
                med(Kind::Close, |r| r.handshake_p50_us),
                med(Kind::Close, |r| r.handshake_p99_us),
                fmt_summary(s(Kind::Keepalive, |r| r.rate), 0),
                fmt_summary(
                    ratio(scale, mode, mode.direct(), Kind::Keepalive, |r| r.rate),
                    2
                ),
                med(Kind::Keepalive, |r| r.p50_us),
                med(Kind::Keepalive, |r| r.p99_us),
                fmt_summary(s(Kind::Udp, |r| r.rate), 0),
                fmt_summary(ratio(scale, mode, mode.direct(), Kind::Udp, |r| r.rate), 2),
                med(Kind::Udp, |r| r.p99_us),
                med(Kind::Close, |r| r.agents_cpu_pct),
            );
        }
        let errors: u64 = scale
            .modes
            .iter()
            .flat_map(|m| m.close.iter().chain(&m.keepalive).chain(&m.udp))
            .map(|r| r.errors)
            .sum();
        let _ = writeln!(
            md,
            "\nFailed requests (timeouts, resets, lost datagrams) over all runs of this scale: {errors}."
        );
    }
    md.push_str("\n![new connections per second](e2e-conn.svg)\n\n![p99 latency](e2e-p99.svg)\n");
}

fn control_section(md: &mut String, c: &Control) {
    let _ = writeln!(md, "\n## 3. Control plane\n");
    for note in &c.notes {
        let _ = writeln!(md, "* {note}");
    }
    let p = |v: &[f64], q| stats::percentile(v, q).map_or("–".to_owned(), |v| format!("{v:.3}"));
    let _ = writeln!(
        md,
        "\n| measurement | value |\n|---|---|\n\
         | services × endpoints (frontends) | {} × {} ({}) |\n\
         | manifest parse + desired state (once, not part of the sync) | {:.3} s |\n\
         | Maglev tables of every frontend, built alone (part of the sync) | {:.3} s |\n\
         | cold sync (Reconciler::apply, {} map writes) | {} s |\n\
         | cold iptables-restore ({} rules) | {} s |\n\
         | iptables-restore ÷ mcs sync | {} |\n\
         | endpoint change → map: p50 / p99 | {} / {} ms |\n\
         | of which desired state (changed set + affected imports) p50 / p99 | {} / {} ms |\n\
         | of which changed set (from the update's journal) p50 / p99 | {} / {} ms |\n\
         | of which map writes p50 / p99 | {} / {} ms |\n\
         | map updates/s, one syscall each ({} entries) | {} |\n\
         | map updates/s, BPF_MAP_UPDATE_BATCH | {} |\n\
         | batch ÷ single | {} |\n\
         | agent start → all frontends in the maps | {:.2} s |\n\
         | agent peak RSS (VmHWM) / RSS after sync | {:.1} / {:.1} MiB |\n\
         | BPF map memory (bytes_memlock, all pinned maps) | {:.1} MiB |",
        c.services,
        c.endpoints,
        c.frontends,
        c.parse_and_compute_s,
        c.maglev_build_s,
        c.cold_map_writes,
        fmt_summary(Summary::of(&c.cold_sync_s), 3),
        c.iptables_rules,
        fmt_summary(Summary::of(&c.iptables_restore_s), 2),
        fmt_summary(
            stats::paired_ratio(&c.iptables_restore_s, &c.cold_sync_s),
            1
        ),
        p(&c.change.total_ms, 50.0),
        p(&c.change.total_ms, 99.0),
        p(&c.change.compute_ms, 50.0),
        p(&c.change.compute_ms, 99.0),
        p(&c.change.diff_ms, 50.0),
        p(&c.change.diff_ms, 99.0),
        p(&c.change.apply_ms, 50.0),
        p(&c.change.apply_ms, 99.0),
        c.batch_entries,
        fmt_summary(Summary::of(&c.single_updates_per_s), 0),
        fmt_summary(Summary::of(&c.batch_updates_per_s), 0),
        fmt_summary(
            stats::paired_ratio(&c.batch_updates_per_s, &c.single_updates_per_s),
            2
        ),
        c.agent.start_to_synced_s,
        c.agent.vm_hwm_kib as f64 / 1024.0,
        c.agent.vm_rss_kib as f64 / 1024.0,
        c.agent.bpf_memlock_bytes as f64 / 1_048_576.0,
    );
    if let Some(dns) = &c.dns {
        let _ = writeln!(
            md,
            "| DNS responder, UDP A queries/s ({} services; {} queries, {} in flight; {} lost) | {:.0} |",
            dns.services, dns.queries, dns.window, dns.lost, dns.queries_per_s
        );
    }
    md.push_str("\nBPF map memory by map:\n\n| map | MiB |\n|---|---|\n");
    for (name, bytes) in &c.agent.bpf_maps {
        let _ = writeln!(md, "| {name} | {:.2} |", *bytes as f64 / 1_048_576.0);
    }
    md.push_str("\n![control plane](control.svg)\n");
}

fn controller_section(md: &mut String, c: &ControllerBench) {
    let _ = writeln!(md, "\n## 4. Export controller\n");
    let _ = writeln!(
        md,
        "{} exports across {} clusters, {} endpoints each; exports created at {}/s, endpoint changes at {}/s.\n",
        c.exports, c.clusters, c.endpoints, c.export_rate, c.change_rate
    );
    for note in &c.notes {
        let _ = writeln!(md, "* {note}");
    }
    md.push_str("\n| latency (ms) | p50 | p99 | min | max | n | never seen |\n|---|---|---|---|---|---|---|\n");
    let p = |v: &[f64], q| stats::percentile(v, q).map_or("–".to_owned(), |v| format!("{v:.0}"));
    for (what, samples, missing) in [
        (
            "export → import with its IP, in every cluster",
            &c.export_to_import_ms,
            Some(c.exports_not_seen),
        ),
        (
            "export → import with its IP, in the first cluster",
            &c.export_to_first_import_ms,
            None,
        ),
        (
            "endpoint change → map on a node of another cluster",
            &c.endpoint_change_ms,
            Some(c.changes_not_seen),
        ),
        (
            "… of which patch → MCS slice seen in the agent's cluster (controller)",
            &c.change_controller_ms,
            None,
        ),
        (
            "… of which MCS slice seen → map (agent)",
            &c.change_agent_ms,
            None,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} | {} | {} |",
            p(samples, 50.0),
            p(samples, 99.0),
            p(samples, 0.0),
            p(samples, 100.0),
            samples.len(),
            missing.map_or("–".to_owned(), |m| m.to_string())
        );
    }
    md.push_str("\nEach controller's own account (its `/metrics` at the end, and its peak memory):\n\n| cluster | reconciles | mean reconcile ms | writes | peak RSS (VmHWM) MiB |\n|---|---|---|---|---|\n");
    for r in &c.controllers {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} | {:.1} |",
            r.cluster,
            r.reconciles,
            r.mean_ms,
            r.writes,
            r.vm_hwm_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        md,
        "\nThe agent (`--source kube`, {} imports): peak RSS {:.1} MiB.\n\n![controller latencies](controller.svg)",
        c.exports,
        c.agent_vm_hwm_kib as f64 / 1024.0
    );
}
