//! `mcs_clock_probe`: hands the kernel's jiffies to the agent, which pairs
//! them with `CLOCK_MONOTONIC_COARSE` to fill `MCS_CLOCK` (see
//! `mcs_common::ClockValue`). Run through `BPF_PROG_TEST_RUN` only.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_jiffies64, macros::xdp, programs::XdpContext,
};

use crate::packet::ptr_at;

/// Writes the jiffies (native byte order) over the first 8 bytes of the
/// packet; `XDP_ABORTED` when the packet is shorter.
#[xdp]
pub fn mcs_clock_probe(ctx: XdpContext) -> u32 {
    let Some(slot) = ptr_at::<[u8; 8]>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the 8 bytes are inside the packet; the
    // helper has no preconditions.
    unsafe { *slot = bpf_jiffies64().to_ne_bytes() };
    xdp_action::XDP_PASS
}
