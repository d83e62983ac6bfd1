//! tc on pod interfaces: `mcs_tc_ingress` on the ingress of each pod
//! interface (packets from the pod), `mcs_tc_egress` on its egress (packets
//! to the pod).
//!
//! Where the kernel has TCX (6.6+) each attachment is a `bpf_link` pinned at
//! `tc/<interface>/{ingress,egress}`: it keeps serving while no agent runs,
//! and a restarted agent swaps its program into it atomically (a link whose
//! device is gone or was recreated is attached anew). Older kernels get a
//! clsact `bpf` filter with mcs's own priority and handle, which the kernel
//! keeps while no agent runs and a restarted agent replaces in place; the
//! empty directory `tc/<interface>` records it.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use mcs_common::programs;
use tracing::{debug, info, warn};

use super::{Dataplane, DataplaneError, links};

/// Priority of mcs's clsact filters (netlink attachment).
const NETLINK_PRIORITY: u16 = 0x4d43;
/// Handle of mcs's clsact filters (netlink attachment).
const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0x4d43);

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// TCX links where the kernel has them (6.6+), clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links (pinned).
    Tcx,
    /// clsact filters through netlink.
    Netlink,
}

impl TcAttach {
    fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
                if tcx { Self::Tcx } else { Self::Netlink }
            }
            other => other,
        }
    }
}

/// The two attachments on a pod interface.
const DIRECTIONS: [(&str, &str, TcAttachType); 2] = [
    ("ingress", programs::TC_INGRESS, TcAttachType::Ingress),
    ("egress", programs::TC_EGRESS, TcAttachType::Egress),
];

/// Where the tc attachments are recorded: `<bpffs-dir>/tc/<interface>/`.
pub fn tc_pin_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("tc")
}

pub(super) fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::LoadProgram { name, source })
}

fn attach_error(interface: &str, source: aya::programs::ProgramError) -> DataplaneError {
    DataplaneError::AttachTc {
        interface: interface.to_owned(),
        source,
    }
}

/// The interface index a pinned TCX link is attached to (0 once its device
/// is gone), from its `fdinfo`.
fn pinned_tcx_ifindex(pin: &Path) -> Option<u32> {
    /// `BPF_OBJ_GET`.
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).ok()?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` is a valid BPF_OBJ_GET attribute for the call's
    // duration; the returned descriptor is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return None;
    }
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"));
    // SAFETY: `fd` was just returned to us and is closed once.
    unsafe { libc::close(fd as libc::c_int) };
    parse_fdinfo_ifindex(&info.ok()?)
}

fn parse_fdinfo_ifindex(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("ifindex:"))
        .and_then(|value| value.trim().parse().ok())
}

fn ifindex(interface: &str) -> Option<u32> {
    let name = CString::new(interface).ok()?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

impl Dataplane {
    /// Attaches the tc programs to both directions of the pod interface
    /// `interface` (see the module docs for adoption).
    pub fn attach_tc(&mut self, interface: &str, mode: TcAttach) -> Result<(), DataplaneError> {
        let dir = tc_pin_dir(&self.bpffs_dir).join(interface);
        super::create_private_dir(&dir)?;
        let mode = mode.resolve();
        for (direction, name, attach_type) in DIRECTIONS {
            let program = tc_program(&mut self.ebpf, name)?;
            match mode {
                TcAttach::Netlink => attach_netlink(program, interface, attach_type)?,
                _ => attach_tcx(program, interface, attach_type, &dir.join(direction))?,
            }
            self.program_attached();
        }
        info!(interface, ?mode, "tc attached to the pod interface");
        self.tc.insert(interface.to_owned());
        Ok(())
    }

    /// Forgets a pod interface that is gone: removes its pins (its TCX
    /// links died with the device).
    pub fn forget_tc(&mut self, interface: &str) {
        if self.tc.remove(interface) {
            remove_tc_dir(&tc_pin_dir(&self.bpffs_dir).join(interface), interface);
            info!(interface, "pod interface gone: its tc pins removed");
        }
    }

    /// Pod interfaces with tc attached.
    pub fn tc_interfaces(&self) -> impl Iterator<Item = &str> {
        self.tc.iter().map(String::as_str)
    }
}

fn attach_tcx(
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<(), DataplaneError> {
    if pin.exists() {
        let current = ifindex(interface);
        let pinned = pinned_tcx_ifindex(pin);
        let swapped = if pinned.is_some() && pinned == current {
            links::open_pinned::<SchedClassifierLink>(pin).and_then(|link| {
                program
                    .attach_to_link(link)
                    .map_err(|error| crate::telemetry::chain(&error))
            })
        } else {
            Err(format!(
                "the link is on interface index {pinned:?}, {interface} is {current:?}"
            ))
        };
        match swapped {
            Ok(link_id) => {
                // The pin keeps the link; the program need not own it.
                let _link = program.take_link(link_id);
                debug!(
                    interface,
                    ?attach_type,
                    "tc program swapped into the pinned link"
                );
                return Ok(());
            }
            Err(reason) => {
                warn!(interface, ?attach_type, %reason, "pinned tc link unusable (interface recreated?); attaching anew");
                let _ = fs::remove_file(pin);
            }
        }
    }
    let link_id = program
        .attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| attach_error(interface, source))?;
    links::pin(program.take_link(link_id), interface, pin)
}

fn attach_netlink(
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<(), DataplaneError> {
    // Already there (an earlier attachment) is fine.
    let _ = tc::qdisc_add_clsact(interface);
    let options = NlOptions {
        priority: NETLINK_PRIORITY,
        handle: NETLINK_HANDLE,
        classid: None,
    };
    let link_id = match program.attach_with_options(
        interface,
        attach_type,
        TcAttachOptions::Netlink(options),
    ) {
        Ok(link_id) => link_id,
        // An earlier agent's filter: replace it in place.
        Err(_) => {
            let link = SchedClassifierLink::attached(
                interface,
                attach_type,
                NETLINK_PRIORITY,
                NETLINK_HANDLE,
                None,
            )
            .map_err(|source| attach_error(interface, tc::TcError::IoError(source).into()))?;
            program
                .attach_to_link(link)
                .map_err(|source| attach_error(interface, source))?
        }
    };
    let link = program
        .take_link(link_id)
        .map_err(|source| attach_error(interface, source))?;
    // The filter stays attached after this agent: dropping the handle
    // would detach it.
    std::mem::forget(link);
    Ok(())
}

/// Removes the record of one interface's tc attachments: TCX pins (the
/// links detach with their last reference), or the clsact filters of a
/// netlink attachment (if the interface still exists).
pub(super) fn remove_tc_dir(dir: &Path, interface: &str) {
    let mut pinned = false;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            pinned = true;
            if let Err(error) = fs::remove_file(entry.path()) {
                warn!(path = %entry.path().display(), %error, "cannot remove tc pin");
            }
        }
    }
    if !pinned && ifindex(interface).is_some() {
        for (_, _, attach_type) in DIRECTIONS {
            // Dropping the handle deletes the filter.
            if let Ok(link) = SchedClassifierLink::attached(
                interface,
                attach_type,
                NETLINK_PRIORITY,
                NETLINK_HANDLE,
                None,
            ) {
                drop(link);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_ifindex() {
        let tcx = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t2058\nlink_type:\ttcx\nlink_id:\t7\nprog_tag:\t0123456789abcdef\nprog_id:\t42\nifindex:\t5\nattach_type:\t46\n";
        assert_eq!(parse_fdinfo_ifindex(tcx), Some(5));
        assert_eq!(
            parse_fdinfo_ifindex("link_type:\ttcx\nifindex:\t0\n"),
            Some(0)
        );
        assert_eq!(parse_fdinfo_ifindex("link_type:\txdp\n"), None);
    }
}
