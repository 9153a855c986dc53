//! Warnings that repeat under attack — a failing `accept` with no file
//! descriptors left, connections refused over a limit — logged the first
//! time, then at most once per [`WARN_INTERVAL`] with how many were
//! suppressed in between: unthrottled, one line per event filled the log
//! (2.6 million lines in 8 s).

use std::fmt;
use std::time::{Duration, Instant};

use tracing::warn;

/// The shortest time between two lines of one throttled warning.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One throttled warning.
#[derive(Default)]
pub struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    pub fn warn(&mut self, what: &str, detail: &dyn fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        warn!(detail = %detail, suppressed = self.suppressed, "{what}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}
