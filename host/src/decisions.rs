//! The decision log: every decision's inputs and verdict as one JSON line, so
//! that `attrelay policy diff` can replay real traffic through two policies
//! before an operator deploys one of them.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use attrelay_policy::model::{SessionFacts, Verdict};
use serde::{Deserialize, Serialize};

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Identifies the SMTP session's policy session (facts are per session).
    pub session: String,
    pub facts: SessionFacts,
    /// "mail-from" or "rcpt-to".
    pub stage: String,
    /// The reverse-path (empty for `<>`).
    pub sender: String,
    /// The recipient, for "rcpt-to".
    pub recipient: Option<String>,
    pub verdict: Verdict,
    /// SHA-256 of the policy component that decided.
    pub policy: String,
}

/// An append-only JSON Lines file.
pub struct DecisionLog {
    file: Mutex<File>,
}

impl DecisionLog {
    pub fn open(path: &Path) -> std::io::Result<DecisionLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(DecisionLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one record (one `write` per line, so lines never interleave).
    pub fn append(&self, record: &DecisionRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if let Ok(mut f) = self.file.lock()
            && let Err(e) = f.write_all(&line)
        {
            tracing::warn!(error = %e, "cannot append to the decision log");
        }
    }
}

/// Records one SMTP connection may append to the decision log.
///
/// Each record is close to a kilobyte (the session facts are repeated in
/// every one), so without a bound one client sending hundreds of refused
/// recipients grows the log by hundreds of kilobytes per connection. 256
/// holds two full transactions at the default `max_recipients` (100), which
/// is what `policy diff` needs to replay real traffic; beyond it the
/// connection's decisions are still made and answered, only not logged.
///
/// The rest of the session is dropped rather than marked with a final
/// record: `policy diff` replays every record as a decision, so a marker
/// would be replayed too. What is logged is a prefix of the session, which
/// replays exactly as it was decided; one warning naming the session says
/// that the rest was not logged.
pub const MAX_RECORDS_PER_SESSION: u32 = 256;

/// What one SMTP connection has used of its [`MAX_RECORDS_PER_SESSION`].
///
/// Shared (cheap to clone) by the successive policy sessions of one
/// connection: EHLO opens a new policy session with new facts and a new
/// session id, and must not renew the allowance.
#[derive(Debug, Clone, Default)]
pub struct DecisionBudget {
    appended: Arc<AtomicU32>,
}

/// Whether one more record may be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Append it.
    Append,
    /// The first record over the bound: do not append, say so once.
    Exhausted,
    /// Over the bound, already said.
    Silent,
}

impl DecisionBudget {
    /// Takes one record from the allowance. The count stops one past the
    /// bound, so it never wraps however long a connection lasts.
    pub fn take(&self) -> Grant {
        let before = self
            .appended
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n <= MAX_RECORDS_PER_SESSION).then_some(n + 1)
            });
        match before {
            Ok(n) if n < MAX_RECORDS_PER_SESSION => Grant::Append,
            Ok(_) => Grant::Exhausted,
            Err(_) => Grant::Silent,
        }
    }
}

/// Reads a decision log; a malformed line is an error naming its number.
pub fn read(path: &Path) -> Result<Vec<DecisionRecord>, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not a decision record: {e}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_grants_its_records_then_says_so_once() {
        let budget = DecisionBudget::default();
        let shared = budget.clone();
        for _ in 0..MAX_RECORDS_PER_SESSION {
            assert_eq!(budget.take(), Grant::Append);
        }
        assert_eq!(shared.take(), Grant::Exhausted, "clones share the count");
        for _ in 0..1000 {
            assert_eq!(budget.take(), Grant::Silent);
        }
        assert_eq!(DecisionBudget::default().take(), Grant::Append);
    }
}
