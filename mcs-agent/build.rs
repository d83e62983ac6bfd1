//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so the agent is
//! one self-contained file. Without it (plain `cargo check`/`clippy` on a
//! machine without the BPF toolchain) an empty object is embedded and the
//! agent refuses to load with an error that says how to build it.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("MCS_EBPF_OBJECT").map_or_else(
        || manifest_dir.join("../target/bpf/bpfel-unknown-none/release/mcs-ebpf"),
        PathBuf::from,
    );
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("mcs-ebpf.o");
    println!("cargo::rerun-if-env-changed=MCS_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write OUT_DIR/mcs-ebpf.o"),
        Err(_) => {
            println!(
                "cargo::warning=eBPF object {} not found; embedding an empty one (run `cargo xtask build-ebpf`)",
                object.display()
            );
            fs::write(&out, []).expect("write OUT_DIR/mcs-ebpf.o");
        }
    }
}
