//! MAIL FROM: a transaction starts, judged under the evaluation current at
//! this moment.

use attrelay_policy::model::Action;
use tracing::{debug, warn};

use super::{Flow, Session, Transaction, reply};
use crate::address::MailArgs;
use crate::evaluation::Stage;
use crate::smtp::stream::Io;
use crate::tls::facts::certificate_facts;

impl<S: Io> Session<S> {
    /// A reload reaches an open session here, at the start of its next
    /// transaction: a removed connector, tenant or trust anchor stops
    /// authorising from this MAIL FROM on. The client certificate is
    /// verified again when the trust anchors changed (off the runtime,
    /// like at STARTTLS). A transaction under way finished under the
    /// evaluation that judged it.
    pub(super) async fn refresh_evaluation(&mut self) {
        let current = self.ctx.evaluation.load();
        if current.generation == self.eval.generation {
            return;
        }
        let previous = std::mem::replace(&mut self.eval, arc_swap::Guard::into_inner(current));
        self.policy = None;
        let anchors_changed = !previous.anchors.same_anchors(&self.eval.anchors);
        if let (true, Some(tls), Some(chain)) = (anchors_changed, self.tls.as_mut(), &self.chain) {
            tls.client_certificate =
                certificate_facts(chain.clone(), self.eval.anchors.clone(), self.peer).await;
        }
        debug!(client = %self.peer, generation = self.eval.generation, "session moved to the reloaded evaluation");
    }

    pub(super) async fn mail(&mut self, args: MailArgs) -> std::io::Result<Flow> {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send EHLO or HELO first").await;
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command").await;
        }
        let max = self.ctx.limits.max_message_size;
        if args.size.is_some_and(|s| s > max as u64) {
            let text = format!("Message size exceeds the limit of {max} bytes");
            return self.error(552, "5.3.4", &text).await;
        }
        if let Err(e) = self.ctx.spool.ensure_room(args.size.unwrap_or(0)) {
            warn!(client = %self.peer.ip(), error = %e, "spool short of space: MAIL refused with 452");
            self.send(reply(452, "4.3.1", "Insufficient system storage"))
                .await?;
            return Ok(Flow::Continue);
        }
        self.refresh_evaluation().await;
        let address = args.path.text();
        let v = self.ask(Stage::Mail(address.clone())).await;
        self.log_decision("mail-from", &address, &v);
        if v.action == Action::Accept {
            self.tx = Some(Transaction {
                sender: address,
                recipients: Vec::new(),
            });
        } else {
            self.count_error().await;
        }
        self.send(format!("{}\r\n", v.reply_line())).await?;
        Ok(Flow::Continue)
    }
}
