//! What a next hop's answer — or its silence — means for a recipient.

use std::time::Duration;

use super::wire::{HopError, Reply};

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Temporary(String),
    Permanent(String),
}

/// An outcome from the next hop's reply: 5xx permanent, anything else
/// temporary. The text is the hop's, stripped of control characters and
/// bounded.
pub fn reply_outcome(r: &Reply) -> Outcome {
    let esc = if r.esc[0] > 0 {
        format!("{}.{}.{} ", r.esc[0], r.esc[1], r.esc[2])
    } else {
        String::new()
    };
    let text: String = r
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    let text = format!("{} {esc}{text}", r.code);
    if r.code >= 500 {
        Outcome::Permanent(text)
    } else {
        Outcome::Temporary(text)
    }
}

/// A temporary outcome for a step that ended without a reply.
pub fn hop_outcome(e: &HopError) -> Outcome {
    let code = match e {
        HopError::Timeout => "4.4.1",
        HopError::Io(_) | HopError::Connect { .. } | HopError::Closed => "4.4.2",
        HopError::Unparseable | HopError::TooLong | HopError::OutOfStep => "4.5.0",
        HopError::Tls(_) => "4.7.5",
    };
    let text: String = e.to_string().chars().take(300).collect();
    Outcome::Temporary(format!("451 {code} {text}"))
}

/// The same outcome for each of `recipients`.
pub(crate) fn all(recipients: &[String], outcome: Outcome) -> Vec<(String, Outcome)> {
    recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// An outcome's text.
pub fn text_of(o: &Outcome) -> String {
    match o {
        Outcome::Delivered(t) | Outcome::Temporary(t) | Outcome::Permanent(t) => t.clone(),
    }
}

/// What every recipient of an attempt that ran out of time gets.
pub fn attempt_timed_out(limit: Duration) -> Outcome {
    Outcome::Temporary(format!(
        "451 4.4.7 delivery attempt not finished within {} s",
        limit.as_secs()
    ))
}
