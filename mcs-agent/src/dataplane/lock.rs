//! One agent per bpffs directory: an exclusive `flock` on the directory
//! itself, taken before anything is read or written there and held for the
//! agent's life (the kernel drops it when the process ends, SIGKILL
//! included). The directory, not a file in `/run`: two agents in two
//! containers share the host's bpffs but not their `/run`.
//!
//! A second agent fails at once, naming the holder as `/proc/locks` shows
//! it (its pid, command line and age, when visible from its namespace).

use std::{
    fmt, fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use super::DataplaneError;

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _dir: fs::File,
}

/// Who holds a lock, as far as this process can see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub command: Option<String>,
    /// Seconds since the holder started.
    pub running_s: Option<u64>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => f.write_str("a process this one cannot see (another pid namespace?)")?,
        }
        if let Some(command) = &self.command {
            write!(f, ", `{command}`")?;
        }
        if let Some(seconds) = self.running_s {
            write!(f, ", running for {seconds} s")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another mcs-agent holds {dir} ({holder}): one agent per bpffs directory (stop it first, or use another --bpffs-dir)"
    )]
    Held { dir: PathBuf, holder: Box<Holder> },
    #[error("cannot lock {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Directory(Box<DataplaneError>),
}

impl From<DataplaneError> for LockError {
    fn from(error: DataplaneError) -> Self {
        Self::Directory(Box::new(error))
    }
}

/// Locks `bpffs_dir` (created 0700 if missing, on a bpffs mount), or fails
/// without waiting if another process holds it.
pub fn acquire(bpffs_dir: &Path) -> Result<DirLock, LockError> {
    if !super::is_bpffs(bpffs_dir) {
        return Err(DataplaneError::BpffsNotMounted(bpffs_dir.to_path_buf()).into());
    }
    if !bpffs_dir.exists() {
        super::create_private_dir(bpffs_dir)?;
    }
    let io_error = |source| LockError::Io {
        dir: bpffs_dir.to_path_buf(),
        source,
    };
    let dir = fs::File::open(bpffs_dir).map_err(io_error)?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_error(error));
        }
        let holder = dir
            .metadata()
            .ok()
            .map(|meta| holder_of(&meta))
            .unwrap_or_default();
        return Err(LockError::Held {
            dir: bpffs_dir.to_path_buf(),
            holder: Box::new(holder),
        });
    }
    Ok(DirLock { _dir: dir })
}

/// The holder of a `FLOCK` on the file with `meta`, from `/proc/locks`.
fn holder_of(meta: &fs::Metadata) -> Holder {
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let pid = fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|locks| flock_holder(&locks, &id));
    let Some(pid) = pid else {
        return Holder::default();
    };
    let command = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            raw.split(|byte| *byte == 0)
                .filter(|arg| !arg.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|command| !command.is_empty());
    Holder {
        pid: Some(pid),
        command,
        running_s: running_seconds(pid),
    }
}

/// The pid of the `FLOCK` on file `id` (`MAJOR:MINOR:INODE` as
/// `/proc/locks` prints it) in `locks`; `None` if absent or not visible
/// (pid 0 from another pid namespace).
fn flock_holder(locks: &str, id: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; a waiter's
        // line starts "1: -> FLOCK ...".
        let at = fields.iter().position(|field| *field == "FLOCK")?;
        let waiting = at.checked_sub(1).and_then(|i| fields.get(i)) == Some(&"->");
        if waiting || fields.get(at + 4) != Some(&id) {
            return None;
        }
        fields
            .get(at + 3)?
            .parse::<u32>()
            .ok()
            .filter(|pid| *pid != 0)
    })
}

/// Seconds since process `pid` started (`/proc/PID/stat` start time
/// against `/proc/uptime`).
fn running_seconds(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces: count from its closing ')'.
    let after = stat.rsplit_once(')')?.1;
    let started_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started_s = started_ticks / ticks.max(1);
    Some((uptime as u64).saturating_sub(started_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:2a:5678 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4321 00:2a:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 777 00:2a:9999 0 EOF\n";
        assert_eq!(flock_holder(locks, "00:2a:5678"), Some(1234));
        assert_eq!(flock_holder(locks, "00:2a:9999"), Some(777));
        assert_eq!(flock_holder(locks, "00:2a:1"), None);
        let hidden = "1: FLOCK  ADVISORY  WRITE 0 00:2a:5678 0 EOF\n";
        assert_eq!(flock_holder(hidden, "00:2a:5678"), None);
    }

    #[test]
    fn a_second_lock_on_a_directory_is_refused_naming_this_process() {
        // flock works on any directory; bpffs is checked by `acquire` only.
        let dir = tempfile::tempdir().unwrap();
        let first = fs::File::open(dir.path()).unwrap();
        // SAFETY: flock on descriptors this test owns.
        assert_eq!(
            unsafe { libc::flock(first.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let second = fs::File::open(dir.path()).unwrap();
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let holder = holder_of(&second.metadata().unwrap());
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(holder.command.is_some(), "{holder:?}");
        assert!(holder.running_s.is_some(), "{holder:?}");
        assert!(holder.to_string().starts_with("pid "), "{holder}");
    }
}
