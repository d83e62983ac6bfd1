//! Named network namespaces (`/run/netns/NAME`) owned by a test.
//!
//! A [`Netns`] is created with `ip netns add` and deleted again on `Drop`;
//! deleting a namespace also removes every veth end that lives in it, so
//! tearing down the namespaces tears down the whole topology.
//!
//! Code runs "inside" a namespace in two ways:
//! - [`enter`]/[`Netns::enter`] runs a closure on a fresh thread that has
//!   `setns(CLONE_NEWNET)` into the namespace: sockets it creates belong to
//!   the namespace for their whole life, whichever thread uses them later;
//! - [`Netns::command`] builds a [`Command`] whose child enters only the
//!   network namespace before `exec`. Unlike `ip netns exec`, it keeps the
//!   caller's mount namespace, so the child sees the real `/sys/fs/bpf` (a
//!   pinning agent must not run under `ip netns exec`).

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Start of every namespace name the harness creates: `mcs<pid>t<n>-...`.
const NAME_MARK: &str = "mcs";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A prefix unique to this process and call, e.g. `mcs4711t3`, so that tests
/// in parallel threads and parallel processes never share a name. The pid in
/// it lets [`reap_stale`] recognise leftovers of processes that died.
pub fn unique_prefix() -> String {
    format!(
        "{NAME_MARK}{}t{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace created by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `/run/netns/NAME` (`ip netns add NAME`) and brings `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `PROGRAM ARGS...` with only the network namespace entered (see
    /// [`Netns::command`]) and returns its stdout; fails on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program)?.args(args))
    }

    /// A [`Command`] whose child joins this network namespace (and nothing
    /// else) before `exec`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in(&self.name, program)
    }

    /// A veth pair: `local` in this namespace, `peer` in `peer_ns`.
    pub fn add_veth(&self, local: &str, peer_ns: &Netns, peer: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &peer_ns.name,
        ])
        .map(drop)
    }

    /// Writes a sysctl below `/proc/sys` (`key` in dotted form, e.g.
    /// `net.ipv4.ip_forward`) as seen from inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in {}", self.name))
    }

    /// Runs `f` on a thread inside this namespace; see [`enter`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        enter(&self.name, f)
    }

    /// Names of the network interfaces in the namespace (without `lo`).
    pub fn interfaces(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            // "eth0@if12" names the peer's index after the '@'.
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .filter(|name| name != "lo")
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// `/run/netns/NAME`.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

/// Runs `f` on a new thread that has joined the network namespace `name` and
/// returns its result. A panic in `f` (a failed assertion) is re-raised on
/// the calling thread.
///
/// A dedicated thread is used because `setns` changes only the calling
/// thread, and the thread is discarded afterwards so that no pooled thread is
/// left in the wrong namespace.
pub fn enter<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path_of(name)).with_context(|| format!("opening netns {name}"))?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into netns {name}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A [`Command`] whose child process joins network namespace `name` (and
/// nothing else) before `exec`.
pub fn command_in(name: &str, program: impl AsRef<OsStr>) -> Result<Command> {
    let file = File::open(path_of(name)).with_context(|| format!("opening netns {name}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure only calls setns(2), which is async-signal-safe,
    // and builds an io::Error from errno; it allocates nothing. The file is
    // O_CLOEXEC, so it is still open in the child when this runs and closes
    // at exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Deletes the namespace `name` (`ip netns del`); a missing one is fine.
pub fn delete(name: &str) -> Result<()> {
    if !path_of(name).exists() {
        return Ok(());
    }
    match run(Command::new("ip").args(["netns", "del", name])) {
        Ok(_) => Ok(()),
        // Deleted concurrently (two tests reaping the same leftovers).
        Err(_) if !path_of(name).exists() => Ok(()),
        Err(e) => Err(e.context(format!("deleting network namespace {name}"))),
    }
}

/// Names of the existing namespaces that start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).context(NETNS_RUN_DIR),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The pid in a name made from [`unique_prefix`] (`mcs<pid>t<n>...`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_MARK)?;
    let (pid, rest) = rest.split_once('t')?;
    let n_len = rest.chars().take_while(char::is_ascii_digit).count();
    if n_len == 0 || pid.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this pid is alive.
pub fn pid_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Deletes namespaces left behind by harness processes that no longer run
/// (killed with SIGKILL, or aborted, so their `Drop`s never ran). Only names
/// of the harness's own `mcs<pid>t<n>` form are touched.
pub fn reap_stale() -> Result<Vec<String>> {
    let mut reaped = Vec::new();
    for name in list_with_prefix(NAME_MARK)? {
        if let Some(pid) = owner_pid(&name)
            && pid != std::process::id()
            && !pid_alive(pid)
        {
            delete(&name)?;
            reaped.push(name);
        }
    }
    Ok(reaped)
}

/// Runs a command to completion; fails with its stderr on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_parse_back() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&format!("{a}-a1")), Some(std::process::id()));
        assert_eq!(owner_pid("mcs12t0-router"), Some(12));
        assert_eq!(owner_pid("mcsprobe"), None);
        assert_eq!(owner_pid("mcs12t-x"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
