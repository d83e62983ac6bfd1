//! The tc hook, for pod interfaces (the host side of each pod's veth):
//! * `mcs_tc_ingress` (packets from the pod): the whole translation — new
//!   flows to ClusterSetIPs (DNAT), both directions of known flows (so a
//!   local backend's replies to a client outside the node are translated
//!   here too);
//! * `mcs_tc_egress` (packets to the pod): reverse NAT of replies, whatever
//!   device they arrived on (an uplink without XDP, a tunnel, another pod's
//!   interface) — Cilium's to-container path does the same.
//!
//! The translation is the shared one (`crate::datapath`); tc rewrites
//! through the kernel's checksum helpers (`rewrite.rs`) and redirects
//! refusals back out of the pod's interface (`reject.rs`, `reject6.rs`).
//!
//! Verdicts: a packet passed on returns `TC_ACT_UNSPEC` (TCX: "next"), so
//! programs attached after ours (a CNI's, a policy engine's) still see it;
//! drops return `TC_ACT_SHOT`, refusals `TC_ACT_REDIRECT`.

mod reject;
mod reject6;
mod rewrite;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use mcs_common::DropReason;
use network_types::{eth::EthHdr, tcp::TcpHdr};

use crate::{
    datapath::{self, Error, Hook, RewriteFailed, Scope, Side, Unreplied},
    family::Family,
    maps::count_drop,
    packet::{self, Packet, ParseError},
};

/// Longest IPv4 header (15 words).
const IPV4_HDR_MAX: usize = 60;
/// IPv6 header and the extension headers pulled in with it (a longer
/// chain stays out of the linear part and is not translated).
const IPV6_HDRS_MAX: usize = 40 + 256;
/// Bytes of headers the translation reads: Ethernet, the longest IP
/// headers, a TCP header.
const HEADERS_MAX: usize = EthHdr::LEN
    + if IPV4_HDR_MAX > IPV6_HDRS_MAX {
        IPV4_HDR_MAX
    } else {
        IPV6_HDRS_MAX
    }
    + TcpHdr::LEN;

struct Tc<'a> {
    ctx: &'a TcContext,
}

impl Hook for Tc<'_> {
    type Ctx = TcContext;

    #[inline(always)]
    fn ctx(&self) -> &TcContext {
        self.ctx
    }

    /// Headers beyond the buffer's linear part are pulled in once.
    #[inline(always)]
    fn parse<F: Family>(&self) -> Result<Packet<F>, ParseError> {
        parse(self.ctx)
    }

    #[inline(always)]
    fn rewrite<F: Family>(
        &self,
        pkt: &Packet<F>,
        side: Side,
        new_addr: F,
        new_port: u16,
    ) -> Result<(), RewriteFailed> {
        rewrite::rewrite(self.ctx, pkt, side, new_addr, new_port)
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

/// From the pod: DNAT of new and known flows, reverse NAT of known replies.
#[classifier]
pub fn mcs_tc_ingress(ctx: TcContext) -> i32 {
    run(&Tc { ctx: &ctx }, Scope::All)
}

/// To the pod: reverse NAT of replies.
#[classifier]
pub fn mcs_tc_egress(ctx: TcContext) -> i32 {
    run(&Tc { ctx: &ctx }, Scope::Replies)
}

#[inline(always)]
fn parse<F: Family>(ctx: &TcContext) -> Result<Packet<F>, ParseError> {
    match packet::parse(ctx) {
        // Headers beyond the buffer's linear part: pull them in once.
        Err(ParseError::Truncated | ParseError::L4Truncated(_))
            if u64::from(ctx.len()) > (ctx.data_end() - ctx.data()) as u64 =>
        {
            let len = ctx.len().min(HEADERS_MAX as u32);
            if ctx.pull_data(len).is_err() {
                return Err(ParseError::Truncated);
            }
            packet::parse(ctx)
        }
        parsed => parsed,
    }
}

#[inline(always)]
fn run(hook: &Tc<'_>, scope: Scope) -> i32 {
    let ctx = hook.ctx;
    match datapath::process(hook, scope) {
        Ok(()) | Err(Error::NotOurs) => TC_ACT_UNSPEC,
        Err(Error::Refused) => {
            debug_log!(ctx, "refused: no backend, reply sent to the client");
            count_drop(DropReason::NoBackend);
            // SAFETY: the context pointer is valid for the program's run.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            // SAFETY: helper without preconditions; it returns the verdict.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Err(Error::Drop(reason)) => {
            debug_log!(ctx, "drop: {}", reason.name());
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}
