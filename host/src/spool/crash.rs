//! Crash points for the durability tests. In a debug build, a process
//! started with `ATTRELAY_CRASH_AT=STEP` kills itself with `SIGKILL` when
//! the spool reaches `STEP` — a real crash at an exact point, which a kill
//! from outside could only hit by chance. Release builds compile this out.
//!
//! Steps: `commit:staged` (bodies and envelope files written, nothing
//! synced), `commit:synced` (file data synced), `commit:bodies-named`
//! (`msg/` synced), `commit:placed-one` (the first envelope renamed into
//! `queue/`), `commit:placed` (all renamed, `queue/` not synced),
//! `commit:durable` (all durable, the client not yet answered),
//! `body:flushed` (the first part of a large body written while the client
//! still sends), `remove:envelope` (an envelope removed, its body not yet).

/// Kills the process here if the environment names `step`.
pub(super) fn point(step: &str) {
    #[cfg(debug_assertions)]
    {
        static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if AT
            .get_or_init(|| std::env::var("ATTRELAY_CRASH_AT").ok())
            .as_deref()
            == Some(step)
        {
            // SAFETY: kill(2) with our own pid reads no memory of ours.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}
