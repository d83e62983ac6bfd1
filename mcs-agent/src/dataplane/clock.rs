//! Fills `MCS_CLOCK`: how the datapath turns jiffies (one inlined load)
//! into the nanoseconds of `CLOCK_MONOTONIC_COARSE` (what the clock helper
//! would return, and what `dump` compares entry timestamps against). See
//! `mcs_common::ClockValue`.
//!
//! The tick length is the coarse clock's resolution; the offset comes from
//! one probe run (`mcs_clock_probe` under `BPF_PROG_TEST_RUN`) that read
//! jiffies while the coarse clock held still. Jiffies follow the same
//! timekeeping, so the datapath's times stay within a tick of the clock.

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use mcs_common::{ClockValue, names, programs::CLOCK_PROBE};

/// `XDP_PASS` from the kernel's `enum xdp_action`.
const XDP_PASS: u32 = 2;

/// Why the clock could not be calibrated (the datapath then keeps calling
/// the clock helper: correct, only slower).
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("program {CLOCK_PROBE} missing from the eBPF object")]
    MissingProgram,
    #[error("load or run program {CLOCK_PROBE}")]
    Probe(#[source] ProgramError),
    #[error("program {CLOCK_PROBE} returned verdict {0} instead of XDP_PASS")]
    Verdict(u32),
    #[error("read CLOCK_MONOTONIC_COARSE")]
    Clock(#[source] std::io::Error),
    #[error("CLOCK_MONOTONIC_COARSE has resolution {0} ns, not a tick length (0.1–100 ms)")]
    Resolution(u64),
    #[error("a clock tick fell into every one of {0} probe runs")]
    Unsteady(usize),
    #[error("write map {}", names::CLOCK)]
    Write(#[source] MapError),
}

/// The calibration from the tick length and jiffies read at coarse time
/// `coarse_ns` (both within one tick); `None` if `tick_ns` cannot be a
/// tick (HZ outside 10..=10 000).
pub fn calibration(tick_ns: u64, jiffies: u64, coarse_ns: u64) -> Option<ClockValue> {
    (100_000..=100_000_000)
        .contains(&tick_ns)
        .then(|| ClockValue {
            ns_per_jiffy: tick_ns,
            offset_ns: coarse_ns.wrapping_sub(jiffies.wrapping_mul(tick_ns)),
        })
}

fn coarse(
    read: fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int,
) -> Result<u64, ClockError> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if read(libc::CLOCK_MONOTONIC_COARSE, &raw mut time) != 0 {
        return Err(ClockError::Clock(std::io::Error::last_os_error()));
    }
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
    Ok(secs.wrapping_mul(1_000_000_000).wrapping_add(nanos))
}

fn gettime(clock: libc::clockid_t, time: *mut libc::timespec) -> libc::c_int {
    // SAFETY: `time` points at a live timespec.
    unsafe { libc::clock_gettime(clock, time) }
}

fn getres(clock: libc::clockid_t, time: *mut libc::timespec) -> libc::c_int {
    // SAFETY: `time` points at a live timespec.
    unsafe { libc::clock_getres(clock, time) }
}

/// `CLOCK_MONOTONIC_COARSE` now, in nanoseconds.
pub fn coarse_now() -> Result<u64, ClockError> {
    coarse(gettime)
}

/// The kernel's jiffies, read by the probe program.
fn probe_jiffies(program: &Xdp) -> Result<u64, ClockError> {
    let packet = [0u8; 64];
    let mut out = [0u8; 64];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(&packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .map_err(ClockError::Probe)?;
    if result.return_value != XDP_PASS {
        return Err(ClockError::Verdict(result.return_value));
    }
    let mut jiffies = [0u8; 8];
    jiffies.copy_from_slice(&out[..8]);
    Ok(u64::from_ne_bytes(jiffies))
}

/// Calibrates and writes `clock` (the `MCS_CLOCK` map of `ebpf`'s object);
/// loads the probe program if needed.
pub fn calibrate(
    ebpf: &mut Ebpf,
    clock: &mut Array<MapData, ClockValue>,
) -> Result<ClockValue, ClockError> {
    const ATTEMPTS: usize = 20;
    let program: &mut Xdp = ebpf
        .program_mut(CLOCK_PROBE)
        .ok_or(ClockError::MissingProgram)?
        .try_into()
        .map_err(ClockError::Probe)?;
    if program.fd().is_err() {
        program.load().map_err(ClockError::Probe)?;
    }
    let tick = coarse(getres)?;
    for _ in 0..ATTEMPTS {
        let before = coarse_now()?;
        let jiffies = probe_jiffies(program)?;
        let after = coarse_now()?;
        if before != after {
            continue; // a tick in between: which one did jiffies see?
        }
        let value = calibration(tick, jiffies, after).ok_or(ClockError::Resolution(tick))?;
        clock.set(0, value, 0).map_err(ClockError::Write)?;
        return Ok(value);
    }
    Err(ClockError::Unsteady(ATTEMPTS))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_tick_lengths_calibrate() {
        assert_eq!(calibration(0, 5, 10), None);
        assert_eq!(calibration(50_000, 5, 10), None); // 20 kHz
        assert_eq!(calibration(1_000_000_000, 5, 10), None); // 1 Hz
        assert!(calibration(4_000_000, 5, 10).is_some()); // HZ=250
        assert!(calibration(1_000_000, 5, 10).is_some()); // HZ=1000
    }

    proptest! {
        /// At the calibration point the datapath's time is the coarse
        /// clock's, and it advances one tick per jiffy, across wrap-around.
        #[test]
        fn jiffies_map_onto_the_coarse_clock(
            tick in 100_000u64..=100_000_000,
            jiffies in any::<u64>(),
            coarse_ns in any::<u64>(),
            later in 0u64..1_000_000_000,
        ) {
            let clock = calibration(tick, jiffies, coarse_ns).expect("a tick length");
            prop_assert_eq!(clock.ns_at(jiffies), coarse_ns);
            prop_assert_eq!(
                clock.ns_at(jiffies.wrapping_add(later)),
                coarse_ns.wrapping_add(later.wrapping_mul(tick))
            );
        }
    }
}
