//! Socket-level load balancing for IPv6 sockets: the programs of `sock.rs`
//! (same selection, counters, refusal and reverse translation) for
//! `connect6`, `sendmsg6`, `recvmsg6` and `getpeername6`, with their own
//! reverse map (`MCS_SOCK_REV_V6`).
//!
//! An IPv6 socket may address an IPv4 ClusterSetIP as an IPv4-mapped
//! address (`::ffff:a.b.c.d`, a dual-stack socket): the IPv4 frontend is
//! looked up and the socket sent to the backend's mapped address, as
//! Cilium's `bpf_sock.c` does. Reverse entries are keyed by the address
//! the socket sees, mapped or not.

use aya_ebpf::{bindings::BPF_ANY, macros::cgroup_sock_addr, programs::SockAddrContext};
use mcs_common::{SockRevKeyV6, SockRevValueV6, byte_order::Addr6, v4_mapped};

use crate::{
    maps::{MCS_SOCK_REV_V6, now_ns},
    sock::{PROCEED, Skip, TOUCH_INTERVAL_NS, pick, proto_of, socket_cookie, verdict},
};

/// The socket address's IPv6 address and port (network order).
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> (Addr6, u16) {
    // SAFETY: the context pointer is valid for the program's run; the
    // fields are readable by every sock_addr program of family IPv6.
    unsafe {
        let sa = ctx.sock_addr;
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            (*sa).user_port as u16,
        )
    }
}

/// Writes the socket address (connect6/sendmsg6/recvmsg6/getpeername6 may).
#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, addr: Addr6, port: u16) {
    // SAFETY: as in `user_addr`; 4-byte stores, as the verifier wants.
    unsafe {
        let sa = ctx.sock_addr;
        (*sa).user_ip6[0] = addr[0];
        (*sa).user_ip6[1] = addr[1];
        (*sa).user_ip6[2] = addr[2];
        (*sa).user_ip6[3] = addr[3];
        (*sa).user_port = u32::from(port);
    }
}

/// Rewrites the destination of a connect/sendmsg to a backend.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Result<(), Skip> {
    let proto = proto_of(ctx);
    if proto == 0 {
        return Err(Skip::NotOurs);
    }
    let (vip, vport) = user_addr(ctx);
    let (backend, backend_port, frontend_id) = match v4_mapped(vip) {
        // An IPv4 ClusterSetIP: its IPv4 backend, mapped.
        Some(vip4) => {
            let (backend, frontend_id) = pick(ctx, vip4, vport, proto)?;
            let mapped = [vip[0], vip[1], vip[2], backend.addr];
            (mapped, backend.port, frontend_id)
        }
        None => {
            let (backend, frontend_id) = pick(ctx, vip, vport, proto)?;
            (backend.addr, backend.port, frontend_id)
        }
    };
    let key = SockRevKeyV6 {
        cookie: socket_cookie(ctx),
        addr: backend,
        port: backend_port,
        _pad: 0,
        _pad2: 0,
    };
    let value = SockRevValueV6 {
        vip,
        vport,
        proto,
        _pad: 0,
        frontend_id,
        last_used_ns: now_ns(),
    };
    // As for IPv4: the connection works without the entry.
    let _ = MCS_SOCK_REV_V6.insert(key, value, u64::from(BPF_ANY));
    set_user_addr(ctx, backend, backend_port);
    Ok(())
}

/// Shows the ClusterSetIP instead of the backend (recvmsg, getpeername),
/// and marks the entry used (see `sock.rs`).
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let (addr, port) = user_addr(ctx);
    let key = SockRevKeyV6 {
        cookie: socket_cookie(ctx),
        addr,
        port,
        _pad: 0,
        _pad2: 0,
    };
    if let Some(entry) = MCS_SOCK_REV_V6.get_ptr_mut(key) {
        // SAFETY: pointer from the lookup just made; copied out at once (a
        // racing writer only stores a newer timestamp or the same
        // translation).
        let original = unsafe { *entry };
        let now = now_ns();
        if now.wrapping_sub(original.last_used_ns) > TOUCH_INTERVAL_NS {
            // SAFETY: as above.
            unsafe { (*entry).last_used_ns = now };
        }
        set_user_addr(ctx, original.vip, original.vport);
    }
}

#[cgroup_sock_addr(connect6)]
pub fn mcs_connect6(ctx: SockAddrContext) -> i32 {
    verdict(translate(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mcs_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(translate(&ctx))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn mcs_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn mcs_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}
