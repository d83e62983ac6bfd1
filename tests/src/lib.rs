//! Test harness for mcs: simulated clusters built from network namespaces,
//! traffic servers and clients that live inside them, checksum counters, a
//! driver for the `mcs-agent` binary, and the test frames (builder and
//! independent checksum verifier) every packet-level test uses.
//!
//! Everything here creates its own hosts (network namespaces joined by veth
//! pairs) and tears them down on `Drop`, also while a failing test unwinds.
//! Traffic only ever goes to addresses inside namespaces the harness made;
//! nothing touches the root namespace's interfaces or routes.

pub mod agent;
pub mod apiserver;
pub mod client;
pub mod clusterset;
pub mod clusterset_traffic;
pub mod csum;
pub mod dns_load;
pub mod export_demo;
pub mod figures;
pub mod kubectl;
pub mod load;
pub mod manifest;
pub mod netns;
pub mod packet;
pub mod scenario;
pub mod servers;
pub mod topology;
pub mod topology6;

/// The local API server under the name existing tests use.
pub use apiserver as fake_apiserver;

/// Whether this process runs as root (needed for namespaces, veth and XDP).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Panics with a clear message unless running as root; the first line of
/// every root tier test (BPF, network namespaces, veth, cgroups).
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (BPF, network namespaces, veth, cgroups): run it with \
         `cargo xtask test` or as root with `cargo test -p mcs-tests -- --include-ignored`"
    );
}
