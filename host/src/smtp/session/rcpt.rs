//! RCPT TO: each recipient judged, and only accepted ones joining the
//! transaction, within the bounds on recipients and tenants.

use attrelay_policy::model::Action;

use super::{Flow, MAX_TENANTS_PER_MESSAGE, Session, reply};
use crate::address::{ForwardPath, RcptArgs};
use crate::evaluation::Stage;
use crate::intake::Accepted;
use crate::smtp::stream::Io;

impl<S: Io> Session<S> {
    pub(super) async fn rcpt(&mut self, args: RcptArgs) -> std::io::Result<Flow> {
        let Some(count) = self.tx.as_ref().map(|t| t.recipients.len()) else {
            return self.error(503, "5.5.1", "Send MAIL first").await;
        };
        if count >= self.ctx.limits.max_recipients {
            self.send(reply(452, "4.5.3", "Too many recipients"))
                .await?;
            return Ok(Flow::Continue);
        }
        let mailbox = match args.path {
            ForwardPath::Postmaster => return self.postmaster().await,
            ForwardPath::Mailbox(m) => m,
        };
        let address = mailbox.to_string();
        let v = self.ask(Stage::Rcpt(address.clone())).await;
        self.log_decision("rcpt-to", &address, &v);
        if v.action != Action::Accept {
            // Refused and deferred recipients are errors: a client probing
            // addresses or trying to relay slows down, then is cut off.
            // (452 asks to send the recipient again later: no fault.)
            if v.code != 452 {
                self.count_error().await;
            }
            self.send(format!("{}\r\n", v.reply_line())).await?;
            return Ok(Flow::Continue);
        }
        let line = match self.admit(Accepted {
            address,
            tenant: v.tenant.clone(),
            reason: v.reason.clone(),
            warning: attrelay_policy::replies::grace_warning(&v).map(str::to_string),
            headers: v.headers.clone(),
        }) {
            Ok(()) => format!("{}\r\n", v.reply_line()),
            Err(refusal) => refusal,
        };
        self.send(line).await?;
        Ok(Flow::Continue)
    }

    /// Adds an accepted recipient to the transaction — only an accepted one
    /// ever is. A recipient given twice is kept once. The message is spooled
    /// once per attributed tenant, so a recipient of one tenant more than
    /// [`MAX_TENANTS_PER_MESSAGE`] gets `452 4.5.3` (the client sends it
    /// again in another transaction): one message cannot be multiplied by
    /// addressing every tenant. `Err` is the reply line then.
    pub(super) fn admit(&mut self, recipient: Accepted) -> Result<(), String> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(reply(503, "5.5.1", "Send MAIL first"));
        };
        if tx.recipients.iter().any(|r| r.address == recipient.address) {
            return Ok(());
        }
        let mut tenants: Vec<&Option<String>> = tx.recipients.iter().map(|r| &r.tenant).collect();
        tenants.sort();
        tenants.dedup();
        if !tenants.contains(&&recipient.tenant) && tenants.len() >= MAX_TENANTS_PER_MESSAGE {
            return Err(reply(
                452,
                "4.5.3",
                "Too many tenants in one message; send this recipient in another",
            ));
        }
        tx.recipients.push(recipient);
        Ok(())
    }

    /// `RCPT TO:<postmaster>` (RFC 5321 4.5.1: every server must accept
    /// it): delivered to the configured postmaster address, which the
    /// operator chose, so no policy is asked. It carries no tenant.
    pub(super) async fn postmaster(&mut self) -> std::io::Result<Flow> {
        let address = self.ctx.postmaster.clone();
        let v = attrelay_policy::replies::recipient_ok(None, "postmaster");
        self.log_decision("rcpt-to", &address, &v);
        let line = match self.admit(Accepted {
            address,
            tenant: None,
            reason: v.reason.clone(),
            warning: None,
            headers: Vec::new(),
        }) {
            Ok(()) => format!("{}\r\n", v.reply_line()),
            Err(refusal) => refusal,
        };
        self.send(line).await?;
        Ok(Flow::Continue)
    }
}
