//! How the process's memory follows the budget: glibc's allocator is asked once
//! a second to give back the free pages inside its heaps.
//!
//! Payloads of large bodies are slices of hyper's read buffers, blocks of a few
//! hundred KiB. Once glibc has freed one such block it serves the next ones from its
//! heap arenas instead of their own `mmap`s (its threshold adapts), and a freed block
//! in the middle of a heap stays resident: peak RSS outgrew `--max-buffer-bytes` by
//! the arenas' holes, 137 MiB against a 64 MiB budget under a 2x overload of 64 KiB
//! messages (BENCHMARKS.md). Holding the threshold down bounded that but cost 30 % of
//! the batched throughput in page faults, every block mapped afresh; trimming
//! once a second frees the holes (111 MiB there) at no measurable cost; ten times a
//! second cost a fifth of the batched throughput in pages faulted back in.

use std::time::Duration;

/// How often the heaps are trimmed.
const EVERY: Duration = Duration::from_secs(1);

/// Starts the thread that trims glibc's heaps (nothing elsewhere).
pub fn start_trimming() {
    #[cfg(target_env = "gnu")]
    {
        let trim = || loop {
            std::thread::sleep(EVERY);
            // SAFETY: malloc_trim only returns free memory to the kernel; glibc
            // locks each arena while it walks it.
            unsafe {
                libc::malloc_trim(0);
            }
        };
        if let Err(err) = std::thread::Builder::new().name("malloc-trim".into()).spawn(trim) {
            tracing::warn!("cannot start the allocator's trimming thread ({err}): RSS may outgrow the budget");
        }
    }
}
