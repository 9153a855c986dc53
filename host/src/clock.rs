//! The relay's clock, in the Unix seconds that envelopes, retry schedules
//! and certificate checks are written in. One function, so that every part
//! reads the time the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch (0 on a clock set before it).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
