//! The eBPF dataplane: loading the embedded object, pinning and adopting its
//! maps and links under the bpffs directory, and map access for the
//! reconciler (write) and `dump` (read). Attachment per hook: `tc.rs` (pod
//! interfaces), `xdp.rs` (NICs), `cgroup.rs` (socket LB).
//!
//! Pinned layout (`--bpffs-dir`, default `/sys/fs/bpf/mcs`, mode 0700):
//! * `maps/<MAP_NAME>` — every map; adopted by the next agent after its
//!   type, key size, value size, max entries and the stored layout version
//!   (`MCS_ABI`) are checked. A mismatching map is recreated, loudly.
//! * `links/<interface>` — the XDP bpf_link of each `--interface`;
//!   `links/cgroup-<program>` — the socket-LB links;
//!   `tc/<interface>/{ingress,egress}` — the TCX links of each pod
//!   interface. A link keeps its program attached while no agent runs
//!   (crash, SIGKILL, upgrade); the next agent swaps its own program into
//!   the same link atomically.

pub mod batch;
pub mod cgroup;
pub mod clock;
pub mod layout;
pub mod maps;
pub mod memory;
pub mod prefilter;
pub mod tc;
#[cfg(any(test, feature = "testing"))]
pub mod test_run;
pub mod xdp;

use std::{
    collections::BTreeSet,
    fs, io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader};
use mcs_common::{ABI_MAGIC, ABI_VERSION, AbiInfo, names, programs};
use tracing::{error, info, warn};

pub use layout::{AdoptionReport, MapSizes, MapSpec};
pub use maps::{MapHandles, PinnedMaps};
pub use tc::TcAttach;
pub use xdp::{AttachMode, Device};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcs-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this mcs-agent was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild"
    )]
    MissingObject,
    #[error("bpffs is not mounted at {0} (mount it: `mount -t bpf bpf /sys/fs/bpf`)")]
    BpffsNotMounted(PathBuf),
    #[error("cannot prepare pin directory {path}")]
    PinDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cannot load program {name} into the kernel")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach XDP to interface {interface} in {mode} mode")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach tc to pod interface {interface}")]
    AttachTc {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach {program} to cgroup {cgroup}")]
    AttachCgroup {
        cgroup: PathBuf,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot pin the link of {interface} at {path}")]
    PinLink {
        interface: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {name}")]
    Prefilter {
        name: &'static str,
        #[source]
        source: prefilter::PrefilterError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Where the maps are pinned: `<bpffs-dir>/maps/<MAP_NAME>`.
pub fn map_pin_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

/// Where the XDP links are pinned: `<bpffs-dir>/links/<interface>`.
pub fn link_pin_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}

/// Whether `path` (or, if it does not exist yet, its closest existing
/// ancestor) lives on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    // BPF_FS_MAGIC from linux/magic.h.
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let mut candidate = path.to_path_buf();
    while !candidate.exists() {
        if !candidate.pop() {
            return false;
        }
    }
    let Ok(c_path) = std::ffi::CString::new(candidate.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type == BPF_FS_MAGIC
    }
}

pub(crate) fn create_private_dir(path: &Path) -> Result<(), DataplaneError> {
    let error = |source| DataplaneError::PinDirectory {
        path: path.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(error)
}

/// What the loaded object is told at load (globals of its `.rodata`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Socket LB only for sockets of the network namespace with this
    /// cookie (`--socket-lb-host-only`); `None`: every socket.
    pub socket_lb_netns: Option<u64>,
}

/// A loaded dataplane: the eBPF object with pinned maps and links.
pub struct Dataplane {
    ebpf: Ebpf,
    bpffs_dir: PathBuf,
    /// Interfaces with XDP (`--interface`).
    xdp: BTreeSet<String>,
    /// Pod interfaces with tc.
    tc: BTreeSet<String>,
    socket_lb: bool,
    _logger: Option<crate::telemetry::BpfLogTask>,
}

impl Dataplane {
    /// Loads the embedded object with its maps pinned under `bpffs_dir`,
    /// adopting compatible maps an earlier agent left there.
    pub fn load(
        bpffs_dir: &Path,
        sizes: &MapSizes,
        options: LoadOptions,
    ) -> Result<(Self, AdoptionReport), DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::MissingObject);
        }
        if !is_bpffs(bpffs_dir) {
            return Err(DataplaneError::BpffsNotMounted(bpffs_dir.to_path_buf()));
        }
        create_private_dir(bpffs_dir)?;
        let pin_dir = map_pin_dir(bpffs_dir);
        create_private_dir(&pin_dir)?;
        create_private_dir(&link_pin_dir(bpffs_dir))?;
        create_private_dir(&tc::tc_pin_dir(bpffs_dir))?;

        let report = layout::prepare_pins(&pin_dir, sizes);
        for (name, reason) in &report.recreated {
            error!(
                map = name,
                reason = %reason,
                disruption = layout::disruption(name),
                "pinned map is incompatible with this agent: recreating it"
            );
        }

        for name in &report.retired {
            warn!(
                map = name,
                "removed the pin of a map this agent replaced (older name)"
            );
        }

        let pin_paths: Vec<(&'static str, PathBuf)> = names::ALL
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, entries) in sizes.overrides() {
            loader.map_max_entries(name, entries);
        }
        let netns_only = options.socket_lb_netns.unwrap_or(0);
        loader.override_global(cgroup::NETNS_ONLY_GLOBAL, &netns_only, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let logger = crate::telemetry::BpfLogTask::start(&mut ebpf);
        load_programs(&mut ebpf)?;
        let mut dataplane = Self {
            ebpf,
            bpffs_dir: bpffs_dir.to_path_buf(),
            xdp: BTreeSet::new(),
            tc: BTreeSet::new(),
            socket_lb: false,
            _logger: logger,
        };
        dataplane.write_abi()?;
        info!(
            dir = %pin_dir.display(),
            adopted = report.adopted.len(),
            created = report.created.len(),
            recreated = report.recreated.len(),
            "eBPF dataplane loaded"
        );
        Ok((dataplane, report))
    }

    fn write_abi(&mut self) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(names::ABI)
            .ok_or(DataplaneError::MissingMap(names::ABI))?;
        let mut abi: aya::maps::Array<_, AbiInfo> =
            aya::maps::Array::try_from(map).map_err(|source| DataplaneError::Map {
                name: names::ABI,
                source,
            })?;
        abi.set(
            0,
            AbiInfo {
                magic: ABI_MAGIC,
                version: ABI_VERSION,
            },
            0,
        )
        .map_err(|source| DataplaneError::Map {
            name: names::ABI,
            source,
        })
    }

    /// Detaches links pinned for interfaces (and a cgroup) this agent no
    /// longer serves.
    pub fn detach_others(&self) {
        if let Ok(entries) = fs::read_dir(link_pin_dir(&self.bpffs_dir)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let kept = match name.strip_prefix("cgroup-") {
                    Some(_) => self.socket_lb,
                    None => self.xdp.contains(&name),
                };
                if !kept {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => info!(link = name, "detached a link no longer wanted"),
                        Err(error) => warn!(link = name, %error, "cannot remove stale link pin"),
                    }
                }
            }
        }
        if let Ok(entries) = fs::read_dir(tc::tc_pin_dir(&self.bpffs_dir)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !self.tc.contains(&name) {
                    tc::remove_tc_dir(&entry.path(), &name);
                    info!(
                        interface = name,
                        "detached tc from an interface no longer served"
                    );
                }
            }
        }
    }

    /// Typed handles on the maps for the reconciler.
    pub fn maps(&mut self) -> Result<MapHandles, DataplaneError> {
        MapHandles::take(&mut self.ebpf)
    }

    /// Calibrates the datapath's clock (see [`clock`]) into `maps.clock`.
    pub fn calibrate_clock(
        &mut self,
        maps: &mut MapHandles,
    ) -> Result<mcs_common::ClockValue, clock::ClockError> {
        clock::calibrate(&mut self.ebpf, &mut maps.clock)
    }

    /// The maps and their adopted contents (see
    /// [`MapHandles::take_with_state`]).
    pub fn maps_with_state(
        &mut self,
    ) -> Result<(MapHandles, crate::reconcile::PinnedState), DataplaneError> {
        MapHandles::take_with_state(&mut self.ebpf)
    }

    /// Ends this agent. With `detach`, removes every link and map pin (the
    /// dataplane stops); otherwise leaves the pinned dataplane serving for
    /// the next agent (an upgrade or restart).
    pub fn shutdown(self, detach: bool) {
        if detach {
            remove_pins(&self.bpffs_dir);
        } else {
            info!(dir = %self.bpffs_dir.display(), "dataplane left running from its pins (use --detach-on-exit or `mcs-agent cleanup` to remove it)");
        }
    }
}

fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let load_error = |name| move |source| DataplaneError::LoadProgram { name, source };
    for name in [programs::XDP, programs::XDP_NIC] {
        xdp::xdp_program(ebpf, name)?
            .load()
            .map_err(load_error(name))?;
    }
    for name in [programs::TC_INGRESS, programs::TC_EGRESS] {
        tc::tc_program(ebpf, name)?
            .load()
            .map_err(load_error(name))?;
    }
    for name in programs::SOCKET {
        cgroup::socket_program(ebpf, name)?
            .load()
            .map_err(load_error(name))?;
    }
    Ok(())
}

/// Removes everything mcs pinned under `bpffs_dir`: links first (the
/// programs detach when their last reference goes; netlink tc filters are
/// deleted), then maps. Returns what was removed.
pub fn remove_pins(bpffs_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let tc_dir = tc::tc_pin_dir(bpffs_dir);
    if let Ok(entries) = fs::read_dir(&tc_dir) {
        for entry in entries.flatten() {
            let interface = entry.file_name().to_string_lossy().into_owned();
            tc::remove_tc_dir(&entry.path(), &interface);
            removed.push(entry.path());
        }
    }
    let _ = fs::remove_dir(&tc_dir);
    for dir in [link_pin_dir(bpffs_dir), map_pin_dir(bpffs_dir)] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                Err(error) => warn!(path = %entry.path().display(), %error, "cannot remove pin"),
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_dir(bpffs_dir);
    if !removed.is_empty() {
        info!(count = removed.len(), dir = %bpffs_dir.display(), "removed pinned links and maps");
    }
    removed
}
