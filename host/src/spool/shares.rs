//! How many queued envelopes name each body. One body is stored for all
//! the tenants a message was attributed to; the last envelope removed
//! removes it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::ids::{BodyId, SpoolId};

#[derive(Debug, Default)]
pub(super) struct Shares(Mutex<HashMap<BodyId, usize>>);

impl Shares {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<BodyId, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `n` more envelopes naming `body` (a commit).
    pub(super) fn add(&self, body: &BodyId, n: usize) {
        *self.counts().entry(body.clone()).or_default() += n;
    }

    /// Replaces every count (recovery, which read the whole queue).
    pub(super) fn reset(&self, counts: HashMap<BodyId, usize>) {
        *self.counts() = counts;
    }

    /// Forgets envelope `id`'s claim on `body`; whether it was the last. A
    /// body the spool does not count is kept, for recovery to judge.
    pub(super) fn release(&self, id: &SpoolId, body: &BodyId) -> bool {
        let mut counts = self.counts();
        match counts.get_mut(body) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                counts.remove(body);
                true
            }
            None => {
                tracing::warn!(queue_id = %id, body = %body, "a body the spool does not count: kept until the next start");
                false
            }
        }
    }
}
