//! The IPv6 cases of the per-packet part: the same paths as the IPv4 cases
//! (miss, new flow, conntrack hit, reverse NAT) through the same `mcs_xdp`
//! in the same run, on an IPv6 ClusterSetIP the bench writes into the
//! `_V6` maps itself through the agent's map handles (the agent does not
//! program IPv6 from a manifest yet): one TCP frontend with ten backends,
//! beside the reconciler's IPv4 services, and an IPv6 conntrack prefilled
//! to the point's fill. Its frontend, backend counter and Maglev ids are
//! the room [`grow`] adds past what the IPv4 services were sized for.

use std::net::{Ipv6Addr, SocketAddrV6};

use anyhow::{Context as _, Result, ensure};
use aya::maps::IterableMap as _;
use mcs_agent::dataplane::MapSizes;
use mcs_common::{
    BACKEND_F_READY, BackendKey, BackendValueV6, CT_F_REPLY, CtKeyV6, CtValueV6, MaglevPlace,
    PROTO_TCP, SVC_F_NONE, SVC_F_VIP_MARKER, ServiceKeyV6, ServiceValue, programs,
};
use mcs_tests::packet::{Csum, Packet6, Proto, tcp_flags, verify6};

use super::{Bench, CLIENT_PORT, OUTLIER_CUTOFF, XDP_PASS, splitmix};
use crate::{bpfsys, rules::HTTP_PORT, stats};

/// The measured ClusterSetIP, its client and an address that is none.
pub const TARGET_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0x100, 0xa);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x110, 0, 0, 0, 0, 0, 2);
const NOT_A_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x102, 0, 0, 0, 0, 3, 4);
/// Backends of the measured frontend (as many as the IPv4 target's).
const BACKENDS: u16 = 10;
/// Target port of the backends.
const TARGET_PORT: u16 = 8080;
/// Maglev table size of the frontend (prime) and the 8-byte chunks it
/// takes (four 16-bit entries each).
const MAGLEV_SIZE: u32 = 1021;
const MAGLEV_CHUNKS: u32 = MAGLEV_SIZE.div_ceil(4);

/// The backends of the measured frontend.
pub fn target_backends6() -> Vec<Ipv6Addr> {
    (0..BACKENDS)
        .map(|i| Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 0x10 + i))
        .collect()
}

/// Where the IPv6 frontend lives in the shared id spaces: past what the
/// IPv4 services were sized for.
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    /// Frontend id of the service port; the two markers follow it.
    frontend: u32,
    /// First per-backend counter index.
    backend: u32,
    /// First Maglev chunk of its table.
    maglev_base: u32,
}

/// `sizes` with room for the IPv6 frontend (three frontends, its backends'
/// counters, its Maglev table) and an IPv6 conntrack as large as the IPv4
/// one; returns where that room is.
pub fn grow(sizes: &mut MapSizes) -> Ids {
    let ids = Ids {
        frontend: sizes.frontends,
        backend: sizes.backends,
        maglev_base: sizes.maglev_chunks,
    };
    sizes.frontends += 3;
    sizes.backends += u32::from(BACKENDS);
    sizes.maglev_chunks += MAGLEV_CHUNKS;
    sizes.conntrack_v6 = sizes.conntrack;
    ids
}

/// Writes the measured frontend (TCP port 80 and the ClusterSetIP's two
/// markers) and its backends into the `_V6` maps, prefilter bits with them.
pub fn program(bench: &mut Bench, ids: Ids) -> Result<()> {
    let maps = &mut bench.maps;
    let place = MaglevPlace {
        base: ids.maglev_base,
        size: MAGLEV_SIZE,
        wide: false,
    };
    // An even spread: the lookup reads one entry whatever the permutation.
    let table: Vec<u16> = (0..MAGLEV_SIZE)
        .map(|i| (i % u32::from(BACKENDS)) as u16)
        .collect();
    ensure!(
        maps.maglev.write(&[(place, &table)]).is_empty(),
        "write the IPv6 frontend's Maglev table"
    );
    for (offset, port, served) in [(0, HTTP_PORT, true), (1, 0, false), (2, 0, false)] {
        let frontend_id = ids.frontend + offset;
        let proto = if offset == 2 {
            mcs_common::PROTO_UDP
        } else {
            PROTO_TCP
        };
        let backends = if served {
            target_backends6()
        } else {
            Vec::new()
        };
        let value = ServiceValue {
            frontend_id,
            backend_count: backends.len() as u32,
            flags: if served { SVC_F_NONE } else { SVC_F_VIP_MARKER },
            affinity_timeout_s: 0,
            maglev_base: 0,
            maglev_size: 0,
        }
        .with_maglev(served.then_some(place));
        for (slot, addr) in (0u32..).zip(&backends) {
            let key = BackendKey { frontend_id, slot };
            let endpoint = SocketAddrV6::new(*addr, TARGET_PORT, 0, 0);
            let backend = BackendValueV6::new(endpoint, 0, BACKEND_F_READY, ids.backend + slot);
            maps.prefilter.put_backend(&key, &backend);
            maps.backends_v6
                .insert(key, backend, 0)
                .context("IPv6 backend")?;
        }
        let key = ServiceKeyV6::new(TARGET_VIP6, port, proto);
        maps.prefilter.put_service_v6(&key);
        maps.services_v6
            .insert(key, value, 0)
            .context("IPv6 frontend")?;
    }
    Ok(())
}

fn v6(host: u64) -> Ipv6Addr {
    let [a, b, c, d] = [
        (host >> 48) as u16,
        (host >> 32) as u16,
        (host >> 16) as u16,
        host as u16,
    ];
    Ipv6Addr::new(0xfd00, 0x120, 0, 0, a, b, c, d)
}

/// Fills the IPv6 conntrack with `fill` entries of other flows
/// (forward/reply pairs), as the IPv4 one.
pub fn prefill_conntrack(bench: &Bench, fill: usize) -> Result<()> {
    let mut keys = Vec::with_capacity(fill);
    let mut values = Vec::with_capacity(fill);
    let mut state = 0x8765_4321u64;
    while keys.len() < fill {
        let r = splitmix(&mut state);
        let sport = ((r >> 48) as u16) | 1024;
        let client = SocketAddrV6::new(v6(r), sport, 0, 0);
        let vip = SocketAddrV6::new(v6(r.rotate_left(17) | 1 << 63), HTTP_PORT, 0, 0);
        let backend = SocketAddrV6::new(v6(r.rotate_left(33) | 1 << 62), TARGET_PORT, 0, 0);
        let value = CtValueV6::new(backend, 0, 0, backend, 0);
        keys.push(CtKeyV6::new(client, vip, PROTO_TCP));
        values.push(value);
        if keys.len() < fill {
            keys.push(CtKeyV6::new(backend, client, PROTO_TCP));
            values.push(CtValueV6 {
                flags: CT_F_REPLY,
                ..value.with_nat(vip)
            });
        }
    }
    let fd = super::raw_fd(bench.maps.conntrack_v6.map());
    bpfsys::update_batch(fd, &keys, &values, 8192).context("prefill the IPv6 conntrack")
}

/// An IPv6 TCP segment: a bare SYN (`syn`) or an ACK with the same small
/// payload as the IPv4 frames.
pub fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, syn: bool) -> Result<Vec<u8>> {
    let packet = Packet6::new(Proto::Tcp, src, sport, dst, dport);
    let packet = if syn {
        Packet6 {
            payload: Vec::new(),
            ..packet.flags(tcp_flags::SYN)
        }
    } else {
        Packet6 {
            payload: b"GET / HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(),
            ..packet.flags(tcp_flags::ACK)
        }
    };
    packet.try_build()
}

/// Source and destination of a rewritten frame, checksums verified.
fn addresses(frame: &[u8]) -> Result<(SocketAddrV6, SocketAddrV6)> {
    let seen = verify6(frame, Csum::Full)?;
    Ok((
        SocketAddrV6::new(seen.src, seen.sport, 0, 0),
        SocketAddrV6::new(seen.dst, seen.dport, 0, 0),
    ))
}

fn key(src: SocketAddrV6, dst: SocketAddrV6) -> CtKeyV6 {
    CtKeyV6::new(src, dst, PROTO_TCP)
}

/// The IPv6 frames of a point, checked to take the path they are meant to.
pub struct Frames6 {
    pub ack: Vec<u8>,
    pub miss: Vec<u8>,
    pub reply: Vec<u8>,
}

/// As the IPv4 `prepare_frames`: opens the measured flow with a SYN,
/// checks every path once and adds the mirror entries of the repeat method.
pub fn prepare_frames(bench: &mut Bench) -> Result<Frames6> {
    let client = SocketAddrV6::new(CLIENT6, CLIENT_PORT, 0, 0);
    let vip = SocketAddrV6::new(TARGET_VIP6, HTTP_PORT, 0, 0);
    let mut out = vec![0u8; 256];
    let syn = tcp6(CLIENT6, CLIENT_PORT, TARGET_VIP6, HTTP_PORT, true)?;
    let (verdict, _) = bench.run(programs::XDP, &syn, 1, Some(&mut out))?;
    ensure!(verdict == XDP_PASS, "IPv6 new flow: verdict {verdict}");
    let (_, backend) = addresses(&out[..syn.len()]).context("rewritten IPv6 SYN")?;
    ensure!(
        target_backends6().contains(backend.ip()) && backend.port() == TARGET_PORT,
        "IPv6 new flow went to {backend}, not a target backend"
    );
    let ack = tcp6(CLIENT6, CLIENT_PORT, TARGET_VIP6, HTTP_PORT, false)?;
    let (verdict, _) = bench.run(programs::XDP, &ack, 1, Some(&mut out))?;
    let (_, dst) = addresses(&out[..ack.len()]).context("rewritten IPv6 ACK")?;
    ensure!(
        verdict == XDP_PASS && dst == backend,
        "IPv6 conntrack hit: verdict {verdict}, to {dst}"
    );
    let reply = tcp6(*backend.ip(), backend.port(), CLIENT6, CLIENT_PORT, false)?;
    let (verdict, _) = bench.run(programs::XDP, &reply, 1, Some(&mut out))?;
    let (src, _) = addresses(&out[..reply.len()]).context("rewritten IPv6 reply")?;
    ensure!(
        verdict == XDP_PASS && src == vip,
        "IPv6 reverse NAT: verdict {verdict}, from {src}"
    );
    let miss = tcp6(CLIENT6, CLIENT_PORT, NOT_A_VIP6, HTTP_PORT, false)?;
    let (verdict, _) = bench.run(programs::XDP, &miss, 1, Some(&mut out))?;
    ensure!(
        verdict == XDP_PASS && out[..miss.len()] == miss[..],
        "IPv6 miss: packet changed or verdict {verdict}"
    );
    // Mirrors for the repeat method, as for IPv4.
    let ct = &mut bench.maps.conntrack_v6;
    let forward = ct
        .get(&key(client, vip), 0)
        .context("forward entry of the measured IPv6 flow")?;
    let reply_entry = ct
        .get(&key(backend, client), 0)
        .context("reply entry of the measured IPv6 flow")?;
    ct.insert(key(client, backend), forward.with_nat(vip), 0)
        .context("mirror of the IPv6 forward entry")?;
    ct.insert(key(vip, client), reply_entry.with_nat(backend), 0)
        .context("mirror of the IPv6 reply entry")?;
    bench
        .maps
        .rebuild_prefilter()
        .context("rebuild the prefilter")?;
    for frame in [&ack, &reply] {
        let (verdict, _) = bench.run(programs::XDP, frame, 3, Some(&mut out))?;
        ensure!(verdict == XDP_PASS, "IPv6 repeat run: verdict {verdict}");
    }
    Ok(Frames6 { ack, miss, reply })
}

/// As the IPv4 new-flow sample: every run a new IPv6 5-tuple; the flows
/// created are deleted after the batch.
pub fn new_flow_sample(bench: &mut Bench, next: &mut u64, runs: usize) -> Result<(f64, usize)> {
    let vip = SocketAddrV6::new(TARGET_VIP6, HTTP_PORT, 0, 0);
    let mut durations = Vec::with_capacity(runs);
    let mut created = Vec::with_capacity(runs * 2);
    let mut out = vec![0u8; 256];
    for _ in 0..runs {
        let n = *next;
        *next += 1;
        let client = SocketAddrV6::new(
            Ipv6Addr::new(0xfd00, 0x111, 0, 0, 0, 0, (n / 60_000) as u16, 1),
            1024 + (n % 60_000) as u16,
            0,
            0,
        );
        let syn = tcp6(*client.ip(), client.port(), TARGET_VIP6, HTTP_PORT, true)?;
        let (verdict, ns) = bench.run(programs::XDP, &syn, 1, Some(&mut out))?;
        ensure!(verdict == XDP_PASS, "IPv6 new flow: verdict {verdict}");
        let (_, backend) = addresses(&out[..syn.len()]).context("rewritten IPv6 SYN")?;
        ensure!(backend != vip, "IPv6 new flow was not translated");
        created.push(key(client, vip));
        created.push(key(backend, client));
        durations.push(ns);
    }
    for key in &created {
        bench
            .maps
            .conntrack_v6
            .remove(key)
            .context("remove an IPv6 flow the bench created")?;
    }
    stats::trimmed_mean(&durations, OUTLIER_CUTOFF).context("no runs")
}
