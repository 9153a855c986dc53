//! The directory target: each message written into a folder, with its
//! envelope beside it (tests, a pickup directory).

use std::path::PathBuf;

use super::outcome::Outcome;
use crate::spool::Envelope;

/// Writes the message into `dir` as `ID.eml`, with `ID.json` holding the
/// envelope. `Delivered` lets the queue remove the spooled copy, so it is
/// reported only once both files would survive a crash; a failure is
/// temporary (the spool retries) and leaves no partial file, which on a full
/// disk would keep it full. The fsyncs run on the blocking pool, off the
/// queue's runtime threads.
pub(super) async fn deliver(
    dir: &std::path::Path,
    envelope: &Envelope,
    pending: &[String],
    message: &crate::spool::Stored,
) -> Vec<(String, Outcome)> {
    let meta = serde_json::json!({
        "id": envelope.id,
        "sender": envelope.sender,
        "recipients": pending,
        "tenant": envelope.tenant,
    });
    let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    // The directory target (tests, a pickup directory) takes the message
    // whole; SMTP delivery streams it.
    let outcome = match message.to_vec().await {
        Ok(message) => {
            let (to, id) = (dir.to_path_buf(), envelope.id.clone());
            let written = tokio::task::spawn_blocking(move || {
                write_to_directory(&to, id.as_str(), &message, &json).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match written {
                Ok(path) => Outcome::Delivered(format!("250 2.0.0 written to {}", path.display())),
                Err(e) => {
                    Outcome::Temporary(format!("451 4.3.0 cannot write to {}: {e}", dir.display()))
                }
            }
        }
        Err(e) => Outcome::Temporary(format!(
            "451 4.3.0 the spooled message could not be read: {e}"
        )),
    };
    pending
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// `ID.json`, then `ID.eml`, into `dir`, each durably (temporary name,
/// fsync, rename, directory fsync: [`crate::spool::replace_durably`]). The
/// message comes last, so that a reader who sees `ID.eml` finds its
/// envelope beside it; when the message cannot be written, the envelope is
/// withdrawn again (and a message renamed into place before its directory's
/// fsync failed too), and the retry writes both.
fn write_to_directory(
    dir: &std::path::Path,
    id: &str,
    message: &[u8],
    envelope: &[u8],
) -> Result<PathBuf, crate::spool::WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| crate::spool::WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = dir.join(format!("{id}.json"));
    if let Err(e) =
        crate::spool::replace_durably(&dir.join(format!(".{id}.json.tmp")), &json, envelope)
    {
        crate::spool::discard(&json);
        return Err(e);
    }
    let eml = dir.join(format!("{id}.eml"));
    if let Err(e) =
        crate::spool::replace_durably(&dir.join(format!(".{id}.eml.tmp")), &eml, message)
    {
        crate::spool::discard(&eml);
        crate::spool::discard(&json);
        return Err(e);
    }
    Ok(eml)
}
