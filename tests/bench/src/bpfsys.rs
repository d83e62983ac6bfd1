//! Raw `bpf(2)` calls of the bench: batched map writes for its own fixtures,
//! in chunks, through the agent's `BPF_MAP_UPDATE_BATCH` wrapper (aya 0.14
//! has no batch operations), and `BPF_PROG_TEST_RUN` callable from several
//! threads at once.

use std::{io, os::fd::RawFd};

use mcs_agent::dataplane::batch;

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
    for (keys, values) in keys.chunks(chunk).zip(values.chunks(chunk)) {
        batch::update_batch(fd, keys, values).map_err(|error| error.source)?;
    }
    Ok(())
}

/// `BPF_PROG_TEST_RUN` from `enum bpf_cmd`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs program `fd` on `data` `repeat` times on the calling thread's CPU
/// (through `bpf(2)`, so several threads can run one program at once):
/// the verdict and the kernel's mean ns per run.
pub fn test_run(fd: RawFd, data: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        data_size_in: u32::try_from(data.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        data_in: data.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` describes `data` (read only); no output buffers are
    // given; the kernel writes the verdict and duration back into `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}
