//! XDP datapath: ClusterSetIP DNAT with conntrack, and reverse NAT of replies.
//!
//! Per packet:
//! 1. parse IPv4 TCP/UDP (anything else passes untouched);
//! 2. prefilter: a packet whose destination is not a ClusterSetIP and whose
//!    source is not a backend (two bits of an array map, both clear) passes
//!    untouched without any hash lookup;
//! 3. look the packet's own 5-tuple up in conntrack: a forward entry gives
//!    the backend (DNAT), a reply entry gives the ClusterSetIP (reverse NAT);
//!    a TCP SYN without ACK on a forward entry opens a new connection and
//!    goes on to step 4 instead (`conntrack.rs` says why);
//! 4. on a miss, look the destination up as a frontend; if it is one, pick a
//!    backend, record both directions in conntrack and DNAT;
//! 5. pass the packet on for the kernel to route.
//!
//! With the `debug-log` feature each step logs its outcome (`debug_log!`).

mod conntrack;
mod nat;
mod reject;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use mcs_common::{
    DropReason, PROTO_TCP, SVC_F_VIP_MARKER,
    byte_order::{host_port, ipv4},
    prefilter::Role,
};

use crate::{
    lb::{self, SelectError, Selector},
    maps::{count_backend, count_drop, count_frontend, count_no_backend, prefilter_may_contain},
    packet::{self, ParseError},
};

/// Why a packet leaves the program without being translated.
enum Error {
    /// Not a packet mcs translates; passed on unchanged.
    NotOurs,
    /// Turned into a refusal (RST / ICMP) for the stack to route back to
    /// the client; counted.
    Refused,
    /// Dropped and counted under the reason.
    Drop(DropReason),
}

#[xdp]
pub fn mcs_xdp(ctx: XdpContext) -> u32 {
    match try_mcs_xdp(&ctx) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(Error::NotOurs) => xdp_action::XDP_PASS,
        Err(Error::Refused) => {
            debug_log!(&ctx, "refused: no backend, reply sent to the client");
            count_drop(DropReason::NoBackend);
            xdp_action::XDP_PASS
        }
        Err(Error::Drop(reason)) => {
            debug_log!(&ctx, "drop: {}", reason.name());
            count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn try_mcs_xdp(ctx: &XdpContext) -> Result<(), Error> {
    let pkt = match packet::parse(ctx) {
        Ok(pkt) => pkt,
        Err(ParseError::NotTcpUdpV4) => {
            debug_log!(ctx, "parse: not IPv4 TCP/UDP, passed");
            return Err(Error::NotOurs);
        }
        Err(ParseError::Truncated) => {
            debug_log!(ctx, "parse: headers cut short, passed");
            return Err(Error::NotOurs);
        }
        Err(ParseError::Fragment { daddr, proto }) => {
            debug_log!(ctx, "parse: fragment to {} proto {}", ipv4(daddr), proto);
            // Only the first fragment carries ports, so fragments to a
            // ClusterSetIP cannot be translated consistently: drop them
            // rather than let them wander off towards an unrouted VIP.
            return Err(if nat::is_cluster_set_ip(daddr, proto) {
                Error::Drop(DropReason::Fragment)
            } else {
                Error::NotOurs
            });
        }
        Err(ParseError::L4Truncated { daddr, proto }) => {
            debug_log!(
                ctx,
                "parse: L4 header cut short, to {} proto {}",
                ipv4(daddr),
                proto
            );
            return Err(if nat::is_cluster_set_ip(daddr, proto) {
                Error::Drop(DropReason::Malformed)
            } else {
                Error::NotOurs
            });
        }
    };
    let (saddr, daddr, sport, dport) = (pkt.saddr(), pkt.daddr(), pkt.sport(), pkt.dport());
    debug_log!(
        ctx,
        "parse: {}:{} -> {}:{} proto {}",
        ipv4(saddr),
        host_port(sport),
        ipv4(daddr),
        host_port(dport),
        pkt.proto
    );
    // Every forward conntrack entry and frontend has a destination member,
    // every reply entry a source member (kept so by the agent).
    if !prefilter_may_contain(daddr, Role::Destination)
        && !prefilter_may_contain(saddr, Role::Source)
    {
        debug_log!(ctx, "prefilter: neither address is ours, passed");
        return Err(Error::NotOurs);
    }

    let key = conntrack::key(saddr, daddr, sport, dport, pkt.proto);
    // The entry of an earlier flow of this tuple, when a SYN opens a new one.
    let mut replaced = None;
    if let Some(entry) = conntrack::lookup(&key) {
        // Only a SYN reads the entry here: the hit path stays as it was.
        // SAFETY: pointer from the lookup just made; copied out at once.
        let opening = conntrack::opens_connection(pkt.l4.tcp_flags)
            .then(|| unsafe { *entry })
            .filter(|old| !old.is_reply());
        if let Some(old) = opening {
            debug_log!(
                ctx,
                "conntrack: SYN on an entry to {}:{}, balanced afresh",
                ipv4(old.backend_addr),
                host_port(old.backend_port)
            );
            replaced = Some(old);
        } else {
            let entry = conntrack::touch(entry, pkt.l4.tcp_flags);
            debug_log!(
                ctx,
                "conntrack: frontend {} {} entry, rewrite to {}:{}",
                entry.frontend_id,
                if entry.is_reply() { "reply" } else { "forward" },
                ipv4(entry.nat_addr),
                host_port(entry.nat_port)
            );
            if entry.is_reply() {
                nat::rewrite(&pkt, nat::Side::Source, entry.nat_addr, entry.nat_port);
            } else {
                nat::rewrite(&pkt, nat::Side::Destination, entry.nat_addr, entry.nat_port);
            }
            count_frontend(entry.frontend_id, pkt.len, false);
            count_backend(entry.backend_id, pkt.len, false);
            return Ok(());
        }
    }

    let Some(service) = lb::lookup_service(daddr, dport, pkt.proto) else {
        debug_log!(ctx, "frontend: none for this destination, passed");
        return Err(Error::NotOurs);
    };
    if service.flags & SVC_F_VIP_MARKER != 0 {
        debug_log!(ctx, "frontend: port 0 marker, passed");
        return Err(Error::NotOurs); // port 0: not a service port
    }
    debug_log!(
        ctx,
        "frontend {}: {} backends",
        service.frontend_id,
        service.backend_count
    );
    let selector = Selector::for_packet(saddr, daddr, sport, dport, pkt.proto);
    let (backend, slot) = match lb::select_backend(&service, &selector) {
        Ok(selected) => selected,
        Err(SelectError::NoBackend) => {
            count_no_backend(service.frontend_id);
            let replied = if pkt.proto == PROTO_TCP {
                reject::tcp_reset(ctx, &pkt)
            } else {
                reject::icmp_port_unreachable(ctx, &pkt)
            };
            return Err(match replied {
                Ok(()) => Error::Refused,
                Err(reject::Unreplied) => Error::Drop(DropReason::NoBackendUnreplied),
            });
        }
        Err(SelectError::SlotMissing) => return Err(Error::Drop(DropReason::BackendMissing)),
    };
    debug_log!(
        ctx,
        "frontend {}: backend {}:{} (slot {})",
        service.frontend_id,
        ipv4(backend.addr),
        host_port(backend.port),
        slot
    );
    let new_flow = match &replaced {
        Some(old) => {
            conntrack::forget_reply(&key, old, &backend);
            conntrack::is_new_flow(old, &backend)
        }
        None => true,
    };
    if conntrack::create(&key, &service, &backend, pkt.l4.tcp_flags).is_err() {
        warn!(ctx, "conntrack insert failed (map full?)");
        return Err(Error::Drop(DropReason::CtFull));
    }
    nat::rewrite(&pkt, nat::Side::Destination, backend.addr, backend.port);
    count_frontend(service.frontend_id, pkt.len, new_flow);
    count_backend(backend.backend_id, pkt.len, new_flow);
    Ok(())
}
