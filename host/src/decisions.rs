//! The decision log: every decision's inputs and verdict as one JSON line, so
//! that `attrelay policy diff` can replay real traffic through two policies
//! before an operator deploys one of them.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;

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
