//! The dataplane's counters for `/metrics`, read from the pinned maps.
//!
//! Reading the maps walks them (conntrack included, for its fill: keys
//! only), so their part of the page is rendered at most once per
//! [`super::PAGE_MAX_AGE`] whatever the number of scrapes (`mod.rs`).
//! Conntrack appears only as a count (`map_fill_ratio`); its entries are
//! never listed here.

use std::{path::PathBuf, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use tracing::warn;

use crate::{dataplane::PinnedMaps, dump};

/// Reads the dataplane's counters from the pinned maps.
#[derive(Debug)]
pub(super) struct DataplaneCollector {
    bpffs_dir: PathBuf,
    /// Opened at the first scrape, reopened after a failed read.
    maps: Mutex<Option<PinnedMaps>>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedMaps")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl DataplaneCollector {
    pub(super) fn new(bpffs_dir: PathBuf) -> Self {
        Self {
            bpffs_dir,
            maps: Mutex::new(None),
        }
    }

    fn report(&self) -> Option<dump::DumpReport> {
        let mut maps = self.maps.lock().ok()?;
        if maps.is_none() {
            *maps = PinnedMaps::open(&self.bpffs_dir).ok();
        }
        match dump::collect(&maps.as_ref()?.0) {
            Ok(report) => Some(report),
            Err(error) => {
                warn!(error = %format!("{error:#}"), "cannot read the maps for metrics");
                *maps = None; // reopen next time
                None
            }
        }
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(report) = self.report() else {
            return Ok(());
        };
        let frontend = |s: &dump::ServiceDump| {
            vec![
                ("frontend", s.name.clone()),
                ("vip", s.vip.to_string()),
                ("port", s.port.to_string()),
                ("protocol", s.protocol.clone()),
            ]
        };
        for (name, help, pick) in [
            (
                "frontend_packets",
                "Packets translated per frontend.",
                (|s: &dump::Stats| s.packets) as fn(&dump::Stats) -> u64,
            ),
            (
                "frontend_bytes",
                "Bytes translated per frontend.",
                |s: &dump::Stats| s.bytes,
            ),
            (
                "frontend_new_flows",
                "New flows balanced per frontend.",
                |s: &dump::Stats| s.new_flows,
            ),
            (
                "frontend_refused",
                "New flows refused (no usable backend) per frontend.",
                |s: &dump::Stats| s.no_backend,
            ),
        ] {
            let rows: Vec<_> = report
                .services
                .iter()
                .map(|s| (frontend(s), pick(&s.stats)))
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        for (name, help, pick) in [
            (
                "socket_connections",
                "Sockets (connect/sendmsg) sent to a backend by socket LB, per frontend.",
                (|s: &dump::Stats| s.new_flows) as fn(&dump::Stats) -> u64,
            ),
            (
                "socket_refused",
                "Socket-LB connects refused (no usable backend), per frontend.",
                |s: &dump::Stats| s.no_backend,
            ),
        ] {
            let rows: Vec<_> = report
                .services
                .iter()
                .map(|s| (frontend(s), pick(&s.socket_stats)))
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        for (name, help, pick) in [
            (
                "backend_packets",
                "Packets per backend endpoint.",
                (|s: &dump::Stats| s.packets) as fn(&dump::Stats) -> u64,
            ),
            (
                "backend_bytes",
                "Bytes per backend endpoint.",
                |s: &dump::Stats| s.bytes,
            ),
            (
                "backend_new_flows",
                "New flows per backend endpoint.",
                |s: &dump::Stats| s.new_flows,
            ),
        ] {
            let rows: Vec<_> = report
                .backends
                .iter()
                .map(|b| {
                    (
                        vec![
                            ("backend", format!("{}:{}", b.addr, b.port)),
                            ("cluster", b.cluster.clone()),
                        ],
                        pick(&b.stats),
                    )
                })
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        for (name, help, pick) in [
            (
                "cluster_packets",
                "Packets per source cluster.",
                (|s: &dump::Stats| s.packets) as fn(&dump::Stats) -> u64,
            ),
            (
                "cluster_bytes",
                "Bytes per source cluster.",
                |s: &dump::Stats| s.bytes,
            ),
            (
                "cluster_new_flows",
                "New flows per source cluster.",
                |s: &dump::Stats| s.new_flows,
            ),
        ] {
            let rows: Vec<_> = report
                .clusters
                .iter()
                .map(|(cluster, stats)| (vec![("cluster", cluster.clone())], pick(stats)))
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        let drops: Vec<_> = report
            .drops
            .iter()
            .map(|(reason, count)| (vec![("reason", reason.clone())], *count))
            .collect();
        counter(
            &mut encoder,
            "drops",
            "Packets not forwarded, by reason.",
            &drops,
        )?;
        let fill: Vec<_> = report
            .maps
            .iter()
            .map(|m| {
                (
                    vec![("map", m.name.clone())],
                    m.entries as f64 / m.capacity.max(1) as f64,
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "map_fill_ratio",
            "Entries / capacity per map.",
            &fill,
        )?;
        Ok(())
    }
}
