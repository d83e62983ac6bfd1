//! The XDP hook, for physical NICs (`--interface`): node-as-gateway traffic
//! to ClusterSetIPs from outside the node, and early reverse NAT of replies
//! from remote backends. The translation is the shared one
//! (`crate::datapath`); XDP rewrites with checksum arithmetic of its own
//! (`rewrite.rs`) and bounces refusals to the stack (`reject.rs`,
//! `reject6.rs`).
//!
//! Two entry points, one per checksum situation, chosen by the agent per
//! device at attach time (no per-packet lookup):
//! * `mcs_xdp_nic` — a physical NIC: every received checksum is full;
//! * `mcs_xdp` — a virtual device (veth): a checksum field may be partial,
//!   told apart by its value.

mod reject;
mod reject6;
mod rewrite;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use mcs_common::DropReason;

use self::rewrite::Checksums;
use crate::{
    datapath::{self, Error, Hook, RewriteFailed, Scope, Side, Unreplied},
    family::Family,
    maps::count_drop,
    packet::Packet,
};

struct Xdp<'a> {
    ctx: &'a XdpContext,
    checksums: Checksums,
}

impl Hook for Xdp<'_> {
    type Ctx = XdpContext;

    #[inline(always)]
    fn ctx(&self) -> &XdpContext {
        self.ctx
    }

    #[inline(always)]
    fn rewrite<F: Family>(
        &self,
        pkt: &Packet<F>,
        side: Side,
        new_addr: F,
        new_port: u16,
    ) -> Result<(), RewriteFailed> {
        rewrite::rewrite(pkt, self.checksums, side, new_addr, new_port);
        Ok(())
    }

    #[inline(always)]
    fn refuse<F: Family>(&self, pkt: &Packet<F>) -> Result<(), Unreplied> {
        if let Some(pkt) = F::v4(pkt) {
            reject::refuse(self.ctx, pkt)
        } else if let Some(pkt) = F::v6(pkt) {
            reject6::refuse(self.ctx, pkt)
        } else {
            Err(Unreplied)
        }
    }
}

/// XDP on a physical NIC: every checksum is full.
#[xdp]
pub fn mcs_xdp_nic(ctx: XdpContext) -> u32 {
    run(&Xdp {
        ctx: &ctx,
        checksums: Checksums::Full,
    })
}

/// XDP on a virtual device (veth): partial checksums are detected.
#[xdp]
pub fn mcs_xdp(ctx: XdpContext) -> u32 {
    run(&Xdp {
        ctx: &ctx,
        checksums: Checksums::Detect,
    })
}

#[inline(always)]
fn run(hook: &Xdp<'_>) -> u32 {
    match datapath::process(hook, Scope::All) {
        Ok(()) | Err(Error::NotOurs) => xdp_action::XDP_PASS,
        Err(Error::Refused) => {
            debug_log!(hook.ctx, "refused: no backend, reply sent to the client");
            count_drop(DropReason::NoBackend);
            xdp_action::XDP_PASS
        }
        Err(Error::Drop(reason)) => {
            debug_log!(hook.ctx, "drop: {}", reason.name());
            count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}
