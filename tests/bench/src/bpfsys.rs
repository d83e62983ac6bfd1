//! Raw `bpf(2)` calls of the bench: batched map writes for its own fixtures,
//! in chunks, through the agent's `BPF_MAP_UPDATE_BATCH` wrapper (aya 0.14
//! has no batch operations).

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
