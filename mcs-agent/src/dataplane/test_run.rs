//! The XDP program under `BPF_PROG_TEST_RUN`: packets in, verdict and
//! packet out, with maps programmed from a manifest by the agent's own
//! reconciler. Shared by the packet-in/packet-out tests and the `xdp` fuzz
//! target, so both exercise exactly what the agent loads.
//!
//! Needs CAP_BPF (root); nothing is attached to any interface. Test support
//! behind the `testing` feature: never in the agent binary.

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use mcs_common::programs;

use crate::{
    dataplane::{EBPF_OBJECT, MapHandles, MapSizes},
    desired,
    model::manifest,
    reconcile::{ApplyReport, Reconciler},
};

/// Room the program may add to a packet (an ICMP refusal quotes it).
const GROWTH: usize = 256;

/// A loaded, verified XDP program with its own (unpinned) maps.
pub struct XdpTestRun {
    pub ebpf: Ebpf,
    pub maps: MapHandles,
    pub reconciler: Reconciler,
}

impl XdpTestRun {
    /// Loads the embedded object with maps of `sizes` (e.g. a small
    /// conntrack: each harness has its own maps), verifies the XDP program
    /// and makes a reconciler for those sizes, as the agent does.
    pub fn load(sizes: &MapSizes) -> Result<Self> {
        ensure!(
            !EBPF_OBJECT.is_empty(),
            "mcs-agent was built without its eBPF object: run `cargo xtask build-ebpf` first"
        );
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.overrides() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context("load the eBPF object")?;
        let program: &mut Xdp = ebpf
            .program_mut(programs::XDP)
            .context("XDP program missing from the object")?
            .try_into()
            .context("not an XDP program")?;
        program
            .load()
            .context("the verifier refused the XDP program")?;
        let mut maps = MapHandles::take(&mut ebpf).context("take the maps")?;
        // As the agent does before its first sync.
        crate::dataplane::clock::calibrate(&mut ebpf, &mut maps.clock)
            .context("calibrate the datapath clock")?;
        Ok(Self {
            ebpf,
            maps,
            reconciler: Reconciler::with_capacities(sizes.capacities()),
        })
    }

    /// Brings the maps to what `yaml` describes, as the agent would; a
    /// rejected object or a failed map write is an error.
    pub fn apply_manifest(&mut self, yaml: &str) -> Result<ApplyReport> {
        let (snapshot, rejections) = manifest::snapshot_from_yaml(yaml).context("manifest")?;
        ensure!(rejections.is_empty(), "manifest rejected: {rejections:?}");
        let (state, _) = desired::compute(&snapshot);
        let report = self.reconciler.apply(&state, &mut self.maps);
        ensure!(
            report.errors.is_empty(),
            "map writes failed: {:?}",
            report.errors
        );
        Ok(report)
    }

    /// Runs one packet through the program (repeat 1: with repeat > 1 the
    /// kernel feeds the rewritten packet back in) and returns the verdict
    /// and the packet as the program left it.
    pub fn run(&self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        let program: &Xdp = self
            .ebpf
            .program(programs::XDP)
            .context("XDP program missing")?
            .try_into()
            .context("not an XDP program")?;
        let mut out = vec![0u8; packet.len() + GROWTH];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}
