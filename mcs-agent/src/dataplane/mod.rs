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
//! * `replaced/` — pins a starting agent replaced, kept until its program
//!   is attached, so a start that fails before can put them back
//!   (`pins.rs`).
//!
//! One agent per directory: `lock.rs` takes an exclusive lock on it before
//! anything is touched.

pub mod batch;
pub mod cgroup;
pub mod clock;
pub mod layout;
mod links;
pub mod lock;
pub mod maglev;
pub mod maps;
pub mod memory;
pub mod pins;
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
pub use pins::remove_pins;
pub use tc::TcAttach;
pub use xdp::{AttachMode, Device};

use self::pins::PinLedger;

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
    TableArray {
        name: &'static str,
        #[source]
        source: maglev::TableArrayError,
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
    /// What this start did to the pins, until a program is attached.
    ledger: PinLedger,
    /// Whether a program of this agent was attached (no way back after).
    links_touched: bool,
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

        let restored = pins::restore_leftover(bpffs_dir);
        if !restored.is_empty() {
            warn!(
                pins = ?restored,
                "put back pins an earlier start replaced and never committed (it stopped before attaching)"
            );
        }
        let mut ledger = PinLedger::new(bpffs_dir);
        let report = layout::prepare_pins(&pin_dir, sizes, &mut ledger);
        for name in report
            .created
            .iter()
            .chain(report.recreated.iter().map(|(name, _)| name))
        {
            ledger.created(pin_dir.join(name));
        }
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
                disruption = layout::disruption(name),
                "replacing the pin of a map this agent has under a newer name"
            );
        }
        let loaded = load_pinned(&pin_dir, sizes, options).and_then(|(ebpf, logger)| {
            let mut dataplane = Self {
                ebpf,
                bpffs_dir: bpffs_dir.to_path_buf(),
                xdp: BTreeSet::new(),
                tc: BTreeSet::new(),
                socket_lb: false,
                ledger: PinLedger::new(bpffs_dir),
                links_touched: false,
                _logger: logger,
            };
            dataplane.write_abi().map(|()| dataplane)
        });
        match loaded {
            Ok(mut dataplane) => {
                dataplane.ledger = ledger;
                info!(
                    dir = %pin_dir.display(),
                    adopted = report.adopted.len(),
                    created = report.created.len(),
                    recreated = report.recreated.len(),
                    "eBPF dataplane loaded"
                );
                Ok((dataplane, report))
            }
            Err(error) => {
                roll_back(bpffs_dir, &mut ledger);
                Err(error)
            }
        }
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

    /// A program of this agent serves: the start can no longer be undone,
    /// and the pins it replaced are deleted.
    fn program_attached(&mut self) {
        self.links_touched = true;
        self.ledger.commit();
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

    /// Ends an agent whose start did not complete: if none of its programs
    /// was attached, the pins are left as it found them (what it created is
    /// removed, what it replaced put back), so an earlier agent's dataplane
    /// keeps serving untouched; otherwise as [`shutdown`](Self::shutdown)
    /// without detaching.
    pub fn abandon(mut self) {
        if self.links_touched {
            self.shutdown(false);
        } else {
            roll_back(&self.bpffs_dir, &mut self.ledger);
        }
    }

    /// Whether a program of this agent was attached.
    pub fn attached_any(&self) -> bool {
        self.links_touched
    }

    /// Ends this agent. With `detach`, removes every link and map pin (the
    /// dataplane stops); otherwise leaves the pinned dataplane serving for
    /// the next agent (an upgrade or restart).
    pub fn shutdown(mut self, detach: bool) {
        if detach {
            remove_pins(&self.bpffs_dir);
        } else {
            self.ledger.commit();
            info!(dir = %self.bpffs_dir.display(), "dataplane left running from its pins (use --detach-on-exit or `mcs-agent cleanup` to remove it)");
        }
    }
}

/// Loads the object with its maps pinned in `pin_dir`, and its programs.
fn load_pinned(
    pin_dir: &Path,
    sizes: &MapSizes,
    options: LoadOptions,
) -> Result<(Ebpf, Option<crate::telemetry::BpfLogTask>), DataplaneError> {
    let mut loader = EbpfLoader::new();
    let pin_paths: Vec<(&'static str, PathBuf)> = names::ALL
        .iter()
        .map(|name| (*name, pin_dir.join(name)))
        .collect();
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
    Ok((ebpf, logger))
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

/// Undoes what a start did to the pins (see `pins.rs`), loudly.
fn roll_back(bpffs_dir: &Path, ledger: &mut PinLedger) {
    let undone = ledger.roll_back();
    pins::remove_empty_dirs(bpffs_dir);
    warn!(
        removed = ?undone.removed,
        restored = ?undone.restored,
        "start abandoned before attaching: removed the pins it created and put back the ones it replaced"
    );
}
