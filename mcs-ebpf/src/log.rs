//! `debug_log!`: debug-level aya-log lines in the packet paths (parse
//! verdict, frontend, chosen backend, drop reason) with the `debug-log`
//! feature (`cargo xtask build-ebpf --debug-log`); without it a line is
//! only type-checked (its arguments count as used) and never reaches the
//! object, so the default object pays nothing. The agent forwards the lines
//! to its log (`mcs-agent/src/telemetry.rs`).

/// `aya_log_ebpf::debug!`, compiled in by the `debug-log` feature.
#[cfg(feature = "debug-log")]
macro_rules! debug_log {
    ($($arg:tt)*) => {
        aya_log_ebpf::debug!($($arg)*)
    };
}

/// Compiled out: without the `debug-log` feature there is no log line.
#[cfg(not(feature = "debug-log"))]
macro_rules! debug_log {
    ($ctx:expr, $format:literal $(, $arg:expr)* $(,)?) => {
        if false {
            let _ = ($ctx, $($arg),*);
        }
    };
}
