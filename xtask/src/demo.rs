//! `cargo xtask demo`: build everything and run `mcs-demo` (from `mcs-tests`) as root.

use std::{ffi::OsString, process::ExitCode};

use anyhow::{Result, ensure};

use crate::{
    cmd::{Cmd, exit_code, heading, host_target_dir, is_root},
    ebpf,
    setup::{self, Mode, Report},
};

pub fn run(args: &[OsString]) -> Result<ExitCode> {
    ensure!(
        is_root(),
        "`cargo xtask demo` must run as root (it creates network namespaces and loads XDP \
         programs); run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask demo`"
    );
    setup::ensure(Report::Summary, Mode::Install)?;
    ebpf::build(false)?;
    heading("build mcs-agent and mcs-demo");
    Cmd::cargo()
        .args(["build", "-p", "mcs-agent", "-p", "mcs-tests", "--bins"])
        .run()?;
    let debug_dir = host_target_dir().join("debug");
    let demo = debug_dir.join("mcs-demo");
    ensure!(
        demo.is_file(),
        "{} was not built: does the mcs-tests package define a `mcs-demo` binary?",
        demo.display()
    );
    heading("run mcs-demo");
    let status = Cmd::new(&demo)
        .env("MCS_AGENT_BIN", debug_dir.join("mcs-agent"))
        .args(args)
        .status()?;
    Ok(exit_code(status))
}
