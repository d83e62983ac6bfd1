//! Heap the parsed model keeps per endpoint (issue 20: at 100k services ×
//! 10 endpoints the endpoints dominate the agent's model). Slices are
//! converted as the sources convert them and kept; the cost of one endpoint
//! is the difference between slices of 20 and of 10 endpoints, divided by
//! the extra endpoints, so per-slice costs (names, ports) cancel out.
//!
//! Two figures are printed: the bytes requested from the allocator and the
//! bytes glibc's malloc hands out for them (16-byte granules, an 8-byte
//! header, 32 bytes at least), which is what the process's RSS pays.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use mcs_agent::model::convert::{Converted, convert};
use serde_json::{Value, json};

struct Counting;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

/// The size of the chunk glibc's malloc uses for `size` bytes.
const fn chunk(size: usize) -> usize {
    let padded = (size + 8 + 15) & !15;
    if padded < 32 { 32 } else { padded }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            REQUESTED.fetch_add(layout.size(), Ordering::Relaxed);
            CHUNKS.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        REQUESTED.fetch_sub(layout.size(), Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            REQUESTED.fetch_add(new_size, Ordering::Relaxed);
            REQUESTED.fetch_sub(layout.size(), Ordering::Relaxed);
            CHUNKS.fetch_add(chunk(new_size), Ordering::Relaxed);
            CHUNKS.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SLICES: usize = 1_000;

/// `SLICES` EndpointSlices of `per_slice` endpoints each: one IPv4 address,
/// conditions, and a pod hostname on every other one (headless services
/// have them, ClusterSetIP ones usually not).
fn slices(per_slice: usize) -> Vec<Value> {
    (0..SLICES)
        .map(|s| {
            let endpoints: Vec<Value> = (0..per_slice)
                .map(|e| {
                    let address = format!("10.{}.{}.{}", s / 250, s % 250, e + 1);
                    let mut endpoint = json!({"addresses": [address],
                        "conditions": {"ready": true, "serving": true, "terminating": false}});
                    if e % 2 == 0 {
                        endpoint["hostname"] = json!(format!("web-{s}-{e}"));
                    }
                    endpoint
                })
                .collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("svc-{s}-abcde"), "namespace": "demo",
                    "labels": {"multicluster.kubernetes.io/service-name": format!("svc-{s}"),
                               "multicluster.kubernetes.io/source-cluster": "cluster-a"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": endpoints})
        })
        .collect()
}

/// Heap (requested, malloc chunks) the converted `values` keep.
fn kept(values: &[Value]) -> (usize, usize) {
    let before = (
        REQUESTED.load(Ordering::Relaxed),
        CHUNKS.load(Ordering::Relaxed),
    );
    let converted: Vec<Converted> = values.iter().map(convert).collect();
    assert!(converted.iter().all(|c| c.rejections.is_empty()));
    let after = (
        REQUESTED.load(Ordering::Relaxed),
        CHUNKS.load(Ordering::Relaxed),
    );
    drop(converted);
    (after.0 - before.0, after.1 - before.1)
}

#[test]
fn an_endpoint_costs_few_bytes_in_the_parsed_model() {
    let (ten, twenty) = (slices(10), slices(20));
    let (requested_10, chunks_10) = kept(&ten);
    let (requested_20, chunks_20) = kept(&twenty);
    let extra = SLICES * 10;
    let per_endpoint = (
        (requested_20 - requested_10) / extra,
        (chunks_20 - chunks_10) / extra,
    );
    let at_scale = |bytes: usize| bytes as f64 * 1_000_000.0 / f64::from(1 << 20);
    println!(
        "model heap per endpoint: {} B requested, {} B in malloc chunks \
         (100k services × 10 endpoints: {:.0} MiB)",
        per_endpoint.0,
        per_endpoint.1,
        at_scale(per_endpoint.1)
    );
    // An endpoint of one address and a short hostname on every other one:
    // the struct with its address inline and half a hostname's chunk.
    assert!(per_endpoint.1 <= 64, "{per_endpoint:?}");
}
