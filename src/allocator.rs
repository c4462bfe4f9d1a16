//! How the process's memory follows the budget: the one setting of glibc's
//! allocator the sidecar changes, and why.
//!
//! Payloads of large bodies are slices of hyper's read buffers, blocks of a few
//! hundred KiB. glibc serves blocks over 128 KiB with their own `mmap` and unmaps them
//! when freed, but the first such free raises that threshold to the block's size, so
//! from then on these blocks come from the heap arenas, where a freed block in the
//! middle of a heap stays resident. Peak RSS then outgrows `--max-buffer-bytes` by
//! the arenas' holes: 133 MiB against a 64 MiB budget under a 2x overload of 64 KiB
//! messages, 113 MiB with the threshold held (BENCHMARKS.md). Holding the threshold
//! at glibc's own default keeps it from rising.

/// glibc's default threshold, held so it does not adapt.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Holds glibc's `mmap` threshold, unless `MALLOC_MMAP_THRESHOLD_` in the
/// environment already set one (glibc reads it first; an operator's choice wins).
pub fn hold_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets a tunable of the allocator; called before any
        // thread is started, so nothing allocates concurrently.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
