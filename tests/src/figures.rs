//! Where tests put the figures they measure (tables for `docs/reliability.md`).
//!
//! A test run never edits the repository: figures go to `target/figures/` (next
//! to the test binaries, whatever `CARGO_TARGET_DIR` is). `cargo xtask figures`
//! is the explicit update: it runs the figure tests with `MCS_FIGURES_DIR`
//! pointing at `docs/figures/`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Overrides the output directory (`cargo xtask figures` sets it to `docs/figures`).
pub const FIGURES_DIR_ENV: &str = "MCS_FIGURES_DIR";

/// The directory figures are written to: `$MCS_FIGURES_DIR`, else `figures/` in the
/// target directory of the running test binary (`<target>/<profile>/deps/<binary>`).
pub fn dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(FIGURES_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    target_dir_of(&exe)
        .map(|target| target.join("figures"))
        .ok_or_else(|| {
            io::Error::other(format!(
                "{} is not in a cargo target directory; set {FIGURES_DIR_ENV}",
                exe.display()
            ))
        })
}

/// `<target>` of `<target>/<profile>/deps/<binary>`.
fn target_dir_of(exe: &Path) -> Option<&Path> {
    let deps = exe.parent()?;
    (deps.file_name()? == "deps").then_some(())?;
    deps.parent()?.parent()
}

/// Writes `text` to `name` in [`dir`] and returns the path written.
pub fn write(name: &str, text: &str) -> io::Result<PathBuf> {
    let dir = dir()?;
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_is_found_from_a_test_binary() {
        assert_eq!(
            target_dir_of(Path::new("/w/target/debug/deps/churn_model-0123")),
            Some(Path::new("/w/target"))
        );
        assert_eq!(target_dir_of(Path::new("/usr/bin/churn_model")), None);
    }
}
