//! The Maglev table array (`MCS_MAGLEV_V2`, mmapable): tables are written
//! and read through a shared mapping of just the pages they occupy, mapped
//! for the write and unmapped after it. The kernel maps every page of a
//! mapping of a BPF array at `mmap` time, so a mapping of the whole array
//! would count all of it in the agent's resident memory; a window costs
//! two system calls per group of nearby tables instead (a cold sync writes
//! its tables side by side, a group per batch).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{Array, IterableMap as _, MapData};
use mcs_common::{MAGLEV_CHUNK_BYTES, MaglevChunk, MaglevPlace, maglev_position};

/// Tables closer than this many pages are written through one mapping.
const GROUP_GAP_PAGES: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum TableArrayError {
    #[error("cannot read the table array's information")]
    Info(#[source] aya::maps::MapError),
    #[error("table at chunks {start}..{end} lies beyond the array's {capacity} chunks")]
    OutOfRange { start: u64, end: u64, capacity: u64 },
    #[error("cannot map chunks of the table array into memory")]
    Mmap(#[source] io::Error),
}

/// A shared mapping of part of the array, unmapped on drop.
struct Window {
    ptr: NonNull<u8>,
    len: usize,
    /// Byte offset of the mapping in the array's values.
    offset: u64,
}

impl Window {
    fn map(data: &MapData, offset: u64, len: usize, writable: bool) -> Result<Self, io::Error> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let file_offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: maps `len` bytes of the array's values from a page-aligned
        // `offset` (the kernel checks both against the map); the pointer
        // is used only within `len` and unmapped in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Self { ptr, len, offset })
    }

    /// The byte at array byte offset `at` (inside the window).
    fn byte(&self, at: u64) -> *mut u8 {
        let index = usize::try_from(at - self.offset).unwrap_or(usize::MAX);
        assert!(index < self.len, "outside the mapped window");
        // SAFETY: `index` < `len`, inside the mapping.
        unsafe { self.ptr.as_ptr().add(index) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference outlives it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|size| *size > 0)
        .unwrap_or(4096)
}

/// The table array and how to write and read tables in it.
pub struct TableArray {
    map: Array<MapData, MaglevChunk>,
    chunks: u64,
    page: u64,
}

impl TableArray {
    pub fn new(map: Array<MapData, MaglevChunk>) -> Result<Self, TableArrayError> {
        let chunks = u64::from(
            map.map()
                .info()
                .map_err(TableArrayError::Info)?
                .max_entries(),
        );
        Ok(Self {
            map,
            chunks,
            page: page_size(),
        })
    }

    /// Chunks the array holds (its capacity).
    pub fn capacity(&self) -> u64 {
        self.chunks
    }

    /// The window of whole pages covering chunks `start..end`.
    fn window(&self, start: u64, end: u64, writable: bool) -> Result<Window, TableArrayError> {
        if end > self.chunks || start > end {
            return Err(TableArrayError::OutOfRange {
                start,
                end,
                capacity: self.chunks,
            });
        }
        let bytes = u64::from(MAGLEV_CHUNK_BYTES);
        let first = start * bytes / self.page * self.page;
        let last = (end * bytes).div_ceil(self.page) * self.page;
        let len = usize::try_from((last - first).max(self.page)).unwrap_or(usize::MAX);
        Window::map(self.map.map(), first, len, writable).map_err(TableArrayError::Mmap)
    }

    /// Writes each table's entries (slot numbers) at its place; nearby
    /// tables share one mapping. Returns the tables that could not be
    /// written (by position), with the error.
    pub fn write(&self, tables: &[(MaglevPlace, &[u16])]) -> Vec<(usize, TableArrayError)> {
        let mut order: Vec<usize> = (0..tables.len()).collect();
        order.sort_by_key(|&i| tables[i].0.base);
        let gap = GROUP_GAP_PAGES * self.page / u64::from(MAGLEV_CHUNK_BYTES);
        let mut failures = Vec::new();
        let mut group: Vec<usize> = Vec::new();
        let flush = |group: &mut Vec<usize>, failures: &mut Vec<(usize, TableArrayError)>| {
            let Some(&first) = group.first() else {
                return;
            };
            let start = u64::from(tables[first].0.base);
            let end = group
                .iter()
                .map(|&i| u64::from(tables[i].0.range().end))
                .max()
                .unwrap_or(start);
            match self.window(start, end, true) {
                Ok(window) => {
                    for &i in group.iter() {
                        write_table(&window, tables[i].0, tables[i].1);
                    }
                }
                Err(_) => {
                    // Retry one by one: only the tables out of range fail.
                    for &i in group.iter() {
                        let place = tables[i].0;
                        match self.window(u64::from(place.base), u64::from(place.range().end), true)
                        {
                            Ok(window) => write_table(&window, place, tables[i].1),
                            Err(error) => failures.push((i, error)),
                        }
                    }
                }
            }
            group.clear();
        };
        let mut end = 0u64;
        for i in order {
            let place = tables[i].0;
            if !group.is_empty() && u64::from(place.base) > end + gap {
                flush(&mut group, &mut failures);
            }
            end = end.max(u64::from(place.range().end));
            group.push(i);
        }
        flush(&mut group, &mut failures);
        failures
    }

    /// The entries of the table at `place`.
    pub fn read(&self, place: MaglevPlace) -> Result<Vec<u16>, TableArrayError> {
        let window = self.window(u64::from(place.base), u64::from(place.range().end), false)?;
        Ok((0..place.size)
            .map(|index| {
                let at = byte_offset(place, index);
                // SAFETY: inside the window (it covers the table).
                unsafe {
                    if place.wide {
                        u16::from_ne_bytes([*window.byte(at), *window.byte(at + 1)])
                    } else {
                        u16::from(*window.byte(at))
                    }
                }
            })
            .collect())
    }
}

/// Array byte offset of entry `index` of the table at `place`.
fn byte_offset(place: MaglevPlace, index: u32) -> u64 {
    let (chunk, byte) = maglev_position(place.base, index, place.wide);
    u64::from(chunk) * u64::from(MAGLEV_CHUNK_BYTES) + byte as u64
}

fn write_table(window: &Window, place: MaglevPlace, slots: &[u16]) {
    for (index, slot) in (0..place.size).zip(slots) {
        let at = byte_offset(place, index);
        // SAFETY: inside the window (it covers the table); a shared mapping
        // the datapath reads one entry at a time (aligned, so never torn).
        unsafe {
            if place.wide {
                window.byte(at).cast::<u16>().write(*slot);
            } else {
                // Narrow tables hold slots below 256.
                window.byte(at).write(*slot as u8);
            }
        }
    }
}
