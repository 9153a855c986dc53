//! What every session of the relay shares: the evaluation judging it
//! (swapped whole by a reload), the limits, TLS, the spool and the queue.
//! A module of its own, below the server and the sessions, so that the
//! listener, each session, the admin endpoint and reloads all reach it
//! without reaching each other.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::limits::Limits;
use crate::delivery::queue::QueueHandle;
use crate::evaluation::Evaluation;
use crate::metrics::Metrics;
use crate::spool::Spool;

/// Everything sessions share.
pub struct ServerContext {
    pub hostname: String,
    /// Where `RCPT TO:<postmaster>` is delivered (canonical mailbox).
    pub postmaster: String,
    pub limits: Limits,
    pub evaluation: ArcSwap<Evaluation>,
    pub tls: TlsAcceptor,
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub queue: QueueHandle,
    pub shutdown: CancellationToken,
}
