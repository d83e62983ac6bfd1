//! The IPv6 goal of the per-packet part: each IPv6 case's cost over
//! XDP_PASS against its IPv4 case's, paired by round in the same run.

use super::{Report, fmt_summary, measure::Measured, scale_name};
use crate::{
    perpacket::{Case, PointResult},
    stats::Summary,
};

/// Every IPv6 case over its IPv4 case at every point: met when each
/// median ratio is at most `limit`.
pub fn over_ipv4(report: &Report, limit: f64) -> Option<Measured> {
    let pp = report.per_packet.as_ref()?;
    let ratios: Vec<(&PointResult, Case, Summary)> = pp
        .points
        .iter()
        .flat_map(|p| {
            Case::V6_PAIRS
                .iter()
                .filter_map(move |&(v6, v4)| Some((p, v6, p.over_ipv4(v6, v4)?)))
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let base = pp.points.first()?;
    let at_base: Vec<String> = Case::V6_PAIRS
        .iter()
        .map(|&(v6, v4)| {
            format!(
                "{} {} (Δ {} vs {} ns)",
                v4.key(),
                fmt_summary(base.over_ipv4(v6, v4), 2),
                base.delta(v6)
                    .map_or("–".into(), |s| format!("{:.0}", s.median)),
                base.delta(v4)
                    .map_or("–".into(), |s| format!("{:.0}", s.median)),
            )
        })
        .collect();
    let worst = ratios
        .iter()
        .max_by(|a, b| a.2.median.total_cmp(&b.2.median));
    let met = ratios.iter().all(|(_, _, s)| s.median <= limit);
    let text = format!(
        "× IPv4 at {} services / {} CT: {}; worst {}",
        scale_name(base.services),
        scale_name(base.conntrack_fill),
        at_base.join(", "),
        worst.map_or("–".into(), |(p, case, s)| format!(
            "{:.2} ({}, {} services, {} CT)",
            s.median,
            case.key(),
            scale_name(p.services),
            scale_name(p.conntrack_fill)
        )),
    );
    Some(Measured::new(text, Some(met)))
}
