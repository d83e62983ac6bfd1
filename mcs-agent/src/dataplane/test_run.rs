//! The packet programs (both XDP programs, both tc programs) under
//! `BPF_PROG_TEST_RUN`: packets in, verdict and packet out, with maps
//! programmed from a manifest by the agent's own reconciler. Shared by the
//! packet-in/packet-out tests and the `xdp` fuzz target, so both exercise
//! exactly what the agent loads.
//!
//! A tc program runs on a socket buffer, whose checksum state the kernel
//! helpers act on: [`SkbChecksum`] chooses it (`CHECKSUM_NONE`, or
//! `CHECKSUM_COMPLETE`, after which the kernel checks that the program kept
//! `skb->csum` right and fails the run otherwise).
//!
//! Needs CAP_BPF (root); nothing is attached to any interface. Test support
//! behind the `testing` feature: never in the agent binary.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
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

/// The checksum state of the socket buffer a tc program runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkbChecksum {
    /// `CHECKSUM_NONE`: the fields are all the checksum there is.
    None,
    /// `CHECKSUM_COMPLETE`: `skb->csum` holds the packet's sum, which the
    /// program must keep right (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`).
    Complete,
}

/// The loaded, verified packet programs with their own (unpinned) maps.
pub struct XdpTestRun {
    pub ebpf: Ebpf,
    pub maps: MapHandles,
    pub reconciler: Reconciler,
}

impl XdpTestRun {
    /// Loads the embedded object with maps of `sizes` (e.g. a small
    /// conntrack: each harness has its own maps), verifies the packet
    /// programs and makes a reconciler for those sizes, as the agent does.
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
        for name in [programs::XDP, programs::XDP_NIC] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from the object"))?
                .try_into()
                .with_context(|| format!("{name} is not an XDP program"))?;
            program
                .load()
                .with_context(|| format!("the verifier refused {name}"))?;
        }
        for name in [programs::TC_INGRESS, programs::TC_EGRESS] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from the object"))?
                .try_into()
                .with_context(|| format!("{name} is not a tc program"))?;
            program
                .load()
                .with_context(|| format!("the verifier refused {name}"))?;
        }
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

    /// Runs one packet through the veth XDP program (`mcs_xdp`); see
    /// [`run_xdp`](Self::run_xdp).
    pub fn run(&self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.run_xdp(programs::XDP, packet)
    }

    /// Runs one packet through XDP program `name` (repeat 1: with repeat > 1
    /// the kernel feeds the rewritten packet back in) and returns the
    /// verdict and the packet as the program left it.
    pub fn run_xdp(&self, name: &str, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        let program: &Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
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

    /// Runs one packet through tc program `name` on a socket buffer in
    /// checksum state `skb`; returns the verdict (as the program returned
    /// it: -1 is "pass on") and the packet as the program left it.
    pub fn run_tc(&self, name: &str, packet: &[u8], skb: SkbChecksum) -> Result<(i32, Vec<u8>)> {
        /// `BPF_PROG_TEST_RUN`.
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        /// `BPF_F_TEST_SKB_CHECKSUM_COMPLETE`.
        const CHECKSUM_COMPLETE: u32 = 1 << 2;
        /// The `test` member of `union bpf_attr`.
        #[repr(C)]
        #[derive(Default)]
        struct TestAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()
            .with_context(|| format!("{name} is not a tc program"))?;
        let fd = program.fd().context("program descriptor")?;
        let mut out = vec![0u8; packet.len() + GROWTH];
        // aya's test-run options cannot set the checksum flag: the system
        // call directly.
        let mut attr = TestAttr {
            prog_fd: fd.as_fd().as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            flags: match skb {
                SkbChecksum::None => 0,
                SkbChecksum::Complete => CHECKSUM_COMPLETE,
            },
            ..TestAttr::default()
        };
        // SAFETY: `attr` points at valid input and output buffers of the
        // sizes given, for the call's duration.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &raw mut attr,
                std::mem::size_of::<TestAttr>(),
            )
        };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EBADMSG) {
                bail!("{name} left skb->csum inconsistent with the packet (EBADMSG)");
            }
            return Err(error).context("BPF_PROG_TEST_RUN");
        }
        out.truncate(attr.data_size_out as usize);
        Ok((attr.retval as i32, out))
    }
}
