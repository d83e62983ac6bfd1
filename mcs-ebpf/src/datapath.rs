//! The per-packet translation every packet hook runs — XDP on physical
//! NICs, tc on pod interfaces — with one set of rules: the hooks differ
//! only in how they rewrite a packet (checksum arithmetic in the program or
//! the kernel's helpers) and how they hand a refusal back to the client,
//! which they supply through [`Hook`].
//!
//! Per packet:
//! 1. parse IPv4 or IPv6 TCP/UDP (anything else passes untouched; an IPv6
//!    extension header chain the parser cannot follow passes untouched and
//!    is counted when it goes to a ClusterSetIP);
//! 2. prefilter: a packet whose destination is not a ClusterSetIP and whose
//!    source is not a backend (two bits of an array map, both clear) passes
//!    untouched without any hash lookup;
//! 3. look the packet's own 5-tuple up in conntrack: a forward entry gives
//!    the backend (DNAT), a reply entry gives the ClusterSetIP (reverse NAT);
//!    a TCP SYN without ACK on a forward entry opens a new connection and
//!    goes on to step 4 instead (`conntrack.rs` says why); a SYN-ACK on the
//!    reply entry of a flow past its handshake answers a connection made to
//!    the backend directly: the old flow is forgotten, the packet passed;
//! 4. on a miss, look the destination up as a frontend; if it is one, pick a
//!    backend (`lb.rs`), record both directions in conntrack and DNAT;
//! 5. pass the packet on for the kernel to route.
//!
//! A hook with [`Scope::Replies`] (tc on the way to a pod) does step 3 for
//! reply entries only: it reverse-translates replies whatever device they
//! arrived on, and never starts a flow.
//!
//! The steps are generic over the family ([`Family`]): IPv4 and IPv6
//! packets run the same code over their own maps, instantiated once each.
//!
//! With the `debug-log` feature each step logs its outcome (`debug_log!`);
//! such a build translates IPv4 only (see [`process`]).

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use mcs_common::{
    DropReason, PROTO_TCP, PROTO_UDP, SVC_F_VIP_MARKER, byte_order::host_port, prefilter::Role,
};

use crate::{
    conntrack,
    family::Family,
    lb::{self, SelectError, Selector},
    maps::{count_backend, count_drop, count_frontend, count_no_backend, prefilter_may_contain},
    packet::{self, Dest, IpFamily as _, L3, Packet, PacketData, ParseError},
};

/// Why a packet leaves the translation without being translated.
pub enum Error {
    /// Not a packet mcs translates; passed on unchanged.
    NotOurs,
    /// Turned into a refusal (RST / ICMP) for the hook to send back to the
    /// client; counted by the caller.
    Refused,
    /// Dropped and counted under the reason.
    Drop(DropReason),
}

/// Which packets a hook translates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: new flows (DNAT), then both directions from conntrack.
    All,
    /// Only replies of flows in conntrack (reverse NAT).
    Replies,
}

/// Which address and port of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// DNAT: ClusterSetIP:port → backend.
    Destination,
    /// Reverse NAT: backend → ClusterSetIP:port.
    Source,
}

/// The rewrite could not be done (a kernel helper failed); the packet is
/// dropped.
pub struct RewriteFailed;

/// The refusal could not be built; the packet is dropped.
pub struct Unreplied;

/// What a hook supplies to the shared translation.
pub trait Hook {
    type Ctx: EbpfContext + PacketData;

    /// The program context (for log lines).
    fn ctx(&self) -> &Self::Ctx;

    /// Parses the packet as one of family `F`.
    #[inline(always)]
    fn parse<F: Family>(&self) -> Result<Packet<F>, ParseError> {
        packet::parse(self.ctx())
    }

    /// Rewrites one side's address and port, with the IPv4 header checksum
    /// (IPv6 has none) and the TCP/UDP checksum kept right.
    fn rewrite<F: Family>(
        &self,
        pkt: &Packet<F>,
        side: Side,
        new_addr: F,
        new_port: u16,
    ) -> Result<(), RewriteFailed>;

    /// Turns the packet into the refusal of a new flow: a TCP RST or an
    /// ICMP port unreachable from the ClusterSetIP to the client.
    fn refuse<F: Family>(&self, pkt: &Packet<F>) -> Result<(), Unreplied>;
}

/// Whether `daddr` is a ClusterSetIP (the agent stores a port-0 marker
/// frontend per ClusterSetIP and protocol). Only used on odd packets.
#[inline(always)]
fn is_cluster_set_ip<F: Family>(daddr: F, proto: u8) -> bool {
    prefilter_may_contain(daddr, Role::Destination) && lb::lookup_service(daddr, 0, proto).is_some()
}

/// [`is_cluster_set_ip`] for a parser's stop.
#[inline(always)]
fn to_cluster_set_ip(dest: Dest) -> bool {
    match dest {
        Dest::V4 { daddr, proto } => is_cluster_set_ip(daddr, proto),
        Dest::V6 { daddr, proto } => is_cluster_set_ip(daddr, proto),
    }
}

/// Parses the hook's packet and translates it (see the module docs).
#[inline(always)]
pub fn process<H: Hook>(hook: &H, scope: Scope) -> Result<(), Error> {
    match packet::l3(hook.ctx()) {
        Some(L3::V4) => process_family::<H, u32>(hook, scope),
        #[cfg(not(feature = "debug-log"))]
        Some(L3::V6) => process_family::<H, mcs_common::byte_order::Addr6>(hook, scope),
        // A `debug-log` build translates IPv4 only: both families' paths
        // with their log lines inlined into one program exceed the BPF
        // stack, and a BPF function of its own for IPv6 loses the packet
        // pointers to the compiler's argument rewriting.
        #[cfg(feature = "debug-log")]
        Some(L3::V6) => {
            debug_log!(
                hook.ctx(),
                "parse: IPv6, not translated by a debug-log build"
            );
            Err(Error::NotOurs)
        }
        None => {
            debug_log!(hook.ctx(), "parse: not IP, passed");
            Err(Error::NotOurs)
        }
    }
}

/// Parses a packet of family `F` and translates it.
#[inline(always)]
fn process_family<H: Hook, F: Family>(hook: &H, scope: Scope) -> Result<(), Error> {
    let ctx = hook.ctx();
    match hook.parse::<F>() {
        Ok(pkt) => translate(hook, &pkt, scope),
        Err(ParseError::NotTcpUdp) => {
            debug_log!(ctx, "parse: not TCP/UDP over IP, passed");
            Err(Error::NotOurs)
        }
        Err(ParseError::Truncated) => {
            debug_log!(ctx, "parse: headers cut short, passed");
            Err(Error::NotOurs)
        }
        // Only the first fragment carries ports, so fragments to a
        // ClusterSetIP cannot be translated consistently: drop them rather
        // than let them wander off towards an unrouted VIP.
        Err(ParseError::Fragment(dest)) => {
            let (daddr, proto) = dest.parts();
            debug_log!(ctx, "parse: fragment to {} proto {}", daddr, proto);
            Err(if scope == Scope::All && to_cluster_set_ip(dest) {
                Error::Drop(DropReason::Fragment)
            } else {
                Error::NotOurs
            })
        }
        Err(ParseError::L4Truncated(dest)) => {
            let (daddr, proto) = dest.parts();
            debug_log!(
                ctx,
                "parse: L4 header cut short, to {} proto {}",
                daddr,
                proto
            );
            Err(if scope == Scope::All && to_cluster_set_ip(dest) {
                Error::Drop(DropReason::Malformed)
            } else {
                Error::NotOurs
            })
        }
        // The upper layer is unknown, so it cannot be translated; never
        // guessed. Counted when it goes to a ClusterSetIP (either protocol's
        // marker), passed on either way.
        Err(ParseError::Unfollowed { daddr }) => {
            debug_log!(
                ctx,
                "parse: IPv6 extension headers not followed to {}",
                daddr.ip()
            );
            if is_cluster_set_ip(daddr, PROTO_TCP) || is_cluster_set_ip(daddr, PROTO_UDP) {
                count_drop(DropReason::Ipv6ChainUnfollowed);
            }
            Err(Error::NotOurs)
        }
    }
}

/// Translates one parsed packet.
#[inline(always)]
fn translate<H: Hook, F: Family>(hook: &H, pkt: &Packet<F>, scope: Scope) -> Result<(), Error> {
    let ctx = hook.ctx();
    let (saddr, daddr, sport, dport) = (pkt.saddr(), pkt.daddr(), pkt.sport(), pkt.dport());
    debug_log!(
        ctx,
        "parse: {}:{} -> {}:{} proto {}",
        saddr.ip(),
        host_port(sport),
        daddr.ip(),
        host_port(dport),
        pkt.proto
    );
    // Every forward conntrack entry and frontend has a destination member,
    // every reply entry a source member (kept so by the agent).
    let may_start = scope == Scope::All && prefilter_may_contain(daddr, Role::Destination);
    if !may_start && !prefilter_may_contain(saddr, Role::Source) {
        debug_log!(ctx, "prefilter: neither address is ours, passed");
        return Err(Error::NotOurs);
    }

    let key = conntrack::key(saddr, daddr, sport, dport, pkt.proto);
    // The entry of an earlier flow of this tuple, when a SYN opens a new one.
    let mut replaced = None;
    if let Some(entry) = conntrack::lookup(&key) {
        if conntrack::answers_another_connection(entry, pkt.l4.tcp_flags) {
            debug_log!(
                ctx,
                "conntrack: SYN-ACK on a finished flow's reply entry, flow forgotten, passed"
            );
            conntrack::forget_flow(&key, entry);
            return Err(Error::NotOurs);
        }
        if scope == Scope::Replies && !conntrack::is_reply(entry) {
            debug_log!(ctx, "conntrack: forward entry on a reply-only hook, passed");
            return Err(Error::NotOurs);
        }
        // Only a SYN reads the entry here: the hit path stays as it was.
        let opening = if conntrack::opens_connection(pkt.l4.tcp_flags) {
            conntrack::earlier(entry)
        } else {
            None
        };
        if let Some(old) = opening {
            debug_log!(
                ctx,
                "conntrack: SYN on an entry to {}:{}, balanced afresh",
                old.backend_addr.ip(),
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
                entry.nat_addr.ip(),
                host_port(entry.nat_port)
            );
            let side = if entry.is_reply() {
                Side::Source
            } else {
                Side::Destination
            };
            rewrite(hook, pkt, side, entry.nat_addr, entry.nat_port)?;
            count_frontend(entry.frontend_id, pkt.len, false);
            count_backend(entry.backend_id, pkt.len, false);
            return Ok(());
        }
    }
    if scope == Scope::Replies {
        debug_log!(ctx, "conntrack: no reply entry, passed");
        return Err(Error::NotOurs);
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
            return Err(match hook.refuse(pkt) {
                Ok(()) => Error::Refused,
                Err(Unreplied) => Error::Drop(DropReason::NoBackendUnreplied),
            });
        }
        Err(SelectError::SlotMissing) => return Err(Error::Drop(DropReason::BackendMissing)),
    };
    debug_log!(
        ctx,
        "frontend {}: backend {}:{} (slot {})",
        service.frontend_id,
        backend.addr.ip(),
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
    rewrite(hook, pkt, Side::Destination, backend.addr, backend.port)?;
    count_frontend(service.frontend_id, pkt.len, new_flow);
    count_backend(backend.backend_id, pkt.len, new_flow);
    Ok(())
}

#[inline(always)]
fn rewrite<H: Hook, F: Family>(
    hook: &H,
    pkt: &Packet<F>,
    side: Side,
    new_addr: F,
    new_port: u16,
) -> Result<(), Error> {
    hook.rewrite(pkt, side, new_addr, new_port)
        .map_err(|RewriteFailed| Error::Drop(DropReason::Malformed))
}
