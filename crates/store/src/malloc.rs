//! The C allocator's arenas.

/// Caps glibc's malloc arenas at one per core (`mallopt(M_ARENA_MAX, cores)`). Call it once at
/// the start of `main`, before any thread is spawned. Returns whether the allocator took the
/// setting: `false` if glibc refused it, if the operator set the limit already
/// (`$MALLOC_ARENA_MAX`, or `arena_max` in `$GLIBC_TUNABLES`: theirs stands), and always
/// `false` where the C library is not glibc.
///
/// glibc gives a thread that allocates while another thread holds its arena a new arena, up to
/// eight per core, and each arena keeps the large buffers freed into it (the store's 4 MiB
/// writer buffers, its 16 MiB packs) for its next caller. Spread over the store's compute pool
/// and tokio's workers and blocking pool, that retained memory set a day-1 backup's peak RSS
/// on the vs-restic corpus (`benches/vs-restic.py`, 2 cores): 117-124 MiB (mean 118) with
/// glibc's default against 104-115 MiB (mean 107) with this call, five alternating runs each;
/// wall and CPU time the same (1.41 s, 2.31 s).
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if set_by_operator {
            return false;
        }
        let cores = crate::compute::threads().min(i32::MAX as usize) as i32;
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive
        // count and affects arenas created after the call.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, cores) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_arena_limit() {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"))
        {
            assert!(!super::limit_malloc_arenas(), "the operator's limit stands");
        } else {
            assert!(super::limit_malloc_arenas(), "mallopt(M_ARENA_MAX) refused");
        }
    }
}
