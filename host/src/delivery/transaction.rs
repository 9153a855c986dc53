//! One mail transaction on an open session: MAIL, RCPT for each recipient,
//! DATA and the message — pipelined to a hop that offers PIPELINING (two
//! round trips whatever the number of recipients), one command at a time
//! otherwise — with each recipient decided only by the reply in its own
//! place.
//!
//! What is known after each kind of failure:
//!
//! - a reply to MAIL that refuses: everyone's answer;
//! - a reply to RCPT: that recipient's answer;
//! - a reply to DATA other than 354: the accepted recipients' answer, and
//!   the transaction is still open at the hop (RFC 5321 ends it only with
//!   the reply to the end of data), so it is reset (RSET) before the
//!   connection carries another;
//! - no reply (timeout, I/O error, garbage, bytes sent unasked): the
//!   recipients not yet answered are deferred and the connection closed;
//! - no reply after the end of data was sent: the hop may have the message,
//!   so it is deferred — never offered to another MX host in the same
//!   attempt.

use super::data::{Unsent, write_content, write_within};
use super::outcome::Outcome;
use super::outcome::{all, hop_outcome, reply_outcome, text_of};
use super::wire::{HopError, Reply, Wire};
use crate::spool::Stored;

/// What one transaction came to.
#[derive(Debug)]
pub struct Done {
    pub outcomes: Vec<(String, Outcome)>,
    /// Ended by a reply in its place: the connection may carry another
    /// transaction, if the hop says nothing more (checked where it is kept,
    /// `Pool::put_back`, and again when it is taken).
    pub reusable: bool,
    /// A reply decided some recipient, or the end of data was sent.
    pub decided: bool,
    /// It ended at a step that timed out.
    pub stalled: bool,
    /// The first answer said the connection was no longer usable (closed
    /// by the hop, 421, or 503 for a transaction still open): nothing was
    /// accepted, and a fresh connection may try again.
    pub stale: bool,
}

impl Done {
    /// Everyone deferred by `e`, before any reply decided anything.
    fn unanswered(recipients: &[String], e: &HopError) -> Done {
        Done {
            outcomes: all(recipients, hop_outcome(e)),
            reusable: false,
            decided: false,
            stalled: e.is_timeout(),
            stale: e.means_stale(),
        }
    }

    /// Everyone answered by the reply to MAIL, a refusal; the connection
    /// stays usable if nothing else was said and the hop is not closing.
    fn mail_refused(recipients: &[String], mail: &Reply, usable: bool) -> Done {
        Done {
            outcomes: all(recipients, reply_outcome(mail)),
            reusable: usable && mail.code != 421,
            // 421: the hop is going away and decided nothing; another MX
            // host may take the mail.
            decided: mail.code != 421,
            stalled: false,
            stale: mail.code == 421 || mail.code == 503,
        }
    }
}

/// The recipients' answers so far.
#[derive(Default)]
struct Tally {
    outcomes: Vec<(String, Outcome)>,
    accepted: Vec<String>,
    decided: bool,
    /// The hop said 421: it is closing the connection (RFC 5321 3.8).
    closing: bool,
}

impl Tally {
    fn answer(&mut self, recipient: &str, reply: &Reply) {
        self.heard(reply);
        if reply.is_positive_completion() {
            self.accepted.push(recipient.to_string());
        } else {
            self.outcomes
                .push((recipient.to_string(), reply_outcome(reply)));
            self.decided = true;
        }
    }

    /// Notes what a reply says of the connection.
    fn heard(&mut self, reply: &Reply) {
        self.closing |= reply.code == 421;
    }

    /// The accepted recipients get `outcome`, and the transaction is over.
    fn end(mut self, outcome: Outcome, reusable: bool) -> Done {
        let accepted = std::mem::take(&mut self.accepted);
        self.outcomes.extend(all(&accepted, outcome));
        self.refused_all(reusable)
    }

    /// Every recipient has its outcome (none was left accepted).
    fn refused_all(self, reusable: bool) -> Done {
        debug_assert!(self.accepted.is_empty());
        Done {
            outcomes: self.outcomes,
            reusable: reusable && !self.closing,
            decided: true,
            stalled: false,
            stale: false,
        }
    }

    /// The hop said 421 to a RCPT: it and the recipients after it, and
    /// those accepted, get that answer; the connection is closed.
    fn closed_by(mut self, reply: &Reply, unasked: &[String]) -> Done {
        self.outcomes.extend(all(unasked, reply_outcome(reply)));
        self.end(reply_outcome(reply), false)
    }

    /// No reply came at the step where `e` happened: the accepted and the
    /// `unanswered` recipients are deferred, the connection closed.
    fn broken(mut self, unanswered: &[String], e: &HopError) -> Done {
        let outcome = hop_outcome(e);
        self.outcomes.extend(all(&self.accepted, outcome.clone()));
        self.outcomes.extend(all(unanswered, outcome));
        Done {
            outcomes: self.outcomes,
            reusable: false,
            decided: self.decided,
            stalled: e.is_timeout(),
            stale: false,
        }
    }
}

/// Runs one transaction for `recipients` (canonical mailboxes) on `wire`,
/// pipelined or not as the hop offered, MAIL with the relay's own
/// `parameters`.
pub async fn run(
    wire: &mut Wire,
    pipelining: bool,
    parameters: &str,
    sender: &str,
    recipients: &[String],
    message: &Stored,
) -> Done {
    let mail = mail_command(sender, parameters);
    if pipelining {
        pipelined(wire, &mail, recipients, message).await
    } else {
        one_by_one(wire, &mail, recipients, message).await
    }
}

/// MAIL's command line for a canonical `sender` with the relay's own
/// `parameters` (each with its leading space).
pub fn mail_command(sender: &str, parameters: &str) -> String {
    format!("MAIL FROM:<{sender}>{parameters}\r\n")
}

/// RCPT's command line: without parameters, so none the client gave can
/// reach the next hop.
pub fn rcpt_command(recipient: &str) -> String {
    format!("RCPT TO:<{recipient}>\r\n")
}

/// Commands written at most in one go before their replies are read: a
/// hop reads a pipelined batch while its replies fill our receive buffer,
/// so a batch of thousands of recipients could leave both sides waiting
/// on a full buffer until the step's timeout.
const PIPELINE_BATCH: usize = 100;

/// MAIL, each RCPT and DATA pipelined (RFC 2920) in batches of
/// [`PIPELINE_BATCH`] commands, each batch's replies read in order before
/// the next is written, then the message.
async fn pipelined(wire: &mut Wire, mail: &str, recipients: &[String], message: &Stored) -> Done {
    let mut commands = vec![mail.to_string()];
    commands.extend(recipients.iter().map(|r| rcpt_command(r)));
    commands.push("DATA\r\n".to_string());
    let mut replies: Vec<Reply> = Vec::with_capacity(commands.len());
    for batch in commands.chunks(PIPELINE_BATCH) {
        let read = async {
            wire.send(batch.concat().as_bytes()).await?;
            for _ in batch {
                replies.push(wire.reply().await?);
            }
            Ok::<(), HopError>(())
        };
        if let Err(e) = read.await {
            return broken_pipeline(recipients, &replies, &e);
        }
    }
    // Every reply asked for is read: one more byte means some reply was
    // not where it seemed, and none of them can be trusted.
    if let Err(e) = wire.in_step() {
        return Done::unanswered(recipients, &e);
    }
    let data = replies.pop().expect("a reply for DATA");
    let mail = replies.remove(0);
    if let Err(e) = final_reply(&mail).and_then(|()| replies.iter().try_for_each(final_reply)) {
        return Done::unanswered(recipients, &e);
    }
    if !mail.is_positive_completion() {
        // A hop that says 354 all the same waits for a message: closed.
        return Done::mail_refused(recipients, &mail, data.code != 354);
    }
    let mut tally = Tally::default();
    for (r, reply) in recipients.iter().zip(&replies) {
        tally.answer(r, reply);
    }
    after_data_reply(wire, tally, &data, message).await
}

/// A pipelined transaction whose reply after `replies` did not come: the
/// replies read are in their places, the rest unknown.
fn broken_pipeline(recipients: &[String], replies: &[Reply], e: &HopError) -> Done {
    let Some((mail, rcpts)) = replies.split_first() else {
        return Done::unanswered(recipients, e);
    };
    let in_place = final_reply(mail).and_then(|()| rcpts.iter().try_for_each(final_reply));
    if in_place.is_err() {
        return Done::unanswered(recipients, e);
    }
    if !mail.is_positive_completion() {
        return Done::mail_refused(recipients, mail, false).closing(e);
    }
    let mut tally = Tally::default();
    let answered = rcpts.len().min(recipients.len());
    for (r, reply) in recipients.iter().zip(rcpts) {
        tally.answer(r, reply);
    }
    tally.broken(&recipients[answered..], e)
}

/// A reply that ends its command (2xx, 4xx, 5xx): a 3xx where no command
/// asked for one means the replies are out of step.
fn final_reply(reply: &Reply) -> Result<(), HopError> {
    if (300..400).contains(&reply.code) {
        Err(HopError::OutOfStep)
    } else {
        Ok(())
    }
}

/// MAIL, each RCPT and DATA, each waiting for its reply, and checked for
/// anything the hop said beyond it: for a next hop without PIPELINING.
async fn one_by_one(wire: &mut Wire, mail: &str, recipients: &[String], message: &Stored) -> Done {
    let mail = match wire.command(mail.as_bytes()).await {
        Ok(r) => r,
        Err(e) => return Done::unanswered(recipients, &e),
    };
    if let Err(e) = wire.in_step().and_then(|()| final_reply(&mail)) {
        return Done::unanswered(recipients, &e);
    }
    if !mail.is_positive_completion() {
        return Done::mail_refused(recipients, &mail, true);
    }
    let mut tally = Tally::default();
    for (i, r) in recipients.iter().enumerate() {
        let reply = wire.command(rcpt_command(r).as_bytes()).await;
        let in_place = |reply: Reply| {
            wire.in_step()?;
            final_reply(&reply)?;
            Ok(reply)
        };
        match reply.and_then(in_place) {
            Ok(reply) if reply.code == 421 => {
                return tally.closed_by(&reply, &recipients[i..]);
            }
            Ok(reply) => tally.answer(r, &reply),
            Err(e) => return tally.broken(&recipients[i..], &e),
        }
    }
    if tally.accepted.is_empty() {
        let reset = reset(wire).await;
        return tally.refused_all(reset);
    }
    let data = match wire.command(b"DATA\r\n").await {
        Ok(r) => r,
        Err(e) => return tally.broken(&[], &e),
    };
    after_data_reply(wire, tally, &data, message).await
}

/// The transaction after DATA's reply: the message after a 354, else a
/// refusal for the accepted recipients and a RSET.
async fn after_data_reply(
    wire: &mut Wire,
    mut tally: Tally,
    data: &Reply,
    message: &Stored,
) -> Done {
    tally.heard(data);
    // DATA is answered 354, or refused (4xx, 5xx).
    if data.code != 354 && data.code < 400 {
        return tally.broken(&[], &HopError::OutOfStep);
    }
    if data.code != 354 {
        let reset = reset(wire).await;
        return tally.end(reply_outcome(data), reset);
    }
    if tally.accepted.is_empty() {
        // 354 with no recipient: the connection is in the middle of a
        // message nobody wants, and is dropped.
        return tally.refused_all(false);
    }
    if let Err(e) = wire.in_step() {
        return tally.broken(&[], &e);
    }
    send_message(wire, tally, message).await
}

/// The message after DATA's 354, the end of data and its reply.
async fn send_message(wire: &mut Wire, mut tally: Tally, message: &Stored) -> Done {
    // Each piece of the message and the final reply have the step's time
    // (Postfix's smtp_data_xfer_timeout and smtp_data_done_timeout); the
    // attempt's deadline bounds the whole.
    let step = wire.step();
    let end = match write_content(wire.stream(), message, step).await {
        Ok(end) => end,
        Err(Unsent::Spool(e)) => {
            // The hop waits for the rest of a message that never ends:
            // closed. Another hop would fail the same way.
            return tally.end(
                Outcome::Temporary(format!(
                    "451 4.3.0 the spooled message could not be read: {e}"
                )),
                false,
            );
        }
        Err(Unsent::Hop(e)) => return tally.broken(&[], &e),
    };
    // From here on the hop may have the message, whatever happens next.
    let replied = match write_within(wire.stream(), end, step).await {
        Ok(()) => wire
            .reply()
            .await
            .and_then(|reply| final_reply(&reply).map(|()| reply)),
        Err(e) => Err(e),
    };
    match replied {
        Ok(reply) => {
            tally.heard(&reply);
            let outcome = if reply.is_positive_completion() {
                Outcome::Delivered(text_of(&reply_outcome(&reply)))
            } else {
                reply_outcome(&reply)
            };
            // Anything the hop says after this reply is caught where the
            // connection would be kept (`Pool::put_back`).
            tally.end(outcome, true)
        }
        Err(e) => tally.end(
            Outcome::Temporary(format!(
                "451 4.4.2 no reply to the end of data ({e}): the next hop may have the message, so it is not offered to another"
            )),
            false,
        ),
    }
}

/// RSET, after a transaction the hop left open: whether the connection is
/// back in a known state (a positive reply; anything after it is caught
/// where the connection would be kept, `Pool::put_back`).
async fn reset(wire: &mut Wire) -> bool {
    // Something unasked before RSET would be read as its reply.
    wire.is_quiet()
        && matches!(wire.command(b"RSET\r\n").await, Ok(r) if r.is_positive_completion())
}

impl Done {
    /// This result, on a connection that broke with `e` afterwards.
    fn closing(mut self, e: &HopError) -> Done {
        self.reusable = false;
        self.stale |= e.means_stale();
        self
    }
}
