//! Atomic adds to counters shared by all CPUs. The BPF target has no
//! atomic read-modify-write in `core`, so the add is the instruction
//! itself (`lock *(u64 *)(ptr + 0) += value`, `BPF_ATOMIC | BPF_ADD`).

/// Adds `value` to the `u64` at `counter`, atomically with respect to other
/// CPUs doing the same.
///
/// # Safety
/// `counter` points at a `u64` inside a map value, valid for the program's
/// run, and every writer of it uses this function.
#[inline(always)]
pub unsafe fn add(counter: *mut u64, value: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's contract; the instruction only adds to the word.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {value}",
            counter = in(reg) counter,
            value = in(reg) value,
        );
    }
    // The host build exists only for clippy; it is never run.
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's contract.
    unsafe {
        *counter = (*counter).wrapping_add(value);
    }
}
