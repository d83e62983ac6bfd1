//! Socket LB: the cgroup `sock_addr` programs, attached at the node's
//! cgroup v2 root so every socket of every process (pods included, and
//! cgroups created later) is covered.
//!
//! Finding the root: inside a container the default cgroup mount is the
//! container's own cgroup namespace, which covers only the agent. The
//! DaemonSet mounts the host's `/sys/fs/cgroup` into the container (a
//! recursive bind: on a cgroup-v2-only host it is the cgroup2 mount
//! itself, on a hybrid host its `unified` submount); of the cgroup2 mounts
//! this process sees, the hierarchy's root is the one whose directory is
//! the root cgroup (inode 1 on the cgroup2 file system: kernfs numbers its
//! root first). A namespaced mount shows a descendant there.
//!
//! `--socket-lb-host-only` limits translation to sockets of the agent's own
//! network namespace (the node's: host-network pods, the kubelet); pods
//! behind a service-mesh sidecar then keep their ClusterSetIP destination
//! for the sidecar, and the per-packet path (tc) serves their traffic.

use std::{
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use mcs_common::programs;
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, link_pin_dir};

/// Name of the object's global holding the network namespace cookie socket
/// LB is limited to (0: every namespace).
pub const NETNS_ONLY_GLOBAL: &str = "MCS_SOCK_NETNS_ONLY";

/// Inode of a cgroup2 hierarchy's root directory.
const CGROUP2_ROOT_INO: u64 = 1;
/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupRootError {
    #[error("cannot read {0}")]
    Mountinfo(String, #[source] std::io::Error),
    #[error(
        "no cgroup v2 mount here is the hierarchy's root (seen: {seen}); mount the host's \
         /sys/fs/cgroup into the container (hostPath) or give --cgroup"
    )]
    NoRoot { seen: String },
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
}

/// The cgroup2 mount points in a `mountinfo` table, in its order.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// `mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|code| u8::from_str_radix(code, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type == CGROUP2_SUPER_MAGIC
    }
}

/// Whether `path` is the root of the cgroup v2 hierarchy.
pub fn is_hierarchy_root(path: &Path) -> bool {
    is_cgroup2(path) && fs::metadata(path).is_ok_and(|meta| meta.ino() == CGROUP2_ROOT_INO)
}

/// The node's cgroup v2 root among this process's mounts (see the module
/// docs).
pub fn node_cgroup_root() -> Result<PathBuf, CgroupRootError> {
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let mountinfo = fs::read_to_string(MOUNTINFO)
        .map_err(|error| CgroupRootError::Mountinfo(MOUNTINFO.to_owned(), error))?;
    let mounts = cgroup2_mounts(&mountinfo);
    mounts
        .iter()
        .find(|path| is_hierarchy_root(path))
        .cloned()
        .ok_or_else(|| CgroupRootError::NoRoot {
            seen: if mounts.is_empty() {
                "none".to_owned()
            } else {
                mounts
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// Checks an operator-given cgroup directory.
pub fn check_cgroup(path: &Path) -> Result<(), CgroupRootError> {
    if is_cgroup2(path) {
        Ok(())
    } else {
        Err(CgroupRootError::NotCgroup2(path.to_path_buf()))
    }
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14+): what the socket programs compare with
/// `bpf_get_netns_cookie`.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(super) fn socket_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::LoadProgram { name, source })
}

impl Dataplane {
    /// Attaches the socket-LB programs to the cgroup v2 directory `cgroup`
    /// (every socket of processes in it and below). A link pinned by an
    /// earlier agent is replaced after the new one is in place: while both
    /// run, the first translates and the second sees a backend address and
    /// leaves it, so no socket is translated twice or missed.
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let file = fs::File::open(cgroup).map_err(|source| DataplaneError::PinDirectory {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for name in programs::SOCKET {
            let pin = link_pin_dir(&self.bpffs_dir).join(format!("cgroup-{name}"));
            let old = PinnedLink::from_pin(&pin).ok();
            let program = socket_program(&mut self.ebpf, name)?;
            // bpf_link attachments to a cgroup always coexist (the kernel
            // rejects multi-attach flags on link_create).
            let link_id = program
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|source| DataplaneError::AttachCgroup {
                    cgroup: cgroup.to_path_buf(),
                    program: name,
                    source,
                })?;
            self.links_touched = true;
            let pin_error =
                |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::PinLink {
                    interface: cgroup.display().to_string(),
                    path: pin.clone(),
                    source,
                };
            let link = program
                .take_link(link_id)
                .map_err(|error| pin_error(Box::new(error)))?;
            let fd_link = FdLink::try_from(link).map_err(|error| pin_error(Box::new(error)))?;
            if let Some(old) = old {
                // Unpin the earlier agent's link; it detaches when closed.
                if let Err(error) = old.unpin() {
                    warn!(program = name, %error, "cannot unpin the previous socket-LB link");
                }
            }
            let _pinned = fd_link
                .pin(&pin)
                .map_err(|error| pin_error(Box::new(error)))?;
        }
        info!(cgroup = %cgroup.display(), programs = ?programs::SOCKET, "socket LB attached");
        self.socket_lb = true;
        self.program_attached();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mounts_of_v2_only_hybrid_and_container_layouts() {
        let v2_only = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
                       30 23 0:27 / /sys/fs/pstore rw shared:5 - pstore pstore rw";
        assert_eq!(cgroup2_mounts(v2_only), [PathBuf::from("/sys/fs/cgroup")]);
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mounts(hybrid),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        // A container: its own namespaced mount, and the host's bind-mounted
        // (a recursive bind of a hybrid host, with a space in the path).
        let container = "700 690 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
                         710 690 0:28 / /host/cg\\040root rw - tmpfs tmpfs rw\n\
                         711 710 0:26 / /host/cg\\040root/unified rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mounts(container),
            [
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/host/cg root/unified")
            ]
        );
        assert!(cgroup2_mounts("garbage\n\n- -").is_empty());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/trailing\"), r"/trailing\");
        assert_eq!(unescape(r"/bad\9x"), r"/bad\9x");
    }
}
