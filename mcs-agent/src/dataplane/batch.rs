//! Batch map operations through `bpf(2)`: aya 0.14 has none.
//! * `BPF_MAP_UPDATE_BATCH`: one call writes many entries (one syscall, one
//!   key/value buffer in the kernel), which is what a cold sync of many
//!   frontends needs.
//! * `BPF_MAP_LOOKUP_BATCH`: reads a hash map a bounded number of entries at
//!   a time, resuming where the last call stopped (the kernel's cursor is a
//!   bucket index, so entries deleted meanwhile do not lose the place) —
//!   the conntrack janitor's bounded work per tick.
//! * `BPF_MAP_DELETE_BATCH`: deletes many keys in one call.

use std::{io, mem::size_of, os::fd::RawFd};

/// From `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch stopped at element `index` (the ones before it are written).
#[derive(Debug, thiserror::Error)]
#[error("batch update stopped at element {index}")]
pub struct BatchError {
    pub index: usize,
    #[source]
    pub source: io::Error,
}

/// Writes `keys[i] → values[i]` in order (flags `BPF_ANY`). `K` and `V`
/// must be the map's exact key and value types (`repr(C)`, no padding, as
/// aya's `Pod` requires).
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: RawFd,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    let invalid = |index| BatchError {
        index,
        source: io::Error::from_raw_os_error(libc::EINVAL),
    };
    if keys.len() != values.len() {
        return Err(invalid(0));
    }
    let fd = u32::try_from(fd).map_err(|_| invalid(0))?;
    let mut done = 0usize;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` describes `count` keys and values in live slices
        // of the map's own types; the kernel only reads them and writes
        // back `attr.count` (how many it processed).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let processed = attr.count as usize;
        if ret < 0 {
            let error = io::Error::last_os_error();
            // Interrupted: go on after what was written.
            if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) && processed > 0 {
                done += processed;
                continue;
            }
            return Err(BatchError {
                index: done + processed,
                source: error,
            });
        }
        return Ok(());
    }
    Ok(())
}

/// Where a [`lookup_batch`] pass over a hash map stands: at the start, or
/// at the bucket the kernel reported last (its `out_batch`: a `u32` bucket
/// index for hash maps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor(Option<u32>);

impl Cursor {
    /// A new pass from the first bucket.
    pub const START: Self = Self(None);

    pub fn is_start(&self) -> bool {
        self.0.is_none()
    }
}

/// What one [`lookup_batch`] call read.
#[derive(Debug)]
pub struct Batch<K, V> {
    pub entries: Vec<(K, V)>,
    /// Where the next call goes on; `None`: the pass reached the end.
    pub next: Option<Cursor>,
}

fn syscall_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> Result<(), io::Error> {
    // SAFETY: every pointer in `attr` describes a live buffer sized for
    // `attr.count` keys/values of the map's own types (or the batch token);
    // the kernel writes at most that much and `attr.count` back.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads up to `max` entries of the hash map `fd` from `cursor` on. `K` and
/// `V` must be the map's exact key and value types (not per-CPU).
pub fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    fd: RawFd,
    cursor: Cursor,
    max: usize,
) -> Result<Batch<K, V>, io::Error> {
    let map_fd = u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut count = max.max(1);
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(count);
        let mut values: Vec<V> = Vec::with_capacity(count);
        let in_batch = cursor.0.unwrap_or(0);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: if cursor.0.is_some() {
                (&raw const in_batch) as u64
            } else {
                0
            },
            out_batch: (&raw mut out_batch) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            map_fd,
            ..BatchAttr::default()
        };
        let result = syscall_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let read = (attr.count as usize).min(count);
        let done = match result {
            Ok(()) => false,
            // The end of the map: the entries read (if any) are the last.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than fit: read it whole.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && read == 0 => {
                count = count.saturating_mul(2);
                continue;
            }
            Err(error) => return Err(error),
        };
        // SAFETY: the kernel wrote `read` keys and values (plain data of
        // the map's own types) into the buffers' capacity.
        unsafe {
            keys.set_len(read);
            values.set_len(read);
        }
        return Ok(Batch {
            entries: keys.into_iter().zip(values).collect(),
            next: (!done).then_some(Cursor(Some(out_batch))),
        });
    }
}

/// Deletes `keys` from map `fd`; a key that is already gone is skipped.
/// Returns how many were deleted.
pub fn delete_batch<K: aya::Pod>(fd: RawFd, keys: &[K]) -> Result<usize, io::Error> {
    let map_fd = u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut deleted = 0;
    let mut at = 0;
    while at < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[at..].as_ptr() as u64,
            count: u32::try_from(keys.len() - at).unwrap_or(u32::MAX),
            map_fd,
            ..BatchAttr::default()
        };
        let result = syscall_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        let processed = attr.count as usize;
        deleted += processed;
        match result {
            Ok(()) => break,
            // The key after the deleted ones is gone already (evicted,
            // or the datapath replaced it): skip it.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => at += processed + 1,
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => at += processed,
            Err(error) => return Err(error),
        }
    }
    Ok(deleted)
}
