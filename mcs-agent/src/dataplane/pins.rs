//! What an agent does to the pins under its bpffs directory, so that a
//! start that never gets to attach its program leaves them exactly as it
//! found them (an earlier agent's links keep serving with that agent's
//! maps), and `cleanup` removes everything.
//!
//! A start replaces pins only through a [`PinLedger`]: an incompatible map
//! or one under an older name is moved aside into `<bpffs-dir>/replaced/`
//! instead of being deleted, and every pin the start creates is recorded.
//! * [`PinLedger::commit`], when the new program is attached: the moved-aside
//!   pins are deleted (nothing serves with them any more).
//! * [`PinLedger::roll_back`], when the start fails or stops before that:
//!   the created pins are removed and the moved-aside ones put back.
//! * An agent killed between the two leaves `replaced/`; the next start
//!   puts it back first ([`restore_leftover`]), as a rollback would have.

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::{link_pin_dir, map_pin_dir, tc};

/// Where replaced pins wait until the start completes.
pub fn stash_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("replaced")
}

/// The pins one start created or moved aside.
#[derive(Debug, Default)]
pub struct PinLedger {
    stash: PathBuf,
    created: Vec<PathBuf>,
    /// (its pin, where it waits)
    stashed: Vec<(PathBuf, PathBuf)>,
}

/// What a rollback did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RolledBack {
    pub removed: Vec<PathBuf>,
    pub restored: Vec<PathBuf>,
}

impl PinLedger {
    pub fn new(bpffs_dir: &Path) -> Self {
        Self {
            stash: stash_dir(bpffs_dir),
            ..Self::default()
        }
    }

    /// Moves `pin` aside (it is replaced); if that is impossible, removes it
    /// (the start could not go on otherwise) and says so.
    pub fn replace(&mut self, pin: &Path) {
        let Some(name) = pin.file_name() else {
            return;
        };
        let aside = self.stash.join(name);
        let moved = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.stash)
            .and_then(|()| {
                let _ = fs::remove_file(&aside);
                fs::rename(pin, &aside)
            });
        match moved {
            Ok(()) => self.stashed.push((pin.to_path_buf(), aside)),
            Err(error) => {
                warn!(pin = %pin.display(), %error, "cannot move the replaced pin aside; removing it (a failed start cannot restore it)");
                let _ = fs::remove_file(pin);
            }
        }
    }

    /// Records a pin this start creates.
    pub fn created(&mut self, pin: PathBuf) {
        self.created.push(pin);
    }

    /// The new program is attached: the replaced pins are deleted.
    pub fn commit(&mut self) {
        for (_, aside) in self.stashed.drain(..) {
            let _ = fs::remove_file(aside);
        }
        let _ = fs::remove_dir(&self.stash);
        self.created.clear();
    }

    /// Undoes the start: removes what it created and puts back what it
    /// replaced.
    pub fn roll_back(&mut self) -> RolledBack {
        let mut done = RolledBack::default();
        for pin in self.created.drain(..) {
            if fs::remove_file(&pin).is_ok() {
                done.removed.push(pin);
            }
        }
        for (pin, aside) in self.stashed.drain(..) {
            let _ = fs::remove_file(&pin);
            match fs::rename(&aside, &pin) {
                Ok(()) => done.restored.push(pin),
                Err(error) => {
                    warn!(pin = %pin.display(), %error, "cannot put a replaced pin back")
                }
            }
        }
        let _ = fs::remove_dir(&self.stash);
        done
    }
}

/// Puts back pins a start moved aside and never committed (it was killed
/// before attaching its program). Returns their names.
pub fn restore_leftover(bpffs_dir: &Path) -> Vec<String> {
    let stash = stash_dir(bpffs_dir);
    let Ok(entries) = fs::read_dir(&stash) else {
        return Vec::new();
    };
    let pins = map_pin_dir(bpffs_dir);
    let mut restored = Vec::new();
    for entry in entries.flatten() {
        let pin = pins.join(entry.file_name());
        let _ = fs::remove_file(&pin);
        match fs::rename(entry.path(), &pin) {
            Ok(()) => restored.push(entry.file_name().to_string_lossy().into_owned()),
            Err(error) => warn!(pin = %pin.display(), %error, "cannot put a replaced pin back"),
        }
    }
    let _ = fs::remove_dir(&stash);
    restored
}

/// Removes everything mcs pinned under `bpffs_dir`: links first (the
/// programs detach when their last reference goes; netlink tc filters are
/// deleted), then maps and pins waiting to be replaced. Returns what was
/// removed.
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
    for dir in [
        link_pin_dir(bpffs_dir),
        map_pin_dir(bpffs_dir),
        stash_dir(bpffs_dir),
    ] {
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

/// Removes the pin directories when they hold nothing (after a rollback of
/// a start on an empty directory).
pub fn remove_empty_dirs(bpffs_dir: &Path) {
    for dir in [
        link_pin_dir(bpffs_dir),
        map_pin_dir(bpffs_dir),
        tc::tc_pin_dir(bpffs_dir),
        bpffs_dir.to_path_buf(),
    ] {
        if fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_none()) {
            let _ = fs::remove_dir(&dir);
        }
    }
}
