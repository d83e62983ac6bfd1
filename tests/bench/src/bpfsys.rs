//! What aya 0.14 does not offer: `BPF_MAP_UPDATE_BATCH` (aya has no batch
//! map operations), called directly through `bpf(2)`.

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

/// Writes `keys[i] → values[i]` with one `BPF_MAP_UPDATE_BATCH` per
/// `chunk` elements. `K` and `V` must be the map's exact key and value
/// types (`repr(C)`, no padding), as for aya's `Pod`.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: RawFd,
    keys: &[K],
    values: &[V],
    chunk: usize,
) -> io::Result<()> {
    if keys.len() != values.len() || chunk == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "keys and values differ in length, or chunk is 0",
        ));
    }
    let fd = u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    for (keys, values) in keys.chunks(chunk).zip(values.chunks(chunk)) {
        let mut done = 0usize;
        while done < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
                map_fd: fd,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` describes `count` keys and values in live
            // slices of the map's own types; the kernel reads them and
            // writes back only `attr.count`.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &raw mut attr,
                    size_of::<BatchAttr>(),
                )
            };
            if ret < 0 {
                let error = io::Error::last_os_error();
                // EINTR/EAGAIN may leave a partial batch: go on after it.
                if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                    done += attr.count as usize;
                    continue;
                }
                return Err(error);
            }
            done += attr.count as usize;
        }
    }
    Ok(())
}
