//! What an operator can do to one queued message: delete it, hold it,
//! release it, make it due now, or return it to its sender now. The queue
//! applies these to a message it is not attempting (`queue.rs`); `attrelay
//! queue` applies them directly to the spool of a relay that is not
//! running. Either way the same function does the work, so a message held
//! through the admin endpoint and one held on a stopped relay's spool are
//! the same file.

use serde::{Deserialize, Serialize};
use tracing::info;

use super::attempt;
use super::context::DeliveryContext;
use crate::spool::{Envelope, Spool, SpoolId};

/// The longest operator's reason a DSN carries; the rest is cut.
pub const MAX_REASON: usize = 200;

/// An operator's action on one queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Removed from the queue, never attempted again, no DSN.
    Delete,
    /// Not attempted, and not ageing towards `max_queue_age`, until released.
    Hold,
    /// Held no more, and due now.
    Release,
    /// Due now (backoff skipped once; the attempt still counts).
    Flush,
    /// Its pending recipients fail now, with this reason, in a DSN to the
    /// sender (within the usual DSN rules: none for the null sender or a
    /// DSN, the backscatter limit for unauthenticated senders).
    Bounce(String),
}

impl Action {
    /// The action named `word` (`delete`, `hold`, `release`, `flush`,
    /// `bounce`), a bounce with `reason`.
    pub fn named(word: &str, reason: Option<&str>) -> Option<Action> {
        Some(match word {
            "delete" => Action::Delete,
            "hold" => Action::Hold,
            "release" => Action::Release,
            "flush" => Action::Flush,
            "bounce" => Action::Bounce(operator_reason(reason.unwrap_or(""))),
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Flush => "flush",
            Action::Bounce(_) => "bounce",
        }
    }
}

/// An operator's reason as a DSN can carry it: one line of printable
/// ASCII (anything else becomes `?`, runs of space one space), at most
/// [`MAX_REASON`] characters; "no reason given" when empty. It goes into
/// a message's text and its `Diagnostic-Code` field, which a line break
/// would end.
pub fn operator_reason(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX_REASON {
            break;
        }
        match c {
            c if c.is_whitespace() => {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            c if c.is_ascii_graphic() => out.push(c),
            _ => out.push('?'),
        }
    }
    let out = out.trim_end().to_string();
    if out.is_empty() {
        "no reason given".into()
    } else {
        out
    }
}

impl Done {
    /// Whether the operator got what was asked (done, nothing to do, or to
    /// be done when the attempt in flight ends).
    pub fn is_success(self) -> bool {
        !matches!(self, Done::NotQueued | Done::Failed)
    }
}

/// What came of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Done {
    Deleted,
    Held,
    Released,
    Flushed,
    Bounced,
    /// Nothing to do (held already, not held, held and so not flushed).
    Unchanged,
    /// An attempt (or another action) is in flight: applied when it ends.
    AfterAttempt,
    NotQueued,
    /// The spool could not be changed; the message is as it was.
    Failed,
}

/// An action's report, as the admin endpoint and `attrelay queue` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub action: String,
    pub result: Done,
    /// Why, in words, when the result is not the action done.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Report {
    pub fn new(id: &SpoolId, action: &Action, result: Done, detail: impl Into<String>) -> Report {
        Report {
            id: id.to_string(),
            action: action.name().to_string(),
            result,
            detail: detail.into(),
        }
    }
}

/// Applies `action` to `envelope`, which no attempt holds, at time `at`.
/// Returns the report and what stays queued: the envelope unless deleted or
/// bounced, and any DSN the action queued.
pub async fn apply(
    spool: &Spool,
    cfg: &DeliveryContext,
    mut envelope: Envelope,
    action: &Action,
    at: i64,
) -> (Report, Vec<Envelope>) {
    let id = envelope.id.clone();
    let report = |done, detail: &str| Report::new(&id, action, done, detail);
    let (report, next) = match action {
        Action::Delete => {
            if spool.remove(&envelope).await {
                (report(Done::Deleted, ""), Vec::new())
            } else {
                // Out of the queue now, but it may come back at the next
                // start: the operator must hear so, not "deleted".
                (
                    report(
                        Done::Failed,
                        "the envelope's removal is not durable (see the log); it may come back at the next start",
                    ),
                    Vec::new(),
                )
            }
        }
        Action::Hold if envelope.is_held() => {
            (report(Done::Unchanged, "held already"), vec![envelope])
        }
        Action::Release if !envelope.is_held() => {
            (report(Done::Unchanged, "not held"), vec![envelope])
        }
        Action::Flush if envelope.is_held() => (
            report(Done::Unchanged, "held: release it to make it due"),
            vec![envelope],
        ),
        Action::Hold | Action::Release => {
            let before = envelope.clone();
            let done = if matches!(action, Action::Hold) {
                envelope.hold(at);
                Done::Held
            } else {
                envelope.release(at);
                Done::Released
            };
            match spool.update(&envelope) {
                Ok(()) => (report(done, ""), vec![envelope]),
                Err(e) => (report(Done::Failed, &e.to_string()), vec![before]),
            }
        }
        Action::Flush => {
            envelope.next_attempt = at;
            (report(Done::Flushed, ""), vec![envelope])
        }
        Action::Bounce(reason) => {
            match attempt::return_to_sender(spool, cfg, envelope, reason).await {
                Ok(next) => {
                    let done = if next.iter().any(|e| e.id == id) {
                        // The DSN could not be spooled; the attempt that
                        // comes next sends it.
                        Done::AfterAttempt
                    } else {
                        Done::Bounced
                    };
                    (report(done, ""), next)
                }
                Err((e, next)) => (report(Done::Failed, &e), next),
            }
        }
    };
    info!(
        target: "attrelay::queue",
        queue_id = %id,
        action = action.name(),
        result = ?report.result,
        detail = %report.detail,
        "operator action"
    );
    (report, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_bounded_printable_line() {
        assert_eq!(operator_reason(""), "no reason given");
        assert_eq!(operator_reason("  \r\n "), "no reason given");
        assert_eq!(
            operator_reason("spam\r\nBcc: victim@example.org\t run"),
            "spam Bcc: victim@example.org run"
        );
        assert_eq!(operator_reason("caf\u{e9} \u{1b}[2J"), "caf? ?[2J");
        assert_eq!(operator_reason(&"x".repeat(5000)).len(), MAX_REASON);
    }

    #[test]
    fn actions_are_named_as_the_commands() {
        for word in ["delete", "hold", "release", "flush", "bounce"] {
            assert_eq!(Action::named(word, None).unwrap().name(), word);
        }
        assert_eq!(Action::named("purge", None), None);
        assert_eq!(
            Action::named("bounce", None),
            Some(Action::Bounce("no reason given".into()))
        );
    }
}
