//! How each goal of the table in `goals.rs` is measured: the numbers a
//! report holds for it, whether they meet the goal's limit, and the values
//! its texts quote.

use super::{Report, fmt_summary, rates, ratio, scale_name};
use crate::{
    change::ChangeTimes,
    control::Control,
    controller::ControllerBench,
    e2e::Mode,
    load::{Kind, LoadResult},
    perpacket::{Case, PointResult},
    scale::ScalePoint,
    stats::{self, Summary},
};

/// A goal's numbers in one report.
pub struct Measured {
    /// The numbers, as the goal table shows them.
    pub text: String,
    /// Whether they meet the goal; `None`: not measured.
    pub met: Option<bool>,
    /// Whether the run had the goal's size (a smoke run measures, but its
    /// numbers do not judge a goal set for 10k services).
    pub at_goal_size: bool,
    /// Values for the `{name}`s of the goal's texts.
    pub values: Vec<(&'static str, String)>,
}

impl Measured {
    pub(super) fn new(text: String, met: Option<bool>) -> Self {
        Self {
            text,
            met,
            at_goal_size: true,
            values: Vec::new(),
        }
    }
}

/// An end-to-end number compared against the direct path.
pub struct Metric {
    value: fn(&LoadResult) -> f64,
    /// Whether the goal is a floor (at least `limit` × direct) rather than
    /// a ceiling.
    at_least: bool,
}

/// New connections per second.
pub const RATE: Metric = Metric {
    value: |r| r.rate,
    at_least: true,
};

/// p99 request latency.
pub const P99: Metric = Metric {
    value: |r| r.p99_us,
    at_least: false,
};

/// A per-packet case's cost in calibration lookups, at every point.
pub fn per_packet_case(report: &Report, case: Case, limit: f64) -> Option<Measured> {
    let pp = report.per_packet.as_ref()?;
    let base = pp.points.first()?;
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
    let text = format!(
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
    let lru_insert = match (
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
    // A new flow inserts twice: whether that alone costs more than the goal.
    let inserts_over_limit = match base.in_lookups(Case::LruInsert) {
        Some(common) if 2.0 * common.median > limit => {
            ": the two inserts alone cost more than the goal"
        }
        _ => "",
    };
    Some(Measured {
        values: vec![
            ("lru_insert", lru_insert),
            ("inserts_over_limit", inserts_over_limit.to_owned()),
        ],
        ..Measured::new(text, met)
    })
}

/// Growth of the cost over XDP_PASS from the fewest services to the most, at
/// each conntrack fill: the goal is about the service count, and conntrack
/// fill has its own goal (the new-flow floor, whose LRU inserts slow down
/// with the fill themselves). The growth across fills is reported beside it.
pub fn per_packet_growth(report: &Report, limit: f64) -> Option<Measured> {
    let pp = report.per_packet.as_ref()?;
    let mut fills: Vec<usize> = pp.points.iter().map(|p| p.conntrack_fill).collect();
    fills.sort_unstable();
    fills.dedup();
    let cases = [Case::Miss, Case::NewFlow, Case::CtHit, Case::Reply];
    let growth = |a: &PointResult, b: &PointResult, case: Case| {
        let (a, b) = (a.delta(case)?, b.delta(case)?);
        (a.median > 0.0).then(|| b.median / a.median)
    };
    let mut parts = Vec::new();
    let mut worst: f64 = 0.0;
    let mut compared = 0;
    let (mut fewest, mut most) = (usize::MAX, 0);
    for fill in &fills {
        let at_fill = || pp.points.iter().filter(|p| p.conntrack_fill == *fill);
        let (Some(first), Some(last)) = (
            at_fill().min_by_key(|p| p.services),
            at_fill().max_by_key(|p| p.services),
        ) else {
            continue;
        };
        if first.services == last.services {
            continue;
        }
        fewest = fewest.min(first.services);
        most = most.max(last.services);
        let mut line = Vec::new();
        for case in cases {
            if let Some(g) = growth(first, last, case) {
                worst = worst.max(g);
                compared += 1;
                line.push(format!("{} {g:.2}×", case.key()));
            }
        }
        parts.push(format!("{} CT: {}", scale_name(*fill), line.join(", ")));
    }
    // Across fills (not judged here: the new-flow floor goal covers it).
    if let (Some(first), Some(last)) = (pp.points.first(), pp.points.last())
        && first.conntrack_fill != last.conntrack_fill
    {
        let line: Vec<String> = cases
            .iter()
            .filter_map(|case| {
                Some(format!(
                    "{} {:.2}×",
                    case.key(),
                    growth(first, last, *case)?
                ))
            })
            .collect();
        parts.push(format!(
            "for comparison, {} services / {} CT → {} services / {} CT (conntrack fill grows too): {}",
            scale_name(first.services),
            scale_name(first.conntrack_fill),
            scale_name(last.services),
            scale_name(last.conntrack_fill),
            line.join(", ")
        ));
    }
    let met = (compared > 0).then_some(worst <= limit);
    let fills_text: Vec<String> = fills.iter().map(|f| scale_name(*f)).collect();
    Some(Measured {
        values: vec![
            (
                "smallest",
                format!("{} services", scale_name(fewest.min(most))),
            ),
            (
                "largest",
                format!(
                    "{} services, at each conntrack fill ({})",
                    scale_name(most),
                    fills_text.join(", ")
                ),
            ),
        ],
        ..Measured::new(parts.join("; "), met)
    })
}

/// `mode` against the direct path, at every scale of the end-to-end part.
pub fn e2e_every_scale(
    report: &Report,
    mode: Mode,
    metric: Metric,
    limit: f64,
) -> Option<Measured> {
    let e2e = report.e2e.as_ref()?;
    let values: Vec<(usize, Option<Summary>)> = e2e
        .scales
        .iter()
        .map(|s| {
            (
                s.services,
                ratio(s, mode, mode.direct(), Kind::Close, metric.value),
            )
        })
        .collect();
    let met = (values.iter().all(|(_, r)| r.is_some()) && !values.is_empty()).then(|| {
        values.iter().all(|(_, r)| {
            r.is_some_and(|r| {
                if metric.at_least {
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
    // What a connection costs at the largest scale, and what the program
    // itself accounts for (from part 1: about ten packets, both directions,
    // are conntrack hits, the SYN a new flow).
    let largest = e2e.scales.last();
    let program_us = report
        .per_packet
        .as_ref()
        .and_then(|pp| pp.points.first())
        .and_then(|p| {
            Some((10.0 * p.delta(Case::CtHit)?.median + p.delta(Case::NewFlow)?.median) / 1000.0)
        });
    let close_rate = |s, a, b| ratio(s, a, b, Kind::Close, |r| r.rate);
    let xdp_pass = largest.and_then(|s| {
        Some((
            s.services,
            close_rate(s, Mode::DirectXdpPass, Mode::Direct)?,
        ))
    });
    let over_xdp_pass = largest.and_then(|s| close_rate(s, Mode::McsXdp, Mode::DirectXdpPass));
    let tc_pass = largest.and_then(|s| close_rate(s, Mode::DirectTcPass, Mode::Direct));
    Some(Measured {
        values: vec![
            ("cost_at_largest", connection_cost(report, mode)),
            (
                "program_us",
                program_us.map_or("?".to_owned(), |us| format!("{us:.1}")),
            ),
            (
                "xdp_pass_ratio",
                xdp_pass.map_or("?".to_owned(), |(_, r)| r.display(2)),
            ),
            (
                "xdp_pass_at",
                xdp_pass.map_or(String::new(), |(n, _)| format!(" at {}", scale_name(n))),
            ),
            (
                "over_xdp_pass",
                over_xdp_pass.map_or("?".to_owned(), |r| r.display(2)),
            ),
            (
                "tc_pass_ratio",
                tc_pass.map_or("?".to_owned(), |r| r.display(2)),
            ),
        ],
        ..Measured::new(text, met)
    })
}

/// `mode` against `floor` (a pass-only program at the same hook) in new
/// connections/s, at every scale: what the program costs beyond the hook.
pub fn e2e_over_floor(report: &Report, mode: Mode, floor: Mode, limit: f64) -> Option<Measured> {
    let e2e = report.e2e.as_ref()?;
    let values: Vec<(usize, Option<Summary>)> = e2e
        .scales
        .iter()
        .map(|s| (s.services, ratio(s, mode, floor, Kind::Close, |r| r.rate)))
        .collect();
    let met = (!values.is_empty() && values.iter().all(|(_, r)| r.is_some())).then(|| {
        values
            .iter()
            .all(|(_, r)| r.is_some_and(|r| r.median >= limit))
    });
    let text = values
        .iter()
        .map(|(n, r)| format!("{}: {}", scale_name(*n), fmt_summary(*r, 2)))
        .collect::<Vec<_>>()
        .join("; ");
    let floors = e2e
        .scales
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                scale_name(s.services),
                fmt_summary(ratio(s, floor, Mode::Direct, Kind::Close, |r| r.rate), 2)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The rewriting floor (a tc program making mcs's helper calls with
    // unchanged values), against the pass-only floor and against mcs.
    let against = |a: Mode, b: Mode| {
        e2e.scales
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    scale_name(s.services),
                    fmt_summary(ratio(s, a, b, Kind::Close, |r| r.rate), 2)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(Measured {
        values: vec![
            ("floor", floor.name().to_owned()),
            ("floors", floors),
            (
                "write_over_pass",
                against(Mode::DirectTcWrite, Mode::DirectTcPass),
            ),
            ("over_write", against(mode, Mode::DirectTcWrite)),
            ("one_dest", against(Mode::DirectOne, Mode::Direct)),
            ("over_one_dest", against(mode, Mode::DirectOne)),
        ],
        ..Measured::new(text, met)
    })
}

/// IPv6 `mode` against direct-v6 in new connections/s at every scale, with
/// its ratio to its IPv4 mode (same namespaces, same agent) beside.
pub fn e2e_v6(report: &Report, mode: Mode, limit: f64) -> Option<Measured> {
    let e2e = report.e2e.as_ref()?;
    let rate = |s, a, b| ratio(s, a, b, Kind::Close, |r: &LoadResult| r.rate);
    let values: Vec<(usize, Option<Summary>, Option<Summary>)> = e2e
        .scales
        .iter()
        .map(|s| {
            (
                s.services,
                rate(s, mode, Mode::DirectV6),
                rate(s, mode, mode.ipv4()),
            )
        })
        .collect();
    let met = (!values.is_empty() && values.iter().all(|(_, r, _)| r.is_some())).then(|| {
        values
            .iter()
            .all(|(_, r, _)| r.is_some_and(|r| r.median >= limit))
    });
    let text = values
        .iter()
        .map(|(n, r, v4)| {
            format!(
                "{}: {} (× {} {})",
                scale_name(*n),
                fmt_summary(*r, 2),
                mode.ipv4().name(),
                fmt_summary(*v4, 2)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let direct = e2e
        .scales
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                scale_name(s.services),
                fmt_summary(rate(s, Mode::DirectV6, Mode::Direct), 2)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(Measured {
        values: vec![("v6_over_v4_direct", direct)],
        ..Measured::new(text, met)
    })
}

/// Direct and `mode`'s new connections/s at the largest scale, as CPU time
/// per connection.
fn connection_cost(report: &Report, mode: Mode) -> String {
    let Some(scale) = report.e2e.as_ref().and_then(|e2e| e2e.scales.last()) else {
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
}

/// mcs XDP against a kube-proxy baseline at the largest scale.
pub fn e2e_versus(report: &Report, baseline: Mode, limit: f64) -> Option<Measured> {
    let scale = report.e2e.as_ref()?.scales.last()?;
    let full_scale = scale.services >= 10_000;
    let suffix = if full_scale {
        ""
    } else {
        " (smoke size: not the goal's 10k scale)"
    };
    let r = ratio(scale, Mode::McsXdp, baseline, Kind::Close, |r| r.rate);
    let text = format!(
        "at {}: {}{suffix}",
        scale_name(scale.services),
        fmt_summary(r, 2)
    );
    let vs_direct = ratio(scale, baseline, Mode::Direct, Kind::Close, |r| r.rate);
    Some(Measured {
        at_goal_size: full_scale,
        values: vec![
            ("baseline", baseline.name().to_owned()),
            ("baseline_vs_direct", fmt_summary(vs_direct, 2)),
        ],
        ..Measured::new(text, r.map(|r| r.median >= limit))
    })
}

/// The control part's size, whether it is the goals' (10k services), and
/// the note a smaller run's numbers carry.
fn control_size(c: &Control) -> (String, bool, &'static str) {
    let full = c.services >= 10_000;
    (
        format!("{}×{}", scale_name(c.services), c.endpoints),
        full,
        if full { "" } else { " (smoke size)" },
    )
}

/// Cold sync of every service into empty maps, in seconds.
pub fn cold_sync(report: &Report, limit: f64) -> Option<Measured> {
    let c = report.control.as_ref()?;
    let (size, full, suffix) = control_size(c);
    let cold = Summary::of(&c.cold_sync_s);
    let text = format!(
        "{size}: {} s, {} map writes{suffix}",
        fmt_summary(cold, 3),
        c.cold_map_writes
    );
    let batched_s = Summary::of(&c.batch_updates_per_s)
        .map_or(f64::NAN, |s| c.cold_map_writes as f64 / s.median);
    Some(Measured {
        at_goal_size: full,
        values: vec![
            ("map_writes", c.cold_map_writes.to_string()),
            ("batched_writes_s", format!("{batched_s:.2}")),
            (
                "batch_vs_single",
                fmt_summary(
                    stats::paired_ratio(&c.batch_updates_per_s, &c.single_updates_per_s),
                    1,
                ),
            ),
            ("maglev_s", format!("{:.2}", c.maglev_build_s)),
        ],
        ..Measured::new(text, cold.map(|s| s.median <= limit))
    })
}

/// iptables-restore of the same services ÷ the cold sync.
pub fn cold_sync_vs_iptables(report: &Report, limit: f64) -> Option<Measured> {
    let c = report.control.as_ref()?;
    let (size, full, suffix) = control_size(c);
    let speedup = stats::paired_ratio(&c.iptables_restore_s, &c.cold_sync_s);
    let text = format!(
        "{size}: iptables-restore {} s ({} rules) = {}× the mcs sync{suffix}",
        fmt_summary(Summary::of(&c.iptables_restore_s), 2),
        c.iptables_rules,
        fmt_summary(speedup, 1)
    );
    Some(Measured {
        at_goal_size: full,
        ..Measured::new(text, speedup.map(|s| s.median >= limit))
    })
}

/// Percentile `q` of an endpoint change's way into the maps, in ms.
pub fn endpoint_change(report: &Report, q: f64, limit: f64) -> Option<Measured> {
    let c = report.control.as_ref()?;
    let (size, full, suffix) = control_size(c);
    let value = stats::percentile(&c.change.total_ms, q);
    let median = |values: &[f64]| {
        stats::percentile(values, 50.0).map_or("–".into(), |v| format!("{v:.3}"))
    };
    let text = format!(
        "{size}: p{q:.0} {} ms over {} changes (p50: changed set {} ms, desired state incl. changed set {} ms, map writes {} ms, {:.1} writes/change){suffix}",
        value.map_or("–".into(), |v| format!("{v:.2}")),
        c.change.total_ms.len(),
        median(&c.change.diff_ms),
        median(&c.change.compute_ms),
        median(&c.change.apply_ms),
        c.change.map_writes_per_change
    );
    Some(Measured {
        at_goal_size: full,
        ..Measured::new(text, value.map(|v| v <= limit))
    })
}

/// The agent's peak resident memory, in MiB.
pub fn agent_rss(report: &Report, limit: f64) -> Option<Measured> {
    let c = report.control.as_ref()?;
    let (size, full, suffix) = control_size(c);
    #[expect(clippy::cast_precision_loss, reason = "KiB to MiB")]
    let rss = c.agent.vm_hwm_kib as f64 / 1024.0;
    let text = format!(
        "{size}: VmHWM {rss:.1} MiB (VmRSS after sync {:.1} MiB){suffix}",
        c.agent.vm_rss_kib as f64 / 1024.0
    );
    Some(Measured {
        at_goal_size: full,
        ..Measured::new(text, (c.agent.vm_hwm_kib > 0).then_some(rss <= limit))
    })
}

/// The controller part's size, whether it is the goals' (1 000 exports),
/// and the values its texts quote.
fn controller_size(c: &ControllerBench) -> (String, bool, Vec<(&'static str, String)>) {
    let full = c.exports >= 1000;
    let reconcile: Vec<f64> = c
        .controllers
        .iter()
        .map(|r| r.mean_ms)
        .filter(|v| v.is_finite())
        .collect();
    let reconcile_ms = Summary::of(&reconcile).map_or("?".to_owned(), |s| {
        if s.max - s.min < 0.05 {
            format!("{:.1}", s.median)
        } else {
            format!("{:.1}–{:.1}", s.min, s.max)
        }
    });
    (
        format!(
            "{} exports / {} clusters{}",
            scale_name(c.exports),
            c.clusters,
            if full { "" } else { " (smoke size)" }
        ),
        full,
        vec![
            ("reconcile_ms", reconcile_ms),
            ("rate", format!("{}", c.export_rate)),
        ],
    )
}

/// Percentile `q` of `samples` (ms) against a limit in seconds, as a goal
/// row: also the median, min–max, count and what was not seen at all.
fn latency_goal(
    c: &ControllerBench,
    samples: &[f64],
    not_seen: usize,
    q: f64,
    limit_s: f64,
) -> Measured {
    let (size, full, values) = controller_size(c);
    let value = stats::percentile(samples, q);
    let spread =
        Summary::of(samples).map_or("–".to_owned(), |s| format!("{:.0}–{:.0}", s.min, s.max));
    let text = format!(
        "{size}: p{q:.0} {} ms (p50 {} ms, min–max {spread} ms, n = {}{})",
        value.map_or("–".into(), |v| format!("{v:.0}")),
        stats::percentile(samples, 50.0).map_or("–".into(), |v| format!("{v:.0}")),
        samples.len(),
        if not_seen > 0 {
            format!(", {not_seen} never seen")
        } else {
            String::new()
        }
    );
    Measured {
        at_goal_size: full,
        values,
        ..Measured::new(text, value.map(|v| v / 1000.0 <= limit_s && not_seen == 0))
    }
}

/// Percentile `q` of export → import (seen in every cluster).
pub fn export_to_import(report: &Report, q: f64, limit: f64) -> Option<Measured> {
    let c = report.controller.as_ref()?;
    Some(latency_goal(
        c,
        &c.export_to_import_ms,
        c.exports_not_seen,
        q,
        limit,
    ))
}

/// Percentile `q` of endpoint change → the agent's map in another cluster.
pub fn endpoint_change_to_map(report: &Report, q: f64, limit: f64) -> Option<Measured> {
    let c = report.controller.as_ref()?;
    let mut measured = latency_goal(c, &c.endpoint_change_ms, c.changes_not_seen, q, limit);
    let split = |samples: &[f64]| {
        format!(
            "p50 {} / p99 {} ms",
            stats::percentile(samples, 50.0).map_or("–".into(), |v| format!("{v:.0}")),
            stats::percentile(samples, 99.0).map_or("–".into(), |v| format!("{v:.0}"))
        )
    };
    measured
        .values
        .push(("controller_part", split(&c.change_controller_ms)));
    measured
        .values
        .push(("agent_part", split(&c.change_agent_ms)));
    Some(measured)
}

/// A new flow's cost over XDP_PASS against its floor in the same round:
/// two conntrack-shaped LRU inserts plus four calibration lookups.
pub fn new_flow_floor(report: &Report, limit: f64) -> Option<Measured> {
    let pp = report.per_packet.as_ref()?;
    let over_floor = |p: &PointResult| -> Option<Summary> {
        let pass = &p.case(Case::Pass)?.katran_ns;
        let delta = |case| -> Option<Vec<f64>> {
            Some(
                p.case(case)?
                    .katran_ns
                    .iter()
                    .zip(pass)
                    .map(|(c, p)| c - p)
                    .collect(),
            )
        };
        let (new, lru, lookup) = (
            delta(Case::NewFlow)?,
            delta(Case::LruInsert)?,
            delta(Case::Lookup)?,
        );
        let floor: Vec<f64> = lru
            .iter()
            .zip(&lookup)
            .map(|(l, k)| 2.0 * l + 4.0 * k)
            .collect();
        stats::paired_ratio(&new, &floor)
    };
    let per_point: Vec<(&PointResult, Summary)> = pp
        .points
        .iter()
        .filter_map(|p| Some((p, over_floor(p)?)))
        .collect();
    let base = pp.points.first()?;
    let worst = per_point
        .iter()
        .max_by(|a, b| a.1.median.total_cmp(&b.1.median));
    let met = (!per_point.is_empty()).then(|| per_point.iter().all(|(_, s)| s.median <= limit));
    let median = |case| {
        base.delta(case)
            .map_or("–".into(), |s| format!("{:.0}", s.median))
    };
    let text = format!(
        "{} of the floor at {} services / {} CT (Δ new flow {} ns; Δ LRU insert {} ns, Δ lookup {} ns); worst point {}",
        fmt_summary(over_floor(base), 2),
        scale_name(base.services),
        scale_name(base.conntrack_fill),
        median(Case::NewFlow),
        median(Case::LruInsert),
        median(Case::Lookup),
        worst.map_or("–".into(), |(p, s)| format!(
            "{:.2} ({} services, {} CT)",
            s.median,
            scale_name(p.services),
            scale_name(p.conntrack_fill)
        )),
    );
    Some(Measured::new(text, met))
}

/// The scale part's one-port point (the goals' set) and how the others
/// compare, for a goal's text.
fn scale_points(report: &Report) -> Option<(&ScalePoint, Vec<&ScalePoint>)> {
    let judged = report.scale.iter().find(|p| p.ports_per_service == 1)?;
    let others = report
        .scale
        .iter()
        .filter(|p| p.ports_per_service != 1)
        .collect();
    Some((judged, others))
}

fn scale_size(p: &ScalePoint) -> String {
    format!(
        "{}×{}×{}",
        scale_name(p.services),
        p.endpoints,
        p.ports_per_service
    )
}

/// A scale goal: `value` of the one-port point against `limit` (at most),
/// the other points shown, not judged.
fn scale_goal(
    report: &Report,
    limit: f64,
    value: impl Fn(&ScalePoint) -> Option<f64>,
    show: impl Fn(&ScalePoint) -> String,
) -> Option<Measured> {
    let (judged, others) = scale_points(report)?;
    let full = judged.services >= 100_000;
    let suffix = if full { "" } else { " (smoke size)" };
    let mut text = format!("{}: {}{suffix}", scale_size(judged), show(judged));
    for other in others {
        text.push_str(&format!(
            "; {}: {} (not judged)",
            scale_size(other),
            show(other)
        ));
    }
    Some(Measured {
        at_goal_size: full,
        ..Measured::new(text, value(judged).map(|v| v <= limit))
    })
}

pub fn scale_cold_sync(report: &Report, limit: f64) -> Option<Measured> {
    let mut measured = scale_goal(
        report,
        limit,
        |p| Summary::of(&p.cold_sync_s).map(|s| s.median),
        |p| {
            format!(
                "{} s, {} map writes",
                fmt_summary(Summary::of(&p.cold_sync_s), 3),
                p.cold_map_writes
            )
        },
    )?;
    let (judged, _) = scale_points(report)?;
    measured.values = vec![
        ("maglev_s", format!("{:.2}", judged.maglev_build_s)),
        ("map_writes", judged.cold_map_writes.to_string()),
    ];
    Some(measured)
}

pub fn scale_rss(report: &Report, limit: f64) -> Option<Measured> {
    #[expect(clippy::cast_precision_loss, reason = "KiB to MiB")]
    let mib = |kib: u64| kib as f64 / 1024.0;
    scale_goal(
        report,
        limit,
        |p| (p.agent.vm_hwm_kib > 0).then(|| mib(p.agent.vm_hwm_kib)),
        |p| {
            format!(
                "VmHWM {:.1} MiB (model {:.0} MiB)",
                mib(p.agent.vm_hwm_kib),
                p.model_agent_bytes as f64 / 1_048_576.0
            )
        },
    )
}

pub fn scale_bpf_memory(report: &Report, limit: f64) -> Option<Measured> {
    #[expect(clippy::cast_precision_loss, reason = "bytes to MiB")]
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    scale_goal(
        report,
        limit,
        |p| (p.agent.bpf_memlock_bytes > 0).then(|| mib(p.agent.bpf_memlock_bytes)),
        |p| {
            let conntrack = p
                .flags
                .iter()
                .find_map(|f| f.strip_prefix("--conntrack-max="))
                .unwrap_or("?");
            format!(
                "{:.1} MiB with {conntrack} conntrack entries (model {:.1} MiB)",
                mib(p.agent.bpf_memlock_bytes),
                mib(p.model_bpf_bytes())
            )
        },
    )
}

fn change_text(change: &ChangeTimes, q: f64) -> String {
    let value = stats::percentile(&change.total_ms, q);
    let median = |values: &[f64]| {
        stats::percentile(values, 50.0).map_or("–".into(), |v| format!("{v:.3}"))
    };
    format!(
        "p{q:.0} {} ms over {} changes (p50: changed set {} ms, desired state incl. changed set {} ms, map writes {} ms)",
        value.map_or("–".into(), |v| format!("{v:.2}")),
        change.total_ms.len(),
        median(&change.diff_ms),
        median(&change.compute_ms),
        median(&change.apply_ms),
    )
}

pub fn scale_change(report: &Report, q: f64, limit: f64) -> Option<Measured> {
    let mut measured = scale_goal(
        report,
        limit,
        |p| stats::percentile(&p.change.total_ms, q),
        |p| change_text(&p.change, q),
    )?;
    let (judged, _) = scale_points(report)?;
    measured.values = vec![(
        "diff_p99",
        stats::percentile(&judged.change.diff_ms, q).map_or("?".into(), |v| format!("{v:.2}")),
    )];
    Some(measured)
}
