//! The report: JSON (everything measured), markdown (tables of medians with
//! min–max, ratios to the baselines of the same run, every goal met or
//! missed with its numbers and what limits it) and SVG plots.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    control::Control,
    e2e::{E2e, Mode, ScaleResult},
    load::{Kind, LoadResult},
    perpacket::{Case, PerPacket, PointResult},
    stats::{self, Summary},
    svg::{self, Bar, Point, Series},
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub size: String,
    pub commit: String,
    pub kernel: String,
    pub cpus: usize,
    pub started_unix: u64,
    pub duration_s: f64,
    pub load_average: String,
    pub per_packet: Option<PerPacket>,
    pub e2e: Option<E2e>,
    pub control: Option<Control>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub part: String,
    pub goal: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
    pub limits: String,
}

fn fmt_summary(s: Option<Summary>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.display(decimals))
}

fn scale_name(services: usize) -> String {
    if services >= 1000 && services.is_multiple_of(1000) {
        format!("{}k", services / 1000)
    } else {
        services.to_string()
    }
}

// ---------------------------------------------------------------- goals

fn per_packet_goals(pp: &PerPacket, goals: &mut Vec<Goal>) {
    let Some(base) = pp.points.first() else {
        return;
    };
    let lru = match (
        base.in_lookups(Case::LruInsert),
        base.in_lookups(Case::LruInsertPerCpu),
    ) {
        (Some(common), Some(per_cpu)) => format!(
            " (one conntrack-shaped LRU insert alone measures {:.1} lookups here, {:.1} with per-CPU LRU lists)",
            common.median, per_cpu.median
        ),
        (Some(common), None) => format!(
            " (one conntrack-shaped LRU insert alone measures {:.1} lookups here)",
            common.median
        ),
        _ => String::new(),
    };
    // Whether the two inserts alone already cost more than the goal (6).
    let over = match base.in_lookups(Case::LruInsert) {
        Some(common) if 2.0 * common.median > 6.0 => {
            ": the two inserts alone cost more than the goal"
        }
        _ => "",
    };
    let limits_for = |case: Case| -> String {
        match case {
        Case::CtHit => {
            "a hit is the prefilter's inlined array read, a conntrack lookup (a 16-byte-key hash lookup in the largest map, itself about one calibration lookup) plus the rewrite (address, port, IP and L4 checksum), a jiffies read (inlined: one load) for the entry's last-seen time (written back at most once a second) and two per-CPU counter updates (frontend, backend)"
        }
        Case::Miss => {
            "a miss is parsing plus two inlined array reads of the prefilter bitmap (destination not a ClusterSetIP, source not a backend), no hash lookup; a false positive (another address on the same bit) takes the full path: conntrack and service lookups"
        }
        Case::NewFlow => {
            return format!("a new flow does the prefilter read, a conntrack miss, the service, Maglev-table and backend lookups, two LRU-hash inserts (reply and forward entries){lru}, one jiffies read, counters and the DNAT{over}");
        }
        _ => "",
        }
        .to_owned()
    };
    for (case, limit) in [(Case::CtHit, 3.0), (Case::Miss, 1.5), (Case::NewFlow, 6.0)] {
        let per_point: Vec<(&PointResult, Summary)> = pp
            .points
            .iter()
            .filter_map(|p| Some((p, p.in_lookups(case)?)))
            .collect();
        let worst = per_point
            .iter()
            .max_by(|a, b| a.1.median.total_cmp(&b.1.median));
        let met = (!per_point.is_empty()).then(|| per_point.iter().all(|(_, s)| s.median <= limit));
        let base_delta = base.delta(case);
        let base_lookup = base.delta(Case::Lookup);
        let measured = format!(
            "{} lookups at {} services / {} CT (Δ {} ns vs lookup Δ {} ns); worst point {}",
            fmt_summary(base.in_lookups(case), 2),
            scale_name(base.services),
            scale_name(base.conntrack_fill),
            base_delta.map_or("–".into(), |s| format!("{:.0}", s.median)),
            base_lookup.map_or("–".into(), |s| format!("{:.0}", s.median)),
            worst.map_or("–".into(), |(p, s)| format!(
                "{:.2} ({} services, {} CT)",
                s.median,
                scale_name(p.services),
                scale_name(p.conntrack_fill)
            )),
        );
        goals.push(Goal {
            part: "per-packet".into(),
            goal: format!(
                "{} adds ≤ {limit}× the calibration lookup's cost over XDP_PASS (every point)",
                case.label()
            ),
            measured,
            met,
            limits: if met == Some(true) {
                String::new()
            } else {
                limits_for(case)
            },
        });
    }
    // Growth from the smallest to the largest size.
    let first = pp.points.first();
    let last = pp.points.last();
    if let (Some(first), Some(last)) = (first, last) {
        let mut parts = Vec::new();
        let mut worst: f64 = 0.0;
        for case in [Case::Miss, Case::NewFlow, Case::CtHit, Case::Reply] {
            if let (Some(a), Some(b)) = (first.delta(case), last.delta(case))
                && a.median > 0.0
            {
                let growth = b.median / a.median;
                worst = worst.max(growth);
                parts.push(format!("{} {growth:.2}×", case.key()));
            }
        }
        let met = (!parts.is_empty() && pp.points.len() > 1).then_some(worst <= 1.3);
        goals.push(Goal {
            part: "per-packet".into(),
            goal: format!(
                "cost over XDP_PASS grows ≤ 1.3× from {} services / {} CT to {} services / {} CT",
                scale_name(first.services),
                scale_name(first.conntrack_fill),
                scale_name(last.services),
                scale_name(last.conntrack_fill)
            ),
            measured: parts.join(", "),
            met,
            limits: if met == Some(false) {
                "bigger maps: more cache and TLB misses per lookup (a 1M-entry conntrack alone is ~100 MiB of hash elements), and larger service/backend tables; one test packet keeps its own entries hot, so this is the floor of the growth".into()
            } else {
                String::new()
            },
        });
    }
}

fn rates(scale: &ScaleResult, mode: Mode, kind: Kind, f: impl Fn(&LoadResult) -> f64) -> Vec<f64> {
    scale
        .mode(mode)
        .map(|m| m.values(kind, f))
        .unwrap_or_default()
}

fn ratio(
    scale: &ScaleResult,
    a: Mode,
    b: Mode,
    kind: Kind,
    f: impl Fn(&LoadResult) -> f64 + Copy,
) -> Option<Summary> {
    stats::paired_ratio(&rates(scale, a, kind, f), &rates(scale, b, kind, f))
}

fn e2e_goals(e2e: &E2e, pp: Option<&PerPacket>, goals: &mut Vec<Goal>) {
    let full_scale = e2e.scales.last().is_some_and(|s| s.services >= 10_000);
    let per_scale = |a: Mode, b: Mode, f: fn(&LoadResult) -> f64, limit: f64, at_least: bool| {
        let values: Vec<(usize, Option<Summary>)> = e2e
            .scales
            .iter()
            .map(|s| (s.services, ratio(s, a, b, Kind::Close, f)))
            .collect();
        let met = values.iter().all(|(_, r)| r.is_some()) && !values.is_empty();
        let met = met.then(|| {
            values.iter().all(|(_, r)| {
                r.is_some_and(|r| {
                    if at_least {
                        r.median >= limit
                    } else {
                        r.median <= limit
                    }
                })
            })
        });
        let text = values
            .iter()
            .map(|(n, r)| format!("{}: {}", scale_name(*n), fmt_summary(*r, 2)))
            .collect::<Vec<_>>()
            .join("; ");
        (text, met)
    };
    let cost_note = |mode: Mode| -> String {
        let Some(scale) = e2e.scales.last() else {
            return String::new();
        };
        let direct = Summary::of(&rates(scale, Mode::Direct, Kind::Close, |r| r.rate));
        let this = Summary::of(&rates(scale, mode, Kind::Close, |r| r.rate));
        match (direct, this) {
            (Some(d), Some(t)) if d.median > 0.0 && t.median > 0.0 => format!(
                "at {}: direct {:.0} conn/s ≈ {:.0} µs of the two CPUs per connection, {} {:.0} conn/s ≈ {:.0} µs; ",
                scale_name(scale.services),
                d.median,
                2e6 / d.median,
                mode.name(),
                t.median,
                2e6 / t.median
            ),
            _ => String::new(),
        }
    };
    let noise = "client, server, softirq and other work share 2 noisy vCPUs; run-to-run spread (min–max) is of the same order as the difference";
    // What the program itself costs per connection, from part 1: about
    // ten packets (both directions) are conntrack hits, the SYN a new flow.
    let program_us = pp.and_then(|pp| pp.points.first()).and_then(|p| {
        Some((10.0 * p.delta(Case::CtHit)?.median + p.delta(Case::NewFlow)?.median) / 1000.0)
    });
    let pass_ratio = e2e.scales.last().and_then(|s| {
        Some((
            s.services,
            ratio(s, Mode::DirectXdpPass, Mode::Direct, Kind::Close, |r| {
                r.rate
            })?,
        ))
    });
    let over_pass = e2e.scales.last().and_then(|s| {
        Some((
            s.services,
            ratio(s, Mode::McsXdp, Mode::DirectXdpPass, Kind::Close, |r| {
                r.rate
            })?,
        ))
    });
    let (text, met) = per_scale(Mode::McsXdp, Mode::Direct, |r| r.rate, 0.95, true);
    goals.push(Goal {
        part: "end to end".into(),
        goal: "mcs XDP ≥ 0.95× direct new connections/s, every scale".into(),
        measured: text,
        met,
        limits: if met == Some(false) {
            format!(
                "{}the program itself accounts for ≈ {} µs per connection (≈ 10 packets × Δ conntrack hit + one new flow, part 1); the rest is XDP on veth: an XDP_PASS program on the same two veths already gives {} of direct{} and mcs reaches {} of that (same-run control `direct+xdp-pass`) — a native XDP program moves the veth's receive path to NAPI and copies every cloned skb (all TCP segments) into a buffer with XDP headroom before the program runs: the cost of attaching at veths, not of the lookups; {noise}",
                cost_note(Mode::McsXdp),
                program_us.map_or("?".to_owned(), |us| format!("{us:.1}")),
                pass_ratio.map_or("?".to_owned(), |(_, r)| r.display(2)),
                pass_ratio.map_or(String::new(), |(n, _)| format!(" at {}", scale_name(n))),
                over_pass.map_or("?".to_owned(), |(_, r)| r.display(2)),
            )
        } else {
            String::new()
        },
    });
    let (text, met) = per_scale(Mode::McsXdp, Mode::Direct, |r| r.p99_us, 1.1, false);
    goals.push(Goal {
        part: "end to end".into(),
        goal: "mcs XDP p99 latency (Connection: close) ≤ 1.1× direct, every scale".into(),
        measured: text,
        met,
        limits: if met == Some(false) {
            format!("p99 of a few thousand connections per run is set by scheduling delays on the shared vCPUs (milliseconds), not by the ~µs the program adds; {noise}")
        } else {
            String::new()
        },
    });
    if let Some(scale) = e2e.scales.last() {
        let suffix = if full_scale {
            String::new()
        } else {
            " (smoke size: not the goal's 10k scale)".to_owned()
        };
        for (other, limit) in [(Mode::Iptables, 3.5), (Mode::Nftables, 1.15)] {
            let r = ratio(scale, Mode::McsXdp, other, Kind::Close, |r| r.rate);
            let met = r.map(|r| r.median >= limit);
            goals.push(Goal {
                part: "end to end".into(),
                goal: format!("mcs XDP ≥ {limit}× {} new connections/s at 10k services", other.name()),
                measured: format!("at {}: {}{suffix}", scale_name(scale.services), fmt_summary(r, 2)),
                met: if full_scale { met } else { None },
                limits: if met == Some(false) {
                    let direct_ratio = ratio(scale, other, Mode::Direct, Kind::Close, |r| r.rate);
                    format!(
                        "{} itself reaches {} of direct here: mcs cannot be more than 1/that faster than {}, i.e. the baseline's per-connection cost on this machine is smaller than the goal assumed; {noise}",
                        other.name(),
                        fmt_summary(direct_ratio, 2),
                        other.name()
                    )
                } else {
                    String::new()
                },
            });
        }
    }
    let (text, met) = per_scale(Mode::McsSocklb, Mode::Direct, |r| r.rate, 0.98, true);
    goals.push(Goal {
        part: "end to end".into(),
        goal: "mcs socket LB ≥ 0.98× direct new connections/s, every scale".into(),
        measured: text,
        met,
        limits: if met == Some(false) {
            format!("{}connect() runs the cgroup connect4 program (service + Maglev + backend lookups, a reverse-NAT LRU insert) once per connection; {noise}", cost_note(Mode::McsSocklb))
        } else {
            String::new()
        },
    });
}

fn control_goals(c: &Control, goals: &mut Vec<Goal>) {
    let size = format!("{}×{}", scale_name(c.services), c.endpoints);
    let full = c.services >= 10_000;
    let suffix = if full {
        String::new()
    } else {
        " (smoke size)".to_owned()
    };
    let cold = Summary::of(&c.cold_sync_s);
    let met = cold.map(|s| s.median <= 0.5);
    goals.push(Goal {
        part: "control plane".into(),
        goal: "cold sync of 10k services × 10 endpoints ≤ 0.5 s".into(),
        measured: format!("{size}: {} s, {} map writes{suffix}", fmt_summary(cold, 3), c.cold_map_writes),
        met: if full { met } else { None },
        limits: if met == Some(false) {
            format!(
                "{} map writes, written with BPF_MAP_UPDATE_BATCH a group at a time (at the batched rate measured below that alone is {:.2} s; batching measured {} faster than single updates), plus building a Maglev table per frontend in userspace ({:.2} s for all on one CPU, timed alone) and the reconciler's bookkeeping; the three run as a pipeline of threads (tables, bookkeeping, writes) sharing the machine's CPUs",
                c.cold_map_writes,
                Summary::of(&c.batch_updates_per_s).map_or(f64::NAN, |s| c.cold_map_writes as f64 / s.median),
                fmt_summary(stats::paired_ratio(&c.batch_updates_per_s, &c.single_updates_per_s), 1),
                c.maglev_build_s
            )
        } else {
            String::new()
        },
    });
    let speedup = stats::paired_ratio(&c.iptables_restore_s, &c.cold_sync_s);
    let met = speedup.map(|s| s.median >= 30.0);
    goals.push(Goal {
        part: "control plane".into(),
        goal: "cold sync ≥ 30× faster than iptables-restore of the same services".into(),
        measured: format!(
            "{size}: iptables-restore {} s ({} rules) = {}× the mcs sync{suffix}",
            fmt_summary(Summary::of(&c.iptables_restore_s), 2),
            c.iptables_rules,
            fmt_summary(speedup, 1)
        ),
        met: if full { met } else { None },
        limits: if met == Some(false) {
            "the sync's map writes (batched, but still one kernel hash-map update per entry) and Maglev tables against a restore that the nf_tables backend commits in one transaction".into()
        } else {
            String::new()
        },
    });
    let p = |q| stats::percentile(&c.change.total_ms, q);
    let compute = stats::percentile(&c.change.compute_ms, 50.0);
    let diff = stats::percentile(&c.change.diff_ms, 50.0);
    let apply = stats::percentile(&c.change.apply_ms, 50.0);
    for (q, limit) in [(50.0, 2.0), (99.0, 10.0)] {
        let value = p(q);
        let met = value.map(|v| v <= limit);
        goals.push(Goal {
            part: "control plane".into(),
            goal: format!("p{q:.0} endpoint change → map ≤ {limit} ms with 10k×10 loaded"),
            measured: format!(
                "{size}: p{q:.0} {} ms over {} changes (p50: changed set {} ms, desired state incl. changed set {} ms, map writes {} ms, {:.1} writes/change){suffix}",
                value.map_or("–".into(), |v| format!("{v:.2}")),
                c.change.total_ms.len(),
                diff.map_or("–".into(), |v| format!("{v:.3}")),
                compute.map_or("–".into(), |v| format!("{v:.3}")),
                apply.map_or("–".into(), |v| format!("{v:.3}")),
                c.change.map_writes_per_change
            ),
            met: if full { met } else { None },
            limits: if met == Some(false) {
                "the agent diffs the whole new snapshot against the last one to find the changed objects (O(objects) comparisons, see the changed-set time), then recomputes only the affected imports and writes only their frontends".into()
            } else {
                String::new()
            },
        });
    }
    #[expect(clippy::cast_precision_loss, reason = "KiB to MiB")]
    let rss = c.agent.vm_hwm_kib as f64 / 1024.0;
    let met = (c.agent.vm_hwm_kib > 0).then_some(rss <= 128.0);
    goals.push(Goal {
        part: "control plane".into(),
        goal: "agent peak RSS ≤ 128 MiB at 10k×10".into(),
        measured: format!("{size}: VmHWM {rss:.1} MiB (VmRSS after sync {:.1} MiB){suffix}", c.agent.vm_rss_kib as f64 / 1024.0),
        met: if full { met } else { None },
        limits: if met == Some(false) {
            "the manifest text and the model (converted document by document) are alive at once during a reload, the agent keeps the last applied snapshot and the desired state, and the reconciler every frontend's backends".into()
        } else {
            String::new()
        },
    });
}

pub fn goals(report: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    if let Some(pp) = &report.per_packet {
        per_packet_goals(pp, &mut goals);
    }
    if let Some(e2e) = &report.e2e {
        e2e_goals(e2e, report.per_packet.as_ref(), &mut goals);
    }
    if let Some(c) = &report.control {
        control_goals(c, &mut goals);
    }
    goals
}

// ---------------------------------------------------------------- markdown

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
    md
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
    md.push_str("\n![per-packet cost](perpacket.svg)\n");
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
        md.push_str("| mode | new conn/s (close) | × direct | p50 ms | p99 ms | p99 × direct | handshake p50/p99 µs | keep-alive req/s | × direct | ka p50/p99 µs | UDP req/s | × direct | UDP p99 µs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for mode in Mode::ALL {
            let Some(m) = scale.mode(mode) else { continue };
            let s = |kind, f: fn(&LoadResult) -> f64| Summary::of(&m.values(kind, f));
            let med = |kind, f: fn(&LoadResult) -> f64| s(kind, f).map_or(f64::NAN, |s| s.median);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.2} | {} | {:.0} / {:.0} | {} | {} | {:.0} / {:.0} | {} | {} | {:.0} |",
                mode.name(),
                fmt_summary(s(Kind::Close, |r| r.rate), 0),
                fmt_summary(ratio(scale, mode, Mode::Direct, Kind::Close, |r| r.rate), 2),
                us_to_ms(med(Kind::Close, |r| r.p50_us)),
                us_to_ms(med(Kind::Close, |r| r.p99_us)),
                fmt_summary(
                    ratio(scale, mode, Mode::Direct, Kind::Close, |r| r.p99_us),
                    2
                ),
                med(Kind::Close, |r| r.handshake_p50_us),
                med(Kind::Close, |r| r.handshake_p99_us),
                fmt_summary(s(Kind::Keepalive, |r| r.rate), 0),
                fmt_summary(
                    ratio(scale, mode, Mode::Direct, Kind::Keepalive, |r| r.rate),
                    2
                ),
                med(Kind::Keepalive, |r| r.p50_us),
                med(Kind::Keepalive, |r| r.p99_us),
                fmt_summary(s(Kind::Udp, |r| r.rate), 0),
                fmt_summary(ratio(scale, mode, Mode::Direct, Kind::Udp, |r| r.rate), 2),
                med(Kind::Udp, |r| r.p99_us),
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
         | of which changed set (snapshot diff) p50 / p99 | {} / {} ms |\n\
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
    md.push_str("\nBPF map memory by map:\n\n| map | MiB |\n|---|---|\n");
    for (name, bytes) in &c.agent.bpf_maps {
        let _ = writeln!(md, "| {name} | {:.2} |", *bytes as f64 / 1_048_576.0);
    }
    md.push_str("\n![control plane](control.svg)\n");
}

// ---------------------------------------------------------------- plots

fn point(x: f64, s: Option<Summary>) -> Point {
    s.map_or(
        Point {
            x,
            y: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        },
        |s| Point {
            x,
            y: s.median,
            lo: s.min,
            hi: s.max,
        },
    )
}

/// The SVG files of the report: (file name, contents).
pub fn plots(report: &Report) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if let Some(pp) = &report.per_packet {
        let mut fills: Vec<usize> = pp.points.iter().map(|p| p.conntrack_fill).collect();
        fills.sort_unstable();
        fills.dedup();
        let mut series = Vec::new();
        for case in [
            Case::Lookup,
            Case::Miss,
            Case::CtHit,
            Case::Reply,
            Case::NewFlow,
        ] {
            for fill in &fills {
                series.push(Series {
                    name: format!("{} @ CT {}", case.key(), scale_name(*fill)),
                    points: pp
                        .points
                        .iter()
                        .filter(|p| p.conntrack_fill == *fill)
                        .map(|p| point(p.services as f64, p.delta(case)))
                        .collect(),
                });
            }
        }
        files.push((
            "perpacket.svg",
            svg::line_chart(
                "Per-packet cost over XDP_PASS (BPF_PROG_TEST_RUN)",
                "services",
                "ns per packet over XDP_PASS",
                true,
                &series,
            ),
        ));
    }
    if let Some(e2e) = &report.e2e {
        let series = |f: fn(&LoadResult) -> f64| -> Vec<Series> {
            Mode::ALL
                .iter()
                .map(|mode| Series {
                    name: mode.name().to_owned(),
                    points: e2e
                        .scales
                        .iter()
                        .map(|s| {
                            point(
                                s.services as f64,
                                Summary::of(&rates(s, *mode, Kind::Close, f)),
                            )
                        })
                        .collect(),
                })
                .collect()
        };
        files.push((
            "e2e-conn.svg",
            svg::line_chart(
                "New connections/s (Connection: close)",
                "services × 10 endpoints",
                "connections/s",
                true,
                &series(|r| r.rate),
            ),
        ));
        files.push((
            "e2e-p99.svg",
            svg::line_chart(
                "p99 request latency (Connection: close)",
                "services × 10 endpoints",
                "µs",
                true,
                &series(|r| r.p99_us),
            ),
        ));
    }
    if let Some(c) = &report.control {
        let bar = |label: String, s: Option<Summary>| {
            s.map_or(
                Bar {
                    label: label.clone(),
                    value: f64::NAN,
                    lo: f64::NAN,
                    hi: f64::NAN,
                },
                |s| Bar {
                    label,
                    value: s.median,
                    lo: s.min,
                    hi: s.max,
                },
            )
        };
        let size = format!("{}×{}", scale_name(c.services), c.endpoints);
        let bars = vec![
            bar(format!("mcs cold sync {size}"), Summary::of(&c.cold_sync_s)),
            bar(
                format!("iptables-restore {size}"),
                Summary::of(&c.iptables_restore_s),
            ),
        ];
        files.push((
            "control.svg",
            svg::bar_chart("Cold sync of all services", "seconds", &bars),
        ));
    }
    files
}

/// Writes report.json, report.md and the plots into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<Goal>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let goals = goals(report);
    let json = serde_json::json!({ "report": report, "goals": goals });
    fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("write report.json")?;
    fs::write(dir.join("report.md"), markdown(report, &goals)).context("write report.md")?;
    for (name, contents) in plots(report) {
        fs::write(dir.join(name), contents).with_context(|| format!("write {name}"))?;
    }
    Ok(goals)
}

/// Reads a report.json written by [`write`].
pub fn read(path: &Path) -> Result<Report> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("parse report.json")?;
    let report = value
        .get("report")
        .cloned()
        .context("no `report` in report.json")?;
    serde_json::from_value(report).context("report.json has an unexpected shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::{AgentMemory, ChangeTimes},
        e2e::ModeResult,
        perpacket::CaseResult,
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
                        Mode::McsXdp => xdp,
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
}
