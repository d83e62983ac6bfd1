//! The report's SVG plots: per-packet cost by size, end-to-end connection
//! rate and p99 latency by scale, and the cold sync against
//! iptables-restore.

use super::{Report, rates, scale_name};
use crate::{
    e2e::Mode,
    load::{Kind, LoadResult},
    perpacket::Case,
    stats::{self, Summary},
    svg::{self, Bar, Point, Series},
};

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
            Case::MissV6,
            Case::CtHitV6,
            Case::ReplyV6,
            Case::NewFlowV6,
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
        let mut bars = vec![
            bar(format!("mcs cold sync {size}"), Summary::of(&c.cold_sync_s)),
            bar(
                format!("iptables-restore {size}"),
                Summary::of(&c.iptables_restore_s),
            ),
        ];
        for point in &report.scale {
            bars.push(bar(
                format!(
                    "mcs cold sync {}×{}×{}",
                    scale_name(point.services),
                    point.endpoints,
                    point.ports_per_service
                ),
                Summary::of(&point.cold_sync_s),
            ));
        }
        files.push((
            "control.svg",
            svg::bar_chart("Cold sync of all services", "seconds", &bars),
        ));
    }
    if let Some(c) = &report.controller {
        let percentiles = |samples: &[f64]| -> Vec<Point> {
            (1..=100)
                .filter_map(|q| {
                    let y = stats::percentile(samples, f64::from(q))?;
                    Some(Point {
                        x: f64::from(q),
                        y,
                        lo: y,
                        hi: y,
                    })
                })
                .collect()
        };
        let series = [
            Series {
                name: "export → import (every cluster)".to_owned(),
                points: percentiles(&c.export_to_import_ms),
            },
            Series {
                name: "endpoint change → map".to_owned(),
                points: percentiles(&c.endpoint_change_ms),
            },
        ];
        files.push((
            "controller.svg",
            svg::line_chart(
                &format!(
                    "Controller latencies, {} exports across {} clusters",
                    scale_name(c.exports),
                    c.clusters
                ),
                "percentile",
                "ms",
                false,
                &series,
            ),
        ));
    }
    files
}
