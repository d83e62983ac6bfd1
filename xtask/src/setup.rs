//! `cargo xtask setup`: check, piece by piece, what the build and the tests need, and install
//! what is missing.
//!
//! The eBPF build cannot use rustup (no `rust-src`, so no `-Z build-std`). It uses Debian's
//! `rustc-web` (rustc 1.96 with LLVM 22), the prebuilt `core` for `bpfel-unknown-none` from
//! `libstd-rust-web-dev-bpf`, and `bpf-linker` 0.13 built against the same LLVM major (rustc
//! hands bpf-linker LLVM bitcode, so the majors must match). The check is quick (a few probes,
//! well under a second); installing runs `apt-get` (needs root) and `cargo install`.
//!
//! kubectl (v1.32, which the kubectl tests drive) is only reported, on a line of its own: Debian
//! does not package it and the machine image ships it, so its absence is not something to
//! install and does not stop the other commands.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cmd::{Cmd, cargo_bin_dir, is_root, timed, which};

/// Debian packages the workspace needs, with why. The single list of apt packages.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    // eBPF toolchain.
    (
        "rustc-web",
        "rustc 1.96 with LLVM 22 at /usr/bin/rustc, builds mcs-ebpf",
    ),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core for bpfel-unknown-none",
    ),
    (
        "rust-web-clippy",
        "clippy for the bpfel target (/usr/bin/cargo-clippy)",
    ),
    ("llvm-22-dev", "LLVM 22 that bpf-linker links against"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("zlib1g-dev", "system library of LLVM (bpf-linker build)"),
    ("libzstd-dev", "system library of LLVM (bpf-linker build)"),
    ("libxml2-dev", "system library of LLVM (bpf-linker build)"),
    // Tools used by the agent and the end-to-end tests.
    ("bpftool", "inspect loaded programs and pinned maps"),
    ("iproute2", "ip netns / veth / tc for the netns tests"),
    ("ethtool", "NIC offload settings in the netns tests"),
    ("iptables", "baseline comparisons (kube-proxy style)"),
    ("nftables", "baseline comparisons (nftables)"),
    ("conntrack", "inspect kernel conntrack"),
    ("socat", "traffic endpoints in tests"),
    ("curl", "HTTP clients in tests"),
    ("wrk", "HTTP load generator"),
    ("iperf3", "throughput tests"),
    ("dnsutils", "dig for DNS checks"),
    ("tcpdump", "packet captures when debugging tests"),
    ("util-linux", "mount, nsenter, unshare"),
];

/// The LLVM major that Debian's rustc-web and bpf-linker must share.
pub const LLVM_MAJOR: u32 = 22;
/// bpf-linker release to install (the newest that supports LLVM 22).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's rustc (package `rustc-web`), used for the eBPF build.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// bpffs mount point (pinned maps and programs).
const BPFFS: &str = "/sys/fs/bpf";
/// rustup components that `cargo xtask lint` uses on the host.
const RUSTUP_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

/// How much the check prints when nothing is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// One line per piece (`cargo xtask setup`).
    EveryPiece,
    /// One summary line when everything is present (before builds); every piece otherwise.
    Summary,
}

/// What `ensure` may do about missing pieces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    CheckOnly,
}

/// The state of every piece, gathered by read-only probes.
struct State {
    /// Installed apt packages and their versions; absent ones are missing.
    apt: BTreeMap<&'static str, String>,
    rustc: Piece,
    bpf_linker: Piece,
    bpffs: Piece,
    rustup: Piece,
    /// Reported, never installed: Debian has no kubectl, the machine image ships it.
    kubectl: Piece,
}

enum Piece {
    Ok(String),
    Missing(String),
}

impl Piece {
    fn is_ok(&self) -> bool {
        matches!(self, Piece::Ok(_))
    }
}

impl State {
    fn probe() -> Result<Self> {
        Ok(Self {
            apt: installed_apt_packages()?,
            rustc: probe_rustc(),
            bpf_linker: probe_bpf_linker(),
            bpffs: probe_bpffs()?,
            rustup: probe_rustup(),
            kubectl: probe_kubectl(),
        })
    }

    fn missing_apt(&self) -> Vec<&'static str> {
        APT_PACKAGES
            .iter()
            .map(|(name, _)| *name)
            .filter(|n| !self.apt.contains_key(n))
            .collect()
    }

    fn all_ok(&self) -> bool {
        self.missing_apt().is_empty()
            && self.rustc.is_ok()
            && self.bpf_linker.is_ok()
            && self.bpffs.is_ok()
            && self.rustup.is_ok()
    }

    /// One line per piece; missing ones get `missing_label` (bpffs gets `bpffs_label`).
    fn print(&self, missing_label: &str, bpffs_label: &str) {
        for (name, why) in APT_PACKAGES {
            match self.apt.get(name) {
                Some(version) => line("ok", &format!("apt {name} {version}")),
                None => line(missing_label, &format!("apt {name} ({why})")),
            }
        }
        for (title, piece) in [
            ("Debian rustc", &self.rustc),
            ("bpf-linker", &self.bpf_linker),
            ("bpffs", &self.bpffs),
            ("rustup components", &self.rustup),
        ] {
            match piece {
                Piece::Ok(detail) => line("ok", &format!("{title}: {detail}")),
                Piece::Missing(why) => {
                    let label = if title == "bpffs" {
                        bpffs_label
                    } else {
                        missing_label
                    };
                    line(label, &format!("{title}: {why}"));
                }
            }
        }
        self.print_kubectl();
    }

    /// kubectl cannot be installed from here, so it never counts as missing for `all_ok`; its
    /// line says which tests need it.
    fn print_kubectl(&self) {
        match &self.kubectl {
            Piece::Ok(detail) => line("ok", &format!("kubectl: {detail}")),
            Piece::Missing(why) => line("absent", &format!("kubectl: {why}")),
        }
    }
}

fn line(status: &str, text: &str) {
    println!("  {status:<11} {text}");
}

/// Checks every piece and installs what is missing (unless `mode` is `CheckOnly`).
pub fn ensure(report: Report, mode: Mode) -> Result<()> {
    let (result, took) = timed(|| ensure_inner(report, mode));
    if result.is_ok() {
        println!("setup: done in {:.2}s", took.as_secs_f64());
    }
    result
}

fn ensure_inner(report: Report, mode: Mode) -> Result<()> {
    let state = State::probe()?;
    if state.all_ok() {
        match report {
            Report::EveryPiece => state.print("missing", "missing"),
            Report::Summary => {
                println!(
                    "setup: all {} apt packages, Debian rustc, bpf-linker, bpffs, rustup components ok",
                    APT_PACKAGES.len()
                );
                state.print_kubectl();
            }
        }
        return Ok(());
    }

    let root = is_root();
    let missing_apt = state.missing_apt();
    // apt and mount need root; bpf-linker and rustup components do not.
    let needs_root = !missing_apt.is_empty() || !state.rustc.is_ok();
    match mode {
        Mode::CheckOnly => {
            state.print("MISSING", "MISSING");
            bail!("some pieces are missing; run `cargo xtask setup` (as root) to install them");
        }
        Mode::Install if needs_root && !root => {
            state.print("MISSING", "skipped");
            bail!(
                "some pieces are missing and installing them needs root (apt-get); run \
                 `sudo -E env \"PATH=$PATH\" cargo xtask setup`, or as root:\n  \
                 apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                 --no-install-recommends {}",
                apt_install_list(&state).join(" ")
            );
        }
        Mode::Install => state.print("installing", if root { "installing" } else { "skipped" }),
    }

    if needs_root {
        install_apt(&apt_install_list(&state))?;
        let rustc = probe_rustc();
        match rustc {
            Piece::Ok(detail) => line("ok", &format!("Debian rustc: {detail}")),
            Piece::Missing(why) => bail!("Debian rustc is still not usable after apt-get: {why}"),
        }
    }

    if !state.bpf_linker.is_ok() {
        install_bpf_linker()?;
    }

    if !state.bpffs.is_ok() {
        if root {
            Cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]).run()?;
            match probe_bpffs()? {
                Piece::Ok(detail) => line("ok", &format!("bpffs: {detail}")),
                Piece::Missing(why) => bail!("bpffs still not mounted after mount: {why}"),
            }
        } else {
            // Only the root test tiers use bpffs, and they cannot run without root anyway.
            println!("bpffs: not mounting {BPFFS} (needs root; only the root test tiers use it)");
        }
    }

    if !state.rustup.is_ok() {
        Cmd::new("rustup")
            .args(["component", "add"])
            .args(RUSTUP_COMPONENTS)
            .run()?;
    }
    Ok(())
}

/// Packages to `apt-get install`: the missing ones, plus the Debian Rust toolchain again when
/// `/usr/bin/rustc` is too old (after `apt-get update` that upgrades it).
fn apt_install_list(state: &State) -> Vec<&'static str> {
    let mut packages = state.missing_apt();
    if !state.rustc.is_ok() {
        for toolchain in ["rustc-web", "libstd-rust-web-dev-bpf", "rust-web-clippy"] {
            if !packages.contains(&toolchain) {
                packages.push(toolchain);
            }
        }
    }
    packages
}

fn install_apt(packages: &[&str]) -> Result<()> {
    println!(
        "installing {} apt package(s): {}",
        packages.len(),
        packages.join(" ")
    );
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update")
        .run()?;
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .run()?;
    let now = installed_apt_packages()?;
    let still_missing: Vec<_> = packages.iter().filter(|p| !now.contains_key(*p)).collect();
    ensure!(
        still_missing.is_empty(),
        "apt-get did not install {still_missing:?}"
    );
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    println!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} with cargo install \
         (builds from source: takes 3-5 minutes) ..."
    );
    // `--force` replaces a bpf-linker of another version or LLVM; `LLVM_PREFIX` is required,
    // otherwise llvm-sys's build script looks for llvm-config in /usr.
    let (result, took) = timed(|| {
        Cmd::cargo()
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .run()
    });
    result?;
    println!("bpf-linker built in {:.0}s", took.as_secs_f64());
    match probe_bpf_linker() {
        Piece::Ok(detail) => {
            line("ok", &format!("bpf-linker: {detail}"));
            Ok(())
        }
        Piece::Missing(why) => bail!(
            "bpf-linker is still not usable after cargo install: {why} (is another bpf-linker \
             earlier on PATH than {}?)",
            cargo_bin_dir().unwrap_or_default().display()
        ),
    }
}

/// Installed packages among [`APT_PACKAGES`], with versions (one `dpkg-query` call).
fn installed_apt_packages() -> Result<BTreeMap<&'static str, String>> {
    let names = APT_PACKAGES.iter().map(|(name, _)| *name);
    // dpkg-query exits 1 when some package is unknown; what it prints for the others is valid.
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n"])
        .args(names.clone())
        .probe()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut installed = BTreeMap::new();
    for row in stdout.lines() {
        let mut fields = row.split('\t');
        let (Some(package), Some(status), Some(version)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Status-Abbrev is want/state/error, e.g. "ii ", "rc ", "iU ": state `i` = installed.
        let is_installed = status.as_bytes().get(1) == Some(&b'i');
        // Multi-arch packages print `name:arch`.
        let package = package.split(':').next().unwrap_or(package);
        if let Some(name) = names.clone().find(|n| *n == package)
            && is_installed
        {
            installed.insert(name, version.to_owned());
        }
    }
    Ok(installed)
}

/// `/usr/bin/rustc` must exist and use LLVM [`LLVM_MAJOR`] (bookworm's own rustc-web 1.85
/// uses an older LLVM; the 1.96 one comes from bookworm-security).
fn probe_rustc() -> Piece {
    let out = match Cmd::new(DEBIAN_RUSTC)
        .args(["--version", "--verbose"])
        .probe_stdout()
    {
        Ok(out) => out,
        Err(err) => return Piece::Missing(format!("{DEBIAN_RUSTC} unusable: {err:#}")),
    };
    let field = |key: &str| out.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let release = field("release:").unwrap_or("?");
    let llvm = field("LLVM version:").unwrap_or("?");
    if llvm_major(llvm) == Some(LLVM_MAJOR) {
        Piece::Ok(format!("{DEBIAN_RUSTC} {release} (LLVM {llvm})"))
    } else {
        Piece::Missing(format!(
            "{DEBIAN_RUSTC} {release} uses LLVM {llvm}, need {LLVM_MAJOR}"
        ))
    }
}

fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// bpf-linker on PATH must report 0.13 and be linked against libLLVM [`LLVM_MAJOR`].
fn probe_bpf_linker() -> Piece {
    let Some(path) = which("bpf-linker") else {
        return Piece::Missing("not found on PATH or in cargo's bin directory".to_owned());
    };
    let version = match Cmd::new(&path).arg("--version").probe_stdout() {
        Ok(out) => out.trim().to_owned(),
        Err(err) => return Piece::Missing(format!("{} does not run: {err:#}", path.display())),
    };
    let wanted = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(mm, _)| mm);
    if !version
        .strip_prefix("bpf-linker ")
        .is_some_and(|v| v.starts_with(&format!("{wanted}.")))
    {
        return Piece::Missing(format!(
            "{} reports `{version}`, need {wanted}.x",
            path.display()
        ));
    }
    match linked_llvm_major(&path) {
        Ok(Some(major)) if major == LLVM_MAJOR => {
            Piece::Ok(format!("{version} at {} (LLVM {major})", path.display()))
        }
        Ok(Some(major)) => Piece::Missing(format!(
            "{} is linked against LLVM {major}, need {LLVM_MAJOR}",
            path.display()
        )),
        Ok(None) => Piece::Missing(format!(
            "{} is not dynamically linked against libLLVM; cannot confirm LLVM {LLVM_MAJOR}",
            path.display()
        )),
        Err(err) => Piece::Missing(format!("{err:#}")),
    }
}

/// The major of the libLLVM a binary loads, from `ldd` (`libLLVM.so.22.1` or `libLLVM-22.so`).
fn linked_llvm_major(path: &Path) -> Result<Option<u32>> {
    let ldd = Cmd::new("ldd").arg(path).probe_stdout()?;
    if ldd.contains("not found") {
        bail!("{} misses shared libraries:\n{ldd}", path.display());
    }
    Ok(ldd.split_whitespace().find_map(|word| {
        let rest = word.strip_prefix("libLLVM")?;
        let rest = rest
            .strip_prefix(".so.")
            .or_else(|| rest.strip_prefix('-'))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }))
}

fn probe_bpffs() -> Result<Piece> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    });
    Ok(if mounted {
        Piece::Ok(format!("mounted at {BPFFS}"))
    } else {
        Piece::Missing(format!("{BPFFS} is not mounted as bpf"))
    })
}

/// Where the kubectl tests look for kubectl: `$MCS_KUBECTL`, else the machine image's.
const KUBECTL_ENV: &str = "MCS_KUBECTL";
const KUBECTL_DEFAULT: &str = "/usr/bin/kubectl";

/// kubectl as the kubectl tests (`tests/tests/kubectl.rs`, `controller_kubectl.rs`) find it.
fn probe_kubectl() -> Piece {
    let path = std::env::var_os(KUBECTL_ENV)
        .map_or_else(|| Path::new(KUBECTL_DEFAULT).to_path_buf(), Into::into);
    let needed = "the kubectl tests (kubectl, controller_kubectl) need v1.32; Debian has no \
                  package for it (the machine image ships it), or point MCS_KUBECTL at one";
    if !path.is_file() {
        return Piece::Missing(format!("not found at {}: {needed}", path.display()));
    }
    match Cmd::new(&path).args(["version", "--client"]).probe_stdout() {
        Ok(out) => {
            let version = out
                .lines()
                .find_map(|l| l.strip_prefix("Client Version:"))
                .map_or("version unknown", str::trim);
            Piece::Ok(format!("{version} at {}", path.display()))
        }
        Err(err) => Piece::Missing(format!(
            "{} does not run ({err:#}): {needed}",
            path.display()
        )),
    }
}

fn probe_rustup() -> Piece {
    if which("rustup").is_none() {
        return Piece::Ok("no rustup; assuming the toolchain has rustfmt and clippy".to_owned());
    }
    let installed = match Cmd::new("rustup")
        .args(["component", "list", "--installed"])
        .probe_stdout()
    {
        Ok(out) => out,
        Err(err) => return Piece::Missing(format!("{err:#}")),
    };
    let missing: Vec<_> = RUSTUP_COMPONENTS
        .iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(&format!("{c}-"))))
        .collect();
    if missing.is_empty() {
        Piece::Ok(RUSTUP_COMPONENTS.join(", "))
    } else {
        Piece::Missing(format!("{missing:?} not installed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_packages_match_llvm_major() {
        for package in ["llvm", "libpolly"] {
            let name = format!("{package}-{LLVM_MAJOR}-dev");
            assert!(
                APT_PACKAGES.iter().any(|(p, _)| *p == name),
                "{name} not in APT_PACKAGES"
            );
        }
    }

    #[test]
    fn parses_llvm_major() {
        assert_eq!(llvm_major("22.1.8"), Some(22));
        assert_eq!(llvm_major("?"), None);
    }
}
