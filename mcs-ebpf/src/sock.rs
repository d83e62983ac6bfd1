//! Socket-level load balancing: the backend is picked once, when a local
//! socket connects (TCP, connected UDP) or sends a datagram (unconnected
//! UDP), and the socket then talks to the backend directly — no per-packet
//! NAT, and the XDP path sees only backend addresses, so nothing is
//! translated twice. Replies (`recvmsg`) and `getpeername` show the
//! ClusterSetIP, as if the application talked to it.
//!
//! Same maps and the same selection rules as XDP (`lb.rs`); affinity is per
//! network namespace (pod), as the client address is not known yet at
//! `connect()`. On any miss the socket proceeds untouched. IPv6 sockets
//! have their own programs (`sock6.rs`) over the same selection. With the
//! `debug-log` feature the chosen backend is logged (`debug_log!`).

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mcs_common::{
    BackendValueOf, PROTO_TCP, PROTO_UDP, SVC_F_VIP_MARKER, SockRevKey, SockRevValue,
    byte_order::host_port,
    flow::{flow_hash, mix32},
};

use mcs_ebpf::atomic;

use crate::{
    family::Family,
    lb::{self, SelectError, Selector},
    maps::{MCS_SOCK_REV_V2, MCS_SOCKSTAT_V2, now_ns},
};

/// Refresh a reverse entry's `last_used_ns` at most this often (as
/// conntrack does): the agent ages entries out by it, in seconds.
pub(crate) const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// With `--socket-lb-host-only`: the cookie of the only network namespace
/// whose sockets are translated (the node's; pods behind a sidecar then
/// keep the ClusterSetIP for the sidecar, and the tc path serves them).
/// 0: every namespace. Set by the agent at load.
#[unsafe(no_mangle)]
static MCS_SOCK_NETNS_ONLY: u64 = 0;

/// Let the system call go on.
pub(crate) const PROCEED: i32 = 1;
/// Fail the system call (with the errno set by `bpf_set_retval`).
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Why a socket address is left alone or refused.
pub(crate) enum Skip {
    /// Not a ClusterSetIP frontend, or not TCP/UDP: untouched.
    NotOurs,
    /// A frontend without usable backend: refused at once.
    NoBackend,
    /// The table or slot is missing mid-update: untouched (the XDP path
    /// still translates the packets).
    Transient,
}

#[inline(always)]
pub(crate) fn proto_of(ctx: &SockAddrContext) -> u8 {
    // SAFETY: the context pointer is valid for the program's run.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    match protocol {
        6 => PROTO_TCP,
        17 => PROTO_UDP,
        _ => 0,
    }
}

#[inline(always)]
pub(crate) fn count(frontend_id: u32, refused: bool) {
    if let Some(stats) = MCS_SOCKSTAT_V2.get_ptr_mut(frontend_id) {
        // SAFETY: a field of the map value, valid for the run; every CPU
        // updates it with `atomic::add` only.
        unsafe {
            let counter = if refused {
                &raw mut (*stats).no_backend
            } else {
                &raw mut (*stats).new_flows
            };
            atomic::add(counter, 1);
        }
    }
}

/// The backend a socket of `proto` addressing `vip:vport` is sent to: the
/// frontend's selection (`lb.rs`) with the socket's view of the client
/// (its network namespace) and flow (its cookie). Counts the outcome.
/// Shared by both families (`sock6.rs`).
#[inline(always)]
pub(crate) fn pick<F: Family>(
    ctx: &SockAddrContext,
    vip: F,
    vport: u16,
    proto: u8,
) -> Result<(BackendValueOf<F>, u32), Skip> {
    let service = lb::lookup_service(vip, vport, proto).ok_or(Skip::NotOurs)?;
    if service.flags & SVC_F_VIP_MARKER != 0 {
        return Err(Skip::NotOurs);
    }
    // SAFETY: helpers valid for cgroup sock_addr programs.
    let (socket, netns) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_get_netns_cookie(ctx.sock_addr.cast()),
        )
    };
    // SAFETY: a plain read of a global; volatile so the load-time value is
    // read rather than the compile-time 0 folded in.
    let only = unsafe { core::ptr::read_volatile(&raw const MCS_SOCK_NETNS_ONLY) };
    if only != 0 && netns != only {
        return Err(Skip::NotOurs);
    }
    let client = (netns ^ (netns >> 32)) as u32;
    let vip_fold = vip.fold();
    let selector = Selector {
        client: F::of_client(client),
        flow_hash: mix32((socket ^ (socket >> 32)) as u32 ^ vip_fold),
        client_hash: flow_hash(client, vip_fold, 0, vport, proto),
    };
    let (backend, slot) = match lb::select_backend(&service, &selector) {
        Ok(selected) => selected,
        Err(SelectError::NoBackend) => {
            debug_log!(
                ctx,
                "socket LB: frontend {} has no backend, refused",
                service.frontend_id
            );
            count(service.frontend_id, true);
            return Err(Skip::NoBackend);
        }
        Err(SelectError::SlotMissing) => return Err(Skip::Transient),
    };
    debug_log!(
        ctx,
        "socket LB: {}:{} frontend {}: backend {}:{} (slot {})",
        vip.ip(),
        host_port(vport),
        service.frontend_id,
        backend.addr.ip(),
        host_port(backend.port),
        slot
    );
    count(service.frontend_id, false);
    Ok((backend, service.frontend_id))
}

/// The socket's cookie (the reverse maps' key).
#[inline(always)]
pub(crate) fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper valid for cgroup sock_addr programs.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// Rewrites the destination of a connect/sendmsg to a backend.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Result<(), Skip> {
    let proto = proto_of(ctx);
    if proto == 0 {
        return Err(Skip::NotOurs);
    }
    // SAFETY: the context pointer is valid for the program's run.
    let (vip, vport) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16) };
    let (backend, frontend_id) = pick(ctx, vip, vport, proto)?;
    let key = SockRevKey {
        cookie: socket_cookie(ctx),
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let value = SockRevValue {
        vip,
        vport,
        proto,
        _pad: 0,
        frontend_id,
        _pad2: 0,
        last_used_ns: now_ns(),
    };
    // Without the entry the application would see the backend as peer,
    // but the connection itself works: translate anyway.
    let _ = MCS_SOCK_REV_V2.insert(key, value, u64::from(BPF_ANY));
    // SAFETY: the context pointer is valid; these fields are writable for
    // connect4/sendmsg4.
    unsafe {
        (*ctx.sock_addr).user_ip4 = backend.addr;
        (*ctx.sock_addr).user_port = u32::from(backend.port);
    }
    Ok(())
}

/// Shows the ClusterSetIP instead of the backend (recvmsg, getpeername),
/// and marks the entry used (the agent ages out unused ones).
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the program's run.
    let (addr, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16) };
    let key = SockRevKey {
        cookie: socket_cookie(ctx),
        addr,
        port,
        _pad: 0,
    };
    if let Some(entry) = MCS_SOCK_REV_V2.get_ptr_mut(key) {
        // SAFETY: pointer from the lookup just made; copied out at once. A
        // racing writer only stores a newer timestamp (or the same
        // translation again).
        let original = unsafe { *entry };
        let now = now_ns();
        if now.wrapping_sub(original.last_used_ns) > TOUCH_INTERVAL_NS {
            // SAFETY: as above.
            unsafe { (*entry).last_used_ns = now };
        }
        // SAFETY: writable fields for recvmsg4/getpeername4.
        unsafe {
            (*ctx.sock_addr).user_ip4 = original.vip;
            (*ctx.sock_addr).user_port = u32::from(original.vport);
        }
    }
}

#[inline(always)]
pub(crate) fn verdict(result: Result<(), Skip>) -> i32 {
    match result {
        Ok(()) | Err(Skip::NotOurs) | Err(Skip::Transient) => PROCEED,
        Err(Skip::NoBackend) => {
            // SAFETY: helper valid for cgroup sock_addr programs (5.18+).
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn mcs_connect4(ctx: SockAddrContext) -> i32 {
    verdict(translate(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn mcs_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(translate(&ctx))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn mcs_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn mcs_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}
