//! The eBPF dataplane: loading the embedded object, pinning its maps under
//! the bpffs directory, attaching the XDP program to interfaces, and map
//! access for the reconciler (write) and `dump` (read).

pub mod maps;

use std::{
    fs,
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use mcs_common::{names, programs};
use tracing::{info, warn};

pub use maps::{MapHandles, PinnedMaps};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcs-ebpf.o"));

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
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

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

/// Where the maps are pinned: `<bpffs-dir>/maps/<MAP_NAME>`.
pub fn map_pin_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

/// Whether `path` (or, if it does not exist yet, its closest existing
/// ancestor) lives on a bpffs mount.
fn is_bpffs(path: &Path) -> bool {
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

/// A loaded dataplane: the eBPF object with pinned maps and attached XDP.
pub struct Dataplane {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
    bpffs_dir: PathBuf,
    _logger: Option<crate::telemetry::BpfLogTask>,
}

impl Dataplane {
    /// Loads the embedded object, pinning maps under `bpffs_dir`.
    ///
    /// Maps left pinned by an earlier agent are not adopted yet: they are
    /// removed (with a warning) and created afresh.
    pub fn load(bpffs_dir: &Path) -> Result<Self, DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::MissingObject);
        }
        if !is_bpffs(bpffs_dir) {
            return Err(DataplaneError::BpffsNotMounted(bpffs_dir.to_path_buf()));
        }
        let pin_dir = map_pin_dir(bpffs_dir);
        let pin_error = |source| DataplaneError::PinDirectory {
            path: pin_dir.clone(),
            source,
        };
        if pin_dir.exists() {
            warn!(dir = %pin_dir.display(), "removing maps pinned by an earlier agent (state is rebuilt from the source)");
            fs::remove_dir_all(&pin_dir).map_err(pin_error)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&pin_dir)
            .map_err(pin_error)?;
        fs::set_permissions(bpffs_dir, fs::Permissions::from_mode(0o700)).map_err(pin_error)?;

        let pin_paths: Vec<(&'static str, PathBuf)> =
            names::ALL.iter().map(|name| (*name, pin_dir.join(name))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let logger = crate::telemetry::BpfLogTask::start(&mut ebpf);

        let program: &mut Xdp = ebpf
            .program_mut(programs::XDP)
            .ok_or(DataplaneError::MissingProgram(programs::XDP))?
            .try_into()
            .map_err(|source| DataplaneError::LoadProgram {
                name: programs::XDP,
                source,
            })?;
        program.load().map_err(|source| DataplaneError::LoadProgram {
            name: programs::XDP,
            source,
        })?;
        info!(dir = %pin_dir.display(), "eBPF dataplane loaded, maps pinned");
        Ok(Self {
            ebpf,
            links: Vec::new(),
            bpffs_dir: bpffs_dir.to_path_buf(),
            _logger: logger,
        })
    }

    /// Attaches the XDP program to `interface`.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(programs::XDP)
            .ok_or(DataplaneError::MissingProgram(programs::XDP))?
            .try_into()
            .map_err(|source| DataplaneError::LoadProgram {
                name: programs::XDP,
                source,
            })?;
        let attach = |program: &mut Xdp, xdp_mode, mode_name| {
            program
                .attach(interface, xdp_mode)
                .map_err(|source| DataplaneError::Attach {
                    interface: interface.to_owned(),
                    mode: mode_name,
                    source,
                })
        };
        let link = match mode {
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
        info!(interface, ?mode, "XDP attached");
        self.links.push((interface.to_owned(), link));
        Ok(())
    }

    /// Typed handles on the maps for the reconciler.
    pub fn maps(&mut self) -> Result<MapHandles, DataplaneError> {
        MapHandles::take(&mut self.ebpf)
    }

    /// Detaches every program this agent attached and removes its pins.
    pub fn shutdown(mut self) {
        let program: Option<&mut Xdp> = self
            .ebpf
            .program_mut(programs::XDP)
            .and_then(|program| program.try_into().ok());
        if let Some(program) = program {
            for (interface, link) in self.links.drain(..) {
                match program.detach(link) {
                    Ok(()) => info!(interface, "XDP detached"),
                    Err(error) => warn!(interface, error = %crate::telemetry::chain(&error), "XDP detach failed"),
                }
            }
        }
        let pin_dir = map_pin_dir(&self.bpffs_dir);
        if let Err(error) = fs::remove_dir_all(&pin_dir) {
            warn!(dir = %pin_dir.display(), %error, "cannot remove pinned maps");
        }
        let _ = fs::remove_dir(&self.bpffs_dir);
    }
}
