//! kubectl v1.32, the real client, against the local API servers: the
//! machine image's `/usr/bin/kubectl` or `$MCS_KUBECTL`. Each [`Kubectl`]
//! has its own discovery cache and `HOME`, so runs never share state with
//! the user's kubeconfig or with each other.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

/// Where kubectl is: `$MCS_KUBECTL`, else `/usr/bin/kubectl`; an error
/// saying what is missing when neither exists.
pub fn binary() -> Result<PathBuf> {
    let path = std::env::var_os("MCS_KUBECTL")
        .map_or_else(|| PathBuf::from("/usr/bin/kubectl"), PathBuf::from);
    ensure!(
        path.is_file(),
        "kubectl not found at {}: this needs kubectl v1.32 (the machine image ships it at \
         /usr/bin/kubectl); install it or point MCS_KUBECTL at one",
        path.display()
    );
    Ok(path)
}

/// kubectl for one cluster (one kubeconfig).
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
    /// The network namespace kubectl runs in (the root one when `None`).
    netns: Option<String>,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path) -> Result<Self> {
        Ok(Self {
            binary: binary()?,
            kubeconfig: kubeconfig.to_owned(),
            cache: tempfile::tempdir().context("kubectl cache directory")?,
            netns: None,
        })
    }

    /// kubectl run inside network namespace `netns` (where the cluster's
    /// API server is reachable).
    pub fn in_netns(kubeconfig: &Path, netns: &str) -> Result<Self> {
        Ok(Self {
            netns: Some(netns.to_owned()),
            ..Self::new(kubeconfig)?
        })
    }

    /// Runs `kubectl ARGS` (with `stdin` piped in when given) and returns
    /// what it printed and how it exited, success or not.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut command = match &self.netns {
            Some(netns) => crate::netns::command_in(netns, &self.binary)?,
            None => Command::new(&self.binary),
        };
        let mut child = command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.cache.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl's stdin")?
                .write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs `kubectl ARGS` and returns its standard output; a non-zero
    /// exit is an error carrying what it printed.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let output = self.output(args, stdin)?;
        let stdout = String::from_utf8(output.stdout)?;
        ensure!(
            output.status.success(),
            "kubectl {args:?}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.run(&["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all, None)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {args:?} printed {out}"))
    }
}
