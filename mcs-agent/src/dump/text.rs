//! The human-readable form of a dump.

use std::{fmt::Write as _, net::SocketAddr};

use super::DumpReport;

/// Human-readable form.
pub fn render_text(report: &DumpReport) -> String {
    let mut out = String::new();
    if report.services.is_empty() {
        out.push_str("no services\n");
    }
    for service in &report.services {
        let _ = writeln!(
            out,
            "{frontend}/{proto}  {name}  (frontend {id}, {n} backends, maglev table {m}, affinity {a})\n    per packet (tc, XDP): packets {p}  bytes {b}  new flows {f}  refused (no backend) {d}\n    socket LB: connections {sc}  refused {sr}",
            frontend = SocketAddr::new(service.vip, service.port),
            proto = service.protocol,
            name = service.name,
            id = service.frontend_id,
            n = service.backends.len(),
            m = service.maglev_table_size,
            a = service
                .affinity_timeout_seconds
                .map_or_else(|| "none".to_owned(), |t| format!("ClientIP {t}s")),
            p = service.stats.packets,
            b = service.stats.bytes,
            f = service.stats.new_flows,
            d = service.stats.no_backend,
            sc = service.socket_stats.new_flows,
            sr = service.socket_stats.no_backend,
        );
        for backend in &service.backends {
            let cluster = if backend.cluster.is_empty() {
                "-"
            } else {
                &backend.cluster
            };
            let _ = writeln!(
                out,
                "    [{slot}] {endpoint}  cluster {cluster}  {state}  table entries {entries}",
                slot = backend.slot,
                endpoint = SocketAddr::new(backend.addr, backend.port),
                state = backend.state,
                entries = backend.table_entries,
            );
        }
    }
    if !report.clusters.is_empty() {
        out.push_str("per source cluster:\n");
        for (cluster, stats) in &report.clusters {
            let name = if cluster.is_empty() { "-" } else { cluster };
            let _ = writeln!(
                out,
                "    {name}  packets {}  bytes {}  new flows {}",
                stats.packets, stats.bytes, stats.new_flows
            );
        }
    }
    if !report.backends.is_empty() {
        out.push_str("per backend:\n");
        for backend in &report.backends {
            let _ = writeln!(
                out,
                "    {}  packets {}  bytes {}  new flows {}",
                SocketAddr::new(backend.addr, backend.port),
                backend.stats.packets,
                backend.stats.bytes,
                backend.stats.new_flows
            );
        }
    }
    let _ = writeln!(out, "conntrack entries: {}", report.conntrack_entries);
    for flow in &report.conntrack {
        let _ = writeln!(
            out,
            "    {dir:7} {proto} {src} -> {dst}  nat {nat}  backend {backend}  [{flags}]  idle {idle:.1}s",
            dir = flow.direction,
            proto = flow.protocol,
            src = flow.src,
            dst = flow.dst,
            nat = flow.nat,
            backend = flow.backend,
            flags = flow.tcp_flags.join(","),
            idle = flow.idle_seconds,
        );
    }
    let fill: Vec<String> = report
        .maps
        .iter()
        .map(|m| format!("{}={}/{}", m.name, m.entries, m.capacity))
        .collect();
    let _ = writeln!(out, "maps: {}", fill.join(" "));
    let drops: Vec<String> = report
        .drops
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "drops: {}", drops.join(" "));
    out
}
