//! The process's memory allocator: mimalloc, told to keep the memory it frees.
//!
//! A model's forward pass allocates and frees its activations op by op; ResNet-18 at a batch
//! of 16 goes through hundreds of MiB per pass. By default mimalloc hands freed memory back
//! to the kernel a second after it is freed, and with transparent huge pages the next touch
//! of such a range faults in a whole zeroed 2 MiB page: about 450 such faults per image
//! served, a quarter of the CPU time of every pass. Kept, the memory is reused as it is, and
//! the process stays at the high-water mark of its working set instead.

/// `mi_option_purge_delay` in the order of mimalloc's `mi_option_e` (mimalloc.h), which its
/// Rust bindings do not name for mimalloc 3.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The variable mimalloc reads the purge delay from: a value set there is left alone.
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// Stops mimalloc from returning freed memory to the kernel, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. Call it first thing in `main`; it affects only memory freed afterwards.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
        // SAFETY: sets one integer of mimalloc's option table; the index is in range.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

/// The purge delay in effect, in milliseconds (-1: never).
#[allow(unsafe_code)]
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one integer of mimalloc's option table; the index is in range.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test that touches the option, so no other test sees it change.
    #[test]
    fn keeping_freed_memory_sets_mimallocs_purge_delay_to_never() {
        if std::env::var_os(PURGE_DELAY_VARIABLE).is_some() {
            return;
        }
        // mimalloc's documented default of 1000 ms, which no other option of mimalloc 3
        // has: a wrong index would read (and then set) some other option.
        assert_eq!(purge_delay_ms(), 1000);
        keep_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
    }
}
