//! XDP on the interfaces given with `--interface` (physical NICs: traffic
//! to ClusterSetIPs from outside the node, early reverse NAT of replies).
//! Each interface's `bpf_link` is pinned at `links/<interface>`; a restarted
//! agent swaps its program into the pinned link atomically.
//!
//! The program is chosen per device: `mcs_xdp_nic` on a physical device
//! (every received checksum is full), `mcs_xdp` on a virtual one (partial
//! checksums are told apart by their value).

use std::fs;

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLink},
};
use mcs_common::programs;
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, link_pin_dir, links};

/// How to attach XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// What the device hands the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// A physical NIC: received checksums are always full.
    Physical,
    /// A virtual device (veth, ...): a checksum may be partial.
    Virtual,
}

impl Device {
    /// The program for this kind of device.
    pub const fn program(self) -> &'static str {
        match self {
            Self::Physical => programs::XDP_NIC,
            Self::Virtual => programs::XDP,
        }
    }
}

pub(super) fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::LoadProgram { name, source })
}

impl Dataplane {
    /// Attaches the XDP program for `device` to `interface`: swaps it
    /// atomically into the link pinned by an earlier agent, or creates and
    /// pins a new link.
    pub fn attach(
        &mut self,
        interface: &str,
        device: Device,
        mode: AttachMode,
    ) -> Result<(), DataplaneError> {
        let pin = link_pin_dir(&self.bpffs_dir).join(interface);
        let program = xdp_program(&mut self.ebpf, device.program())?;
        if pin.exists() {
            let swapped = links::open_pinned::<XdpLink>(&pin).and_then(|link| {
                program
                    .attach_to_link(link)
                    .map_err(|error| crate::telemetry::chain(&error))
            });
            match swapped {
                Ok(link_id) => {
                    // (Fields, not `program_attached`: `program` borrows the object.)
                    self.links_touched = true;
                    self.ledger.commit();
                    // The pin keeps the link; the program need not own it.
                    let _link = program.take_link(link_id);
                    info!(
                        interface,
                        ?device,
                        "XDP program swapped into the pinned link"
                    );
                    self.xdp.insert(interface.to_owned());
                    return Ok(());
                }
                Err(reason) => {
                    warn!(interface, %reason, "pinned XDP link unusable (interface recreated?); attaching anew");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let attach = |program: &mut Xdp, xdp_mode, mode_name| {
            program
                .attach(interface, xdp_mode)
                .map_err(|source| DataplaneError::Attach {
                    interface: interface.to_owned(),
                    mode: mode_name,
                    source,
                })
        };
        let link_id = match mode {
            AttachMode::Native => attach(program, XdpMode::Driver, "native")?,
            AttachMode::Generic => attach(program, XdpMode::Skb, "generic")?,
            AttachMode::Auto => match attach(program, XdpMode::Driver, "native") {
                Ok(link) => link,
                Err(error) => {
                    warn!(interface, error = %crate::telemetry::chain(&error), "native XDP refused; falling back to generic mode");
                    attach(program, XdpMode::Skb, "generic")?
                }
            },
        };
        self.links_touched = true;
        links::pin(program.take_link(link_id), interface, &pin)?;
        info!(interface, ?mode, ?device, "XDP attached (link pinned)");
        self.xdp.insert(interface.to_owned());
        self.program_attached();
        Ok(())
    }
}
