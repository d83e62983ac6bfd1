//! The bench's own pass-only and rewriting programs, attached where mcs
//! attaches.

use anyhow::{Context as _, Result};
use mcs_tests::netns::Netns;

use super::topology::{TO_BACKEND, TO_CLIENT};

/// Attaches the bench's XDP_PASS program (native mode, as the agent does on
/// veth) to both veths of `lb`.
pub(super) fn attach_xdp_pass(lb: &Netns) -> Result<aya::Ebpf> {
    let mut ebpf = aya::Ebpf::load(&crate::perpacket::calibration_object()?)
        .context("load the calibration object")?;
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(crate::perpacket::BENCH_PASS)
        .context("mcs_bench_pass missing from the object")?
        .try_into()
        .context("mcs_bench_pass is not XDP")?;
    program.load().context("load mcs_bench_pass")?;
    for iface in [TO_CLIENT, TO_BACKEND] {
        // The interface name is resolved in the calling thread's namespace.
        lb.enter(|| program.attach(iface, aya::programs::XdpMode::Driver))?
            .with_context(|| format!("attach XDP_PASS to {iface}"))?;
    }
    Ok(ebpf)
}

/// Attaches the bench's tc program `name` to both directions of the
/// client's veth in `lb`, where mcs-tc attaches its programs.
pub(super) fn attach_tc(lb: &Netns, name: &str) -> Result<aya::Ebpf> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut ebpf = aya::Ebpf::load(&crate::perpacket::calibration_object()?)
        .context("load the calibration object")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not a tc program"))?;
    program.load().with_context(|| format!("load {name}"))?;
    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
        lb.enter(|| program.attach(TO_CLIENT, direction))?
            .with_context(|| format!("attach {name} ({direction:?})"))?;
    }
    Ok(ebpf)
}
