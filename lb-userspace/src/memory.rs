//! Returning freed heap memory to the system.

/// Hands memory the allocator holds free back to the system. glibc keeps
/// freed chunks in its arenas (one per thread that allocated) and returns
/// only the top of each heap by itself; after a directory parse or a full
/// plan at 100k services that was hundreds of MB of RSS holding nothing.
/// Called after those rare, large steps only: it walks every arena.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
