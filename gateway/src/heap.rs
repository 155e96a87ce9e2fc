//! The process heap: how many malloc arenas the gateway may use.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight per core, and an arena
//! keeps the pages of its highest use. The gateway's bursts (10,000 health points when the
//! devices' five-minute windows close together) land in whichever thread's arena is at hand, so
//! RSS stepped up at each of the first few window closes of a soak until every arena had held one
//! burst: +21 MiB over 20 minutes at 10,000 devices, flat after (BENCHMARKS.md, target 4). With
//! two arenas the same soak had no step. `MALLOC_ARENA_MAX` in the environment still wins, so an
//! operator can set another value without a rebuild.

/// Arenas the gateway runs with unless `MALLOC_ARENA_MAX` says otherwise.
pub const ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`ARENAS`], unless `MALLOC_ARENA_MAX` is set. Call it first in
/// `main`, before any thread starts: a thread that has already allocated keeps its arena.
/// Returns the cap in force, or `None` where the C library is not glibc or refused it.
pub fn limit_arenas() -> Option<i32> {
    if let Some(set) = std::env::var_os("MALLOC_ARENA_MAX") {
        return set.to_str().and_then(|s| s.trim().parse().ok());
    }
    set_arena_max(ARENAS).then_some(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt only sets a parameter of the allocator; glibc takes its own lock for it.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> bool {
    false
}
