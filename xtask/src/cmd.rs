//! Helpers for running external commands.
//!
//! Every command that changes something is echoed before it runs (`+ ENV=.. prog args`, in a
//! form that can be pasted into bash), and a failure names the command line in its error.
//! Probes (`Cmd::probe`) are silent: they only read state.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A command line with the environment variables it sets, echoed before it runs.
pub struct Cmd {
    program: OsString,
    /// What the echo shows for the program (e.g. `cargo` for the full toolchain path).
    shown_program: String,
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        Self {
            shown_program: quote(&program),
            program,
            args: Vec::new(),
            envs: Vec::new(),
            cwd: Some(workspace_root().to_owned()),
        }
    }

    /// The cargo that runs this xtask (`$CARGO`, set by `cargo run`), shown as `cargo`.
    pub fn cargo() -> Self {
        let mut cmd = Self::new(cargo_program());
        cmd.shown_program = "cargo".to_owned();
        cmd
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line as bash would take it: `KEY=value program args...`.
    pub fn display(&self) -> String {
        let mut line = String::new();
        for (key, value) in &self.envs {
            let _ = write!(line, "{key}={} ", quote(value));
        }
        line.push_str(&self.shown_program);
        for arg in &self.args {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        line
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command.env("PATH", tool_path());
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        command
    }

    /// Echoes and runs the command with inherited stdio; fails unless it exits 0.
    pub fn run(self) -> Result<()> {
        let status = self.status()?;
        if status.success() {
            Ok(())
        } else {
            bail!("`{}` failed: {}", self.display(), describe(status))
        }
    }

    /// Echoes and runs the command with inherited stdio; returns its exit status.
    pub fn status(&self) -> Result<ExitStatus> {
        println!("+ {}", self.display());
        self.command()
            .status()
            .with_context(|| format!("could not start `{}`", self.display()))
    }

    /// Runs the command silently (stdin closed, output captured), whatever its exit status.
    /// For read-only checks.
    pub fn probe(&self) -> Result<Output> {
        self.command()
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{}`", self.display()))
    }

    /// Runs the command silently and returns its stdout; fails unless it exits 0.
    pub fn probe_stdout(&self) -> Result<String> {
        let output = self.probe()?;
        if !output.status.success() {
            bail!(
                "`{}` failed: {}: {}",
                self.display(),
                describe(output.status),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed non-UTF-8 output", self.display()))
    }
}

/// "exit status 3" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// An error and its causes, one per line (without the backtrace that `{:?}` adds when
/// `RUST_BACKTRACE` is set).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let _ = write!(text, "\n  caused by: {cause}");
    }
    text
}

/// The exit code to forward for a child's status: its own code, or 128 + signal like a shell.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal));
    code.and_then(|c| u8::try_from(c).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from)
}

/// Quotes one word for bash: bare if safe, '...' if printable, $'...' otherwise.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.into_owned();
    }
    if !word.chars().any(|c| c.is_control() || c == '\'') {
        return format!("'{word}'");
    }
    let mut quoted = String::from("$'");
    for c in word.chars() {
        match c {
            '\'' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if c.is_control() => {
                let _ = write!(quoted, "\\x{:02x}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        xtask_dir.parent().unwrap_or(xtask_dir).to_owned()
    })
}

/// The host target directory (`$CARGO_TARGET_DIR`, else `<root>/target`), absolute.
pub fn host_target_dir() -> PathBuf {
    let dir = env::var_os("CARGO_TARGET_DIR")
        .or_else(|| env::var_os("CARGO_BUILD_TARGET_DIR"))
        .map_or_else(|| PathBuf::from("target"), PathBuf::from);
    workspace_root().join(dir)
}

/// The cargo binary: `$CARGO` when run through cargo (the exact toolchain), else `cargo`.
pub fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Cargo's bin directory (`$CARGO_HOME/bin`, default `~/.cargo/bin`), where `cargo install`
/// puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin"))
}

/// `$PATH` with cargo's bin directory appended when it is missing, so children (rustc looking
/// for `bpf-linker`, probes) find what `cargo install` installed.
pub fn tool_path() -> &'static OsStr {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let current = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
        if let Some(bin) = cargo_bin_dir()
            && !dirs.contains(&bin)
        {
            dirs.push(bin);
        }
        env::join_paths(dirs).unwrap_or(current)
    })
}

/// Finds an executable on [`tool_path`].
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    env::split_paths(tool_path())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Runs `f` and returns its result with how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// A section heading in the output.
pub fn heading(title: &str) {
    println!("\n==> {title}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_bash() {
        assert_eq!(quote(OsStr::new("-p")), "-p");
        assert_eq!(quote(OsStr::new("a b")), "'a b'");
        assert_eq!(quote(OsStr::new("")), "''");
        assert_eq!(
            quote(OsStr::new("--cfg=x=\"y\"\x1f-C")),
            "$'--cfg=x=\"y\"\\x1f-C'"
        );
        assert_eq!(quote(OsStr::new("it's")), "$'it\\'s'");
    }

    #[test]
    fn forwards_exit_codes_like_a_shell() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), ExitCode::from(7));
        assert_eq!(
            exit_code(ExitStatus::from_raw(15)),
            ExitCode::from(128 + 15)
        );
    }

    #[test]
    fn display_shows_env_then_command() {
        let cmd = Cmd::new("cargo")
            .env("RUSTC", "/usr/bin/rustc")
            .arg("build");
        assert_eq!(cmd.display(), "RUSTC=/usr/bin/rustc cargo build");
    }
}
