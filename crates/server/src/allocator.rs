//! The process's memory allocator: mimalloc, set up for forward passes that allocate and
//! free their activations op by op (ResNet-18 at a batch of 16 goes through hundreds of MiB
//! per pass).
//!
//! - Freed memory is kept. By default mimalloc hands it back to the kernel a second after it
//!   is freed, and the next touch faults it in again as zeroed pages: about 450 faults of
//!   2 MiB per image served, a quarter of the CPU time of every pass.
//! - No transparent huge pages. When the working set grows (a larger batch than before),
//!   huge pages made the next 10 to 15 s of passes about a fifth slower (ResNet-18 served
//!   10.0 and 10.2 images/s in the first 15 s at concurrency 16 after concurrency 1, then
//!   12.1 to 12.5; without them 12.6 and 12.8, then 12.4 to 12.7); once settled, passes
//!   with them were 1 to 2% faster in-process and no faster served. This is what mimalloc itself does when `MIMALLOC_ALLOW_THP=0`.
//!
//! The process stays at the high-water mark of its working set. Either variable, when set,
//! is left to mimalloc.

/// `mi_option_purge_delay` in the order of mimalloc's `mi_option_e` (mimalloc.h), which its
/// Rust bindings do not name for mimalloc 3.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The variables mimalloc reads these settings from at start.
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";
const ALLOW_THP_VARIABLE: &str = "MIMALLOC_ALLOW_THP";

/// Sets the allocator up as the module documentation says. Call it first thing in `main`:
/// it affects only memory freed and faulted in afterwards.
pub fn configure() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
        keep_freed_memory();
    }
    if std::env::var_os(ALLOW_THP_VARIABLE).is_none() {
        disable_transparent_huge_pages();
    }
}

#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: sets one integer of mimalloc's option table; the index is in range.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

#[allow(unsafe_code)]
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer and touches no memory of ours; a kernel
    // without it answers EINVAL, and the process then keeps its huge pages.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The purge delay in effect, in milliseconds (-1: never).
#[allow(unsafe_code)]
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one integer of mimalloc's option table; the index is in range.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

/// Whether transparent huge pages are off for this process.
#[allow(unsafe_code)]
pub fn transparent_huge_pages_disabled() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_GET_THP_DISABLE reads a flag of this process and touches no memory.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test that changes these process-wide settings, so no other test sees them
    // change.
    #[test]
    fn configure_keeps_freed_memory_and_turns_transparent_huge_pages_off() {
        if std::env::var_os(PURGE_DELAY_VARIABLE).is_some()
            || std::env::var_os(ALLOW_THP_VARIABLE).is_some()
        {
            return;
        }
        // mimalloc's documented default of 1000 ms, which no other option of mimalloc 3
        // has: a wrong index would read (and then set) some other option.
        assert_eq!(purge_delay_ms(), 1000);
        configure();
        assert_eq!(purge_delay_ms(), -1);
        assert_eq!(transparent_huge_pages_disabled(), cfg!(target_os = "linux"));
    }
}
