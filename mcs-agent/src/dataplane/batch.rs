//! `BPF_MAP_UPDATE_BATCH` through `bpf(2)`: aya 0.14 has no batch map
//! operations. One call writes many entries (one syscall, one key/value
//! buffer in the kernel), which is what a cold sync of many frontends needs.

use std::{io, mem::size_of, os::fd::RawFd};

/// `BPF_MAP_UPDATE_BATCH` from `enum bpf_cmd`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

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
